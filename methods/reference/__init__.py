"""Adapters to reference implementations written by others (extra ``reference``): kronfluence,
traker, devinterp. Each converts its library's scores to the harness sign convention."""

from harness.discovery import import_submodules

import_submodules("methods.reference")
