"""The plugin contract: everything a method, task or metric may use from the harness besides
:mod:`tdabench.harness.core`, in one room below the run machinery (``harness/engine``), which imports
it and is never imported by it.

- :class:`Method` (with :class:`Float`, :class:`Int` and :class:`Categorical` search-space dimensions)
  and :class:`AttributionTask`, the protocol listing what a method may ask of a task;
- :class:`Task`, :class:`TaskSettings` and :class:`Split`, what a task implements, with the training loop it may call
  (:class:`Recipe`, :func:`train`) and the trajectory it exposes (:class:`Snapshot`);
- :class:`Metric`, :class:`MetricRun` and :class:`MetricResult`, with the ground-truth access a metric
  needs (:class:`GroundTruthBuilder`, :func:`retrain_seed`) and the statistics it reports (:func:`lds`,
  :func:`bootstrap_ci`, :func:`noise_ceiling`, ...).

Names are imported when first used (``from tdabench.harness.plugin import Method``), so importing
this module does not import torch.
"""

from importlib import import_module

_HOME = {
    "tdabench.harness.plugin.method": ("Method", "MethodDivergedError"),
    "tdabench.harness.plugin.space": ("Float", "Int", "Categorical"),
    "tdabench.harness.plugin.attribution_task": ("AttributionTask",),
    "tdabench.harness.plugin.task": ("Task", "TaskSettings", "Split", "margin"),
    "tdabench.harness.plugin.training": ("Recipe", "Snapshot", "num_params", "recipe_problems", "train"),
    "tdabench.harness.plugin.metric": ("Metric", "MetricResult", "MetricRun"),
    "tdabench.harness.plugin.ground_truth": ("GroundTruthBuilder", "retrain_seed"),
    "tdabench.harness.read.lds": ("lds", "bootstrap_ci", "columnwise_pearson", "columnwise_spearman",
                                  "sequence_scores"),
    "tdabench.harness.read.statistics": ("noise_ceiling",),
}
_PUBLIC = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
