"""tdabench: the framework. Interfaces (:class:`Method`, :class:`Task`), registry, storage,
ground truth, LDS, statistics, profiling, records, CLI, leaderboard and report.

A plugin subclasses :class:`Method` or :class:`Task` and names its class in the entry-point group
``tdabench.methods`` or ``tdabench.tasks`` of its own pyproject.toml; a method's search space is
made of :class:`Float`, :class:`Int` and :class:`Categorical` dimensions. A method sees a task through
:class:`AttributionTask`, the protocol that lists what a method may ask of it. The whole plugin
contract lives in :mod:`tdabench.harness.plugin` and is re-exported here. The interfaces are
imported when first used (``from tdabench.harness import Method``), so importing a light module of
the harness (the console entry points) does not import torch.
"""

from importlib import import_module

from tdabench.harness.core.version import __version__
from tdabench.harness.plugin import __all__ as _CONTRACT

__all__ = [*_CONTRACT, "__version__"]


def __getattr__(name: str):
    if name in _CONTRACT:
        return getattr(import_module("tdabench.harness.plugin"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
