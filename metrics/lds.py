"""``lds``: the Linear Datamodeling Score against the task's retraining ground truth.

The computation is :func:`tdabench.harness.read.lds.lds` (Spearman correlation over subsets
between predicted and retrained outcomes, mean over queries, bootstrap 95% interval over
queries); the ceiling is the ground truth's noise ceiling (:func:`noise_ceiling`), 1 in the
same-seed mode (deterministic retraining). Besides ``metrics["lds"]`` the record keeps its
top-level fields ``lds``, ``lds_ci``, ``lds_per_query``, ``constant_outcome_queries``,
``constant_prediction_queries``, ``gt_reliability(_ci)``, ``lds_ceiling(_ci)``,
``normalized_lds`` and ``gt_warning``.
"""

from __future__ import annotations

import logging
import math

import torch

from tdabench.harness.plugin import lds, noise_ceiling
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun

log = logging.getLogger(__name__)


class NonFiniteLDSError(ValueError):
    """The LDS came out NaN or infinite; the message gives the cause."""


def ceiling_fields(outcomes: torch.Tensor, lds_value: float, cfg: dict) -> dict:
    """Ground-truth reliability, LDS ceiling and normalized LDS of ``outcomes`` [M, K, n_query],
    with a warning when the ground truth is too noisy to separate methods."""
    c = noise_ceiling(outcomes.numpy(), cfg["lds"]["bootstrap"], cfg["seed"])
    out = {"gt_reliability": c.reliability, "gt_reliability_ci": c.reliability_ci,
           "lds_ceiling": c.ceiling, "lds_ceiling_ci": c.ceiling_ci,
           "normalized_lds": lds_value / c.ceiling if c.ceiling else None}
    warning = c.message
    if c.ceiling is not None:
        lo, hi = c.ceiling_ci
        if c.ceiling < cfg["lds"]["min_ceiling"] or hi - lo > cfg["lds"]["max_ceiling_ci_width"]:
            warning = (f"the ground truth is noisy: LDS ceiling {c.ceiling:.3f} [{lo:.3f}, {hi:.3f}]; "
                       "differences between methods below that noise are not meaningful. Raise "
                       "gt.seeds (reliability) or gt.subsets / task.n_query (narrower interval)")
    if warning:
        log.warning(warning)
        out["gt_warning"] = warning
    return out


class LDS(Metric):
    uses_ground_truth = True
    fails_run = True

    def supports(self, task, method) -> str | None:
        return None if task.measures_lds else f"task {task.name} measures cost only (no ground truth)"

    def evaluate(self, run: MetricRun) -> MetricResult:
        cfg, gt = run.cfg, run.ground_truth
        res = lds(run.scores, gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"])
        if run.gt_mode == "same_seed":  # deterministic retraining: no noise, ceiling 1
            fields = dict(gt_reliability=1.0, gt_reliability_ci=[1.0, 1.0], lds_ceiling=1.0,
                          lds_ceiling_ci=[1.0, 1.0], normalized_lds=res.lds)
        else:
            fields = ceiling_fields(gt.outcomes, res.lds, cfg)
        fields.update(lds=res.lds, lds_ci=list(res.ci),
                      lds_per_query=[None if v != v else round(float(v), 6) for v in res.per_query],
                      constant_outcome_queries=res.constant_outcome_queries,
                      constant_prediction_queries=res.constant_prediction_queries)
        if res.constant_outcome_queries:
            log.info(f"{len(res.constant_outcome_queries)} queries have constant ground-truth "
                     f"outcomes and are left out of the LDS: {res.constant_outcome_queries}")
        if res.constant_prediction_queries:
            log.info(f"{run.method.name} predicts the same outcome for every subset on "
                     f"{len(res.constant_prediction_queries)} queries; they count as LDS 0: "
                     f"{res.constant_prediction_queries}")
        if not (math.isfinite(res.lds) and all(math.isfinite(v) for v in res.ci)):
            raise NonFiniteLDSError(
                f"the LDS is {res.lds} [{res.ci[0]}, {res.ci[1]}]: no query has both a varying "
                f"ground-truth outcome and a defined correlation ({len(res.constant_outcome_queries)} "
                f"of {run.task.n_query} queries have constant outcomes); raise task.n_query or gt.subsets")
        return MetricResult(res.lds, res.ci, fields["lds_ceiling"],
                            extra={"normalized": fields["normalized_lds"]}, top_level=fields)
