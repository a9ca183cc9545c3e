"""tdabench: the framework. Interfaces (:class:`Method`, :class:`Task`), registry, storage,
ground truth, LDS, statistics, profiling, records, CLI, leaderboard and report.

A plugin subclasses :class:`Method` or :class:`Task` and names its class in the entry-point group
``tdabench.methods`` or ``tdabench.tasks`` of its own pyproject.toml; a method's search space is
made of :class:`Float`, :class:`Int` and :class:`Categorical` dimensions. A method sees a task through
:class:`AttributionTask`, the protocol that lists what a method may ask of it. The interfaces are
imported when first used (``from tdabench.harness import Method``), so importing a light module of
the harness (the console entry points) does not import torch.
"""

from importlib import import_module

from tdabench.harness.core.version import __version__

_PUBLIC = {"AttributionTask": "tdabench.harness.engine.attribution_task",
           "Method": "tdabench.harness.engine.method", "Split": "tdabench.harness.engine.task",
           "Task": "tdabench.harness.engine.task", "Float": "tdabench.harness.engine.space",
           "Int": "tdabench.harness.engine.space", "Categorical": "tdabench.harness.engine.space"}
__all__ = ["AttributionTask", "Categorical", "Float", "Int", "Method", "Split", "Task", "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
