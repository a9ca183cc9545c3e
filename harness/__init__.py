"""tdabench: the framework. Interfaces (:class:`Method`, :class:`Task`), registry, storage,
ground truth, LDS, statistics, profiling, records, CLI, leaderboard and report.

A plugin subclasses :class:`Method` or :class:`Task` and names its class in the entry-point group
``tdabench.methods`` or ``tdabench.tasks`` of its own pyproject.toml.
"""

from importlib.metadata import PackageNotFoundError, version

from tdabench.harness.method import Method
from tdabench.harness.task import Split, Task

try:
    __version__ = version("tdabench")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Method", "Split", "Task", "__version__"]
