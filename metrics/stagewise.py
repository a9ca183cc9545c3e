"""``lds_stagewise``: the LDS at each snapshot of training (stagewise data attribution).

Influence changes along training (Lee et al. 2025 call attribution along the trajectory
"stagewise"); the LDS judges only the end. This metric asks, for each snapshot t of the task's
trajectory (``task.trajectory_checkpoints`` equal segments): fitted on the reference run's model
at t, does the method predict what removing data does to the model at the same point of
retraining? The ground truth is :class:`~tdabench.metrics.trace.TraceBuilder`'s (the LDS ground
truth's subsets and seeds, each retraining's query observables recorded at every snapshot).

At snapshot t an unfitted copy of the method (same parameters) is fitted on a view of the task
whose checkpoint is the reference run's snapshot t and whose trajectory ends there (its
fingerprint names the snapshot, so nothing the method caches is shared with another snapshot);
at the last snapshot (the checkpoint) the run's own scores are used. The record's
``metrics.lds_stagewise`` holds ``snapshots`` (per snapshot: reference step, retraining step, LDS
and its bootstrap interval over queries), and ``value``, their mean, with a bootstrap interval over
queries of that mean. Methods that replay the training run or train an ensemble of their own
(magic, TRAK with several models) are not supported: their fit does not stop at a snapshot.
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from tdabench.harness.plugin import lds
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun
from tdabench.metrics.trace import TraceBuilder, snapshot_problems

log = logging.getLogger(__name__)


def snapshot_view(task, t: int):
    """``task`` seen at snapshot ``t`` of its reference run: checkpoint, trajectory and
    fingerprint (so method caches) all end there."""
    trajectory = task.trajectory()[:t + 1]
    view = copy.copy(task)
    view.checkpoint = lambda: task.snapshot_model(trajectory[-1])
    view.trajectory = lambda: list(trajectory)
    fingerprint = {**task.fingerprint(), "snapshot": [t, len(task.trajectory())]}
    view.fingerprint = lambda: dict(fingerprint)
    view.token_scores_wanted = False  # the LDS at a snapshot reads sequence scores
    return view


def mean_over_snapshots(per_query: np.ndarray, n_boot: int, seed: int) -> tuple[float, tuple[float, float]]:
    """Mean over snapshots of each snapshot's LDS (mean over its defined queries) from
    ``per_query`` [S, Q], and a percentile bootstrap interval resampling queries."""
    def value(p):
        return float(np.mean([np.nanmean(row) if np.isfinite(row).any() else 0.0 for row in p]))

    rng = np.random.default_rng(seed)
    q = per_query.shape[1]
    draws = [value(per_query[:, rng.integers(0, q, q)]) for _ in range(n_boot)]
    lo, hi = np.quantile(draws, [0.025, 0.975])
    v = value(per_query)
    return v, (min(float(lo), v), max(float(hi), v))  # a percentile interval may miss a skewed mean


class StagewiseLDS(Metric):
    def supports(self, task, method) -> str | None:
        if not task.measures_lds:
            return f"task {task.name} measures cost only (no retraining)"
        if "trajectory" not in task.capabilities:
            return f"task {task.name} keeps no trajectory"
        extra = set(method.requires) & {"replayable", "ensemble"}
        if extra:
            return (f"method {method.name} requires {', '.join(sorted(extra))}: its fit covers the whole "
                    "training run, not a snapshot of it")
        return None

    def config_problems(self, cfg: dict) -> list[str]:
        return snapshot_problems(cfg, "lds_stagewise")

    def builder(self, task, cfg: dict) -> TraceBuilder:
        return TraceBuilder(task, cfg["gt"], cfg["cache_dir"])

    def compute_shard(self, task, cfg: dict, shard: int, num_shards: int) -> None:
        self.builder(task, cfg).compute_shard(shard, num_shards)

    def evaluate(self, run: MetricRun) -> MetricResult:
        cfg, task = run.cfg, run.task
        builder = self.builder(task, cfg)
        gt = builder.build()
        stages = builder.stage_outcomes(gt).mean(dim=2)  # [S, M, Q]
        n_boot, seed = cfg["lds"]["bootstrap"], cfg["seed"]
        reference = task.trajectory()
        ref_steps = np.cumsum([s.steps for s in reference]).tolist()
        entries, per_query = [], []
        for t in range(builder.snapshots):
            if t == builder.snapshots - 1:
                scores = run.scores
            else:
                view, method = snapshot_view(task, t), run.new_method()
                model = view.checkpoint()
                method.fit(view, model)
                scores = method.score(view, model).cpu()
            res = lds(scores, gt.masks, stages[t], n_boot, seed)
            per_query.append(res.per_query)
            entries.append({"snapshot": t, "step": int(ref_steps[t]), "retrain_step": builder.steps()[t],
                            "lds": res.lds, "ci": list(res.ci)})
            log.info(f"{run.method.name}: LDS at snapshot {t} (step {ref_steps[t]}) {res.lds:.4f}")
        value, ci = mean_over_snapshots(np.stack(per_query), n_boot, seed)
        return MetricResult(value, ci, None, extra={
            "snapshots": entries, "outcomes_key": builder.dir.name, "seeds": builder.seeds,
            "degenerate_share": gt.degenerate_share})
