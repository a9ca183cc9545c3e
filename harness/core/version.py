"""tdabench's version as installed (``0+unknown`` for a source tree that is not installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tdabench")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
