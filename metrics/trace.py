"""The ground truth along training: what ``lds_stagewise`` and ``lds_token`` are scored against.

Every subset of the task's LDS ground truth is retrained again with the same seeds (the same
masks, the same retraining seeds, the same recipe), split into ``task.trajectory_checkpoints``
equal segments as the reference run's trajectory is (:meth:`Task.trajectory`), and at the end of
each segment every query's observable is recorded. On tasks with per-token observables
(capability ``per_token``) the final model's loss on each query token is recorded too. The
outcomes are cached beside the LDS ground truth, in ``cache_dir/ground_truth_trace``, under a key
of their own (the LDS ground truth's key, the snapshot count and whether tokens are kept), so the
LDS ground truth's files and keys are untouched; caching, sharding and resuming are the ground
truth's (:class:`GroundTruthBuilder`).

Snapshot s of a retraining ends at the same fraction of its training as snapshot s of the
reference run: its step ``round(total * (s + 1) / S)`` with ``total`` the retraining's own step
count, equal for every subset (every subset keeps the same number of examples).
"""

from __future__ import annotations

import torch

from tdabench.harness.core.storage import content_hash
from tdabench.harness.plugin.ground_truth import GroundTruth, GroundTruthBuilder, gt_key
from tdabench.harness.plugin.quality import degenerate_reason
from tdabench.harness.plugin.training import total_steps

FORMAT_VERSION = 1


def snapshot_problems(cfg: dict, metric: str) -> list[str]:
    """The settings a trace metric cannot run with (the same-seed mode retrains without seeds of
    its own and stays out of scope)."""
    if (cfg.get("gt") or {}).get("same_seed"):
        return [f"metric {metric} needs fresh-seed retraining: drop gt.same_seed=true or the metric"]
    return []


class TraceBuilder(GroundTruthBuilder):
    """Outcomes ``[M, K, S * n_query (+ n_query * T)]``: per retraining, every query's observable
    at each of the S snapshots, then (per-token tasks) every query token's loss at the end."""

    folder = "ground_truth_trace"
    label = "ground truth along training"

    def __init__(self, task, gt: dict, cache_dir, log=None):
        self.snapshots = task.trajectory_checkpoints
        self.tokens = "per_token" in task.capabilities
        self.n_tokens = int(task.query_split.targets.shape[1]) if self.tokens else 0
        super().__init__(task, gt, cache_dir, log)

    def key(self) -> str:
        return content_hash({"gt": gt_key(self.task, self.gt), "snapshots": self.snapshots,
                             "tokens": self.tokens, "format": FORMAT_VERSION})

    def outcome_width(self) -> int:
        return self.task.n_query * (self.snapshots + self.n_tokens)

    def steps(self) -> list[int]:
        """The optimizer step at the end of each snapshot of a retraining."""
        n = int(round(self.gt.alpha * self.task.n_train))
        recipe = self.task.recipe()
        if self.gt.from_checkpoint:
            recipe.epochs = self.gt.finetune_epochs
        total = total_steps(n, recipe)
        return [round(total * (s + 1) / self.snapshots) for s in range(self.snapshots)]

    def _retrain(self, subsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.task
        init, recipe = self.retraining_start()
        outs, degenerate = [], []
        for j in subsets:
            row = torch.nonzero(self.masks[j])[:, 0]
            for k in range(self.seeds):
                run = task.fit_model(row, self.job_seed(j, k), init, snapshots=self.snapshots, recipe=recipe)
                parts = [task.query_observables(task.snapshot_model(s)).cpu() for s in run.trajectory]
                if self.tokens:
                    parts.append(task.batched(task.token_observables, run.model, task.query_split).cpu().flatten())
                outs.append(torch.cat(parts))
                degenerate.append(degenerate_reason(task.evaluate(run.model)) is not None)
        return (torch.stack(outs).view(len(subsets), self.seeds, -1),
                torch.tensor(degenerate).view(len(subsets), self.seeds))

    def stage_outcomes(self, gt: GroundTruth) -> torch.Tensor:
        """Every query's observable at each snapshot: [S, M, K, n_query]."""
        m, k = gt.outcomes.shape[:2]
        q = self.task.n_query
        return gt.outcomes[..., :self.snapshots * q].reshape(m, k, self.snapshots, q).permute(2, 0, 1, 3)

    def token_outcomes(self, gt: GroundTruth) -> torch.Tensor:
        """Every query token's loss at the end of training: [M, K, n_query, T]."""
        m, k = gt.outcomes.shape[:2]
        q = self.task.n_query
        return gt.outcomes[..., self.snapshots * q:].reshape(m, k, q, self.n_tokens)
