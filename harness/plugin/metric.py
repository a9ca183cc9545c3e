"""The metric interface: how good a method's attribution is, by one criterion.

A metric is a plugin, registered by an entry point in the group ``tdabench.metrics`` (the built-ins
``lds``, ``loo`` and ``mislabel_auc`` live in ``metrics/``, registered like any third-party one).
A run computes the metrics its config names (``metric=lds``, the default, or a list) after the
method has scored the task's queries. Each metric:

- says whether it can judge a pairing (:meth:`Metric.supports` returns the reason it cannot, or
  None); an unsupported metric is recorded as such and the run's other metrics still are;
- computes its own outcomes (retraining, a task variant), cached under its own key;
- returns a :class:`MetricResult`: a value, its 95% interval, a noise ceiling where it has one,
  and extra fields, stored in the record under ``metrics[name]``.

A metric whose evaluation fails is recorded with ``status: error`` under its name and the run goes
on, unless the metric declares :attr:`Metric.fails_run` (the LDS does: it is the run's headline).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tdabench.harness.core.registry import METRICS, UnknownNameError

log = logging.getLogger(__name__)

#: the metric of a run whose config names none
DEFAULT_METRIC = "lds"


@dataclass
class MetricResult:
    """One metric's verdict on one run.

    ``value`` and ``ci`` (a bootstrap 95% interval ``(low, high)``) are what the leaderboard
    ranks; ``ceiling`` is the value a perfect method could expect given the noise of the outcomes
    (None where the metric has no such bound); ``extra`` holds JSON-serializable fields stored
    beside them; ``top_level`` fields the record carries at its top level (the LDS's own fields,
    kept where readers have always found them)."""

    value: float
    ci: tuple[float, float]
    ceiling: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    top_level: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """The entry of ``record["metrics"][name]``."""
        return {"status": "ok", "value": self.value, "ci": [float(c) for c in self.ci],
                "ceiling": self.ceiling, **self.extra}


@dataclass
class MetricRun:
    """What a metric sees of one run: the task, the fitted method, the reference model, the
    method's ``scores`` ([n_query, n_train] or per token [n_query, T, n_train], the sign
    convention d observable_q / d beta_i), the resolved config, the task's LDS ground truth (None
    unless a metric of the run :attr:`Metric.uses_ground_truth`) with its mode, and a factory of
    unfitted copies of the method (same parameters) for metrics that fit it again elsewhere."""

    task: Any
    method: Any
    model: torch.nn.Module
    scores: torch.Tensor
    cfg: dict[str, Any]
    ground_truth: Any = None
    gt_mode: str | None = None
    new_method: Any = None


class Metric:
    """Base class of every metric; the registry sets :attr:`name` to its entry point's name."""

    name: ClassVar[str] = "metric"
    #: whether the metric reads the task's retraining ground truth (the run then builds it, in the
    #: ``ground_truth`` phase, before the method's fit)
    uses_ground_truth: ClassVar[bool] = False
    #: whether a failure of this metric fails the run (else it is recorded under its name only)
    fails_run: ClassVar[bool] = False
    #: whether the metric reads per-token scores: the run then sets ``task.token_scores_wanted``,
    #: and methods whose per-token scores cost more than sequence scores give them
    reads_token_scores: ClassVar[bool] = False

    def supports(self, task, method) -> str | None:
        """None when the metric can judge ``method`` on ``task``, else the reason in one line."""
        return None

    def config_problems(self, cfg: dict) -> list[str]:
        """One line per bad setting of this metric in the resolved config (cheap, before any work)."""
        return []

    def compute_shard(self, task, cfg: dict, shard: int, num_shards: int) -> None:
        """Compute and cache this metric's share of shard ``shard`` of ``num_shards`` of its
        retraining outcomes (``gt.shard`` jobs); a metric without retraining does nothing."""

    def evaluate(self, run: MetricRun) -> MetricResult:
        raise NotImplementedError


def metric_names(cfg: dict) -> list[str]:
    """The metrics a config asks for, in order, without repeats (``metric``: a name or a list)."""
    names = cfg.get("metric", DEFAULT_METRIC)
    return list(dict.fromkeys([names] if isinstance(names, str) else list(names)))


def wants_token_scores(cfg: dict) -> bool:
    """Whether a metric ``cfg`` asks for reads per-token scores (unknown names read none)."""
    return any(getattr(METRICS.get(n), "reads_token_scores", False)
               for n in metric_names(cfg) if n in METRICS.names())


def unknown_metric(name: str) -> str | None:
    """Why ``name`` is not a metric (one line, listing the registered ones), or None."""
    if not METRICS.names():
        return ("no metric is registered: the installed tdabench predates its tdabench.metrics entry "
                "points; reinstall it (pip install -e .)")
    try:
        METRICS.get(name)
    except UnknownNameError as exc:
        return f"metric={name}: {exc}"
    return None


def metric_problems(cfg: dict) -> list[str]:
    """Unknown metric names (listing the registered ones) and each metric's bad settings."""
    names = cfg.get("metric", DEFAULT_METRIC)
    listed = [names] if isinstance(names, str) else names
    if not isinstance(listed, (list, tuple)) or not listed or not all(isinstance(n, str) for n in listed):
        return [f"metric={names!r} must be a metric name or a list of names (registered: {', '.join(METRICS.names())})"]
    problems = []
    for name in metric_names(cfg):
        unknown = unknown_metric(name)
        problems += [unknown] if unknown else METRICS.get(name)().config_problems(cfg)
    return problems


def needs_ground_truth(cfg: dict) -> bool:
    """Whether a metric of ``cfg`` reads the task's LDS ground truth."""
    return any(METRICS.get(n).uses_ground_truth for n in metric_names(cfg))


def evaluate_metrics(run: MetricRun, record: dict, phase) -> dict[str, dict]:
    """Evaluate every metric of ``run.cfg`` on ``run``; return ``{name: entry}`` for the record's
    ``metrics`` field and add each metric's ``top_level`` fields to ``record``. ``phase(name)``
    is the profiler's context manager: each metric is measured as a phase of its own name."""
    out: dict[str, dict] = {}
    for name in metric_names(run.cfg):
        metric = METRICS.get(name)()
        reason = metric.supports(run.task, run.method)
        if reason:
            log.info(f"{run.method.name}: metric {name} is not supported: {reason}")
            out[name] = {"status": "unsupported", "value": None, "message": reason}
            continue
        try:
            with phase(name):
                result = metric.evaluate(run)
        except Exception as exc:
            if metric.fails_run:
                raise
            log.warning(f"{run.method.name}: metric {name} failed: {type(exc).__name__}: {exc}")
            out[name] = {"status": "error", "value": None, "message": f"{type(exc).__name__}: {exc}"[:2000],
                         "traceback": traceback.format_exc()[-4000:]}
            continue
        record.update(result.top_level)
        out[name] = result.as_record()
    return out
