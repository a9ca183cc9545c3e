"""Attribution methods: one module per method family, plus adapters in ``methods.reference``.

Importing this package registers every built-in method. Reference adapters import their
libraries only when run, so they are listed even where the ``reference`` extra is missing.
"""

from harness.discovery import import_submodules

import_submodules("methods")
