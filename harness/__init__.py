"""tdabench: the framework. Interfaces (:class:`Method`, :class:`Task`), registry, storage,
ground truth, LDS, statistics, profiling, records, CLI, leaderboard and report.

A plugin subclasses :class:`Method` or :class:`Task` and names its class in the entry-point group
``tdabench.methods`` or ``tdabench.tasks`` of its own pyproject.toml. A method sees a task through
:class:`AttributionTask`, the protocol that lists what a method may ask of it.
"""

from tdabench.harness.core.version import __version__
from tdabench.harness.engine.attribution_task import AttributionTask
from tdabench.harness.engine.method import Method
from tdabench.harness.engine.task import Split, Task

__all__ = ["AttributionTask", "Method", "Split", "Task", "__version__"]
