"""Tasks: data + model + training recipe + observable. Importing this package registers them."""

from harness.discovery import import_submodules

import_submodules("tasks", skip=("base", "training"))
