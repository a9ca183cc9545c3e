"""``lds_token``: the per-token LDS, on tasks whose queries are token sequences.

The LDS of a language task judges the mean token loss of each query sequence; a method's
per-token scores (``[n_query, T, n_train]``, d loss_{q,t} / d beta_i) are averaged over tokens
before it. This metric judges each token: for each (query q, token t), the Spearman correlation
over the ground truth's subsets between the predicted change ``masks[j] @ scores[q, t]`` and the
loss of token t of query q after retraining on subset j (mean over seeds; recorded by
:class:`~tdabench.metrics.trace.TraceBuilder` from the same subsets and seeds as the LDS ground
truth, whose own outcomes stay as they are). A query's value is the mean over its tokens; the
metric is the mean over queries with a bootstrap 95% interval over queries. As in the LDS, a
token whose retrained loss never changes is left out and a token whose predictions never change
counts 0. The ceiling is the per-token one of the seed split (:func:`noise_ceiling` over every
(query, token) column).

A method gives per-token scores when it has ``token_scores(task)`` returning True (the BIF, EK-FAC
and K-FAC on per-token tasks); the others are ``unsupported``.
"""

from __future__ import annotations

import numpy as np
import torch

from tdabench.harness.plugin import bootstrap_ci, columnwise_spearman, noise_ceiling
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun
from tdabench.metrics.trace import TraceBuilder, snapshot_problems


def gives_token_scores(method, task) -> bool:
    """Whether ``method`` scores each query token on ``task``."""
    says = getattr(method, "token_scores", None)
    return bool(says(task)) if callable(says) else False


def token_lds(scores: torch.Tensor, masks: torch.Tensor, outcomes: torch.Tensor) -> np.ndarray:
    """Per-query mean over tokens of the Spearman correlation over subsets: scores [Q, T, n],
    masks [M, n], outcomes [M, Q, T] (mean over seeds); [Q] (NaN where no token's loss varies)."""
    q, t, n = scores.shape
    predicted = masks.double().numpy() @ scores.reshape(q * t, n).double().numpy().T  # [M, Q*T]
    actual = outcomes.reshape(len(masks), q * t).double().numpy()
    rho = columnwise_spearman(predicted, actual)
    varies = np.ptp(actual, axis=0) > 0
    flat = np.ptp(predicted, axis=0) <= 1e-9 * np.abs(predicted).max(axis=0)
    rho[flat & varies] = 0.0
    rho = rho.reshape(q, t)
    with np.errstate(all="ignore"):
        counted = np.isfinite(rho).sum(axis=1)
        return np.where(counted > 0, np.nansum(rho, axis=1) / np.maximum(counted, 1), np.nan)


class TokenLDS(Metric):
    reads_token_scores = True

    def supports(self, task, method) -> str | None:
        if not task.measures_lds:
            return f"task {task.name} measures cost only (no retraining)"
        if "per_token" not in task.capabilities:
            return f"task {task.name} has no per-token observables"
        if not gives_token_scores(method, task):
            return f"method {method.name} gives sequence scores only, not one score per query token"
        return None

    def config_problems(self, cfg: dict) -> list[str]:
        return snapshot_problems(cfg, "lds_token")

    def builder(self, task, cfg: dict) -> TraceBuilder:
        return TraceBuilder(task, cfg["gt"], cfg["cache_dir"])

    def compute_shard(self, task, cfg: dict, shard: int, num_shards: int) -> None:
        self.builder(task, cfg).compute_shard(shard, num_shards)

    def evaluate(self, run: MetricRun) -> MetricResult:
        if run.scores.dim() != 3:
            raise ValueError(f"{run.method.name} gave scores of shape {tuple(run.scores.shape)}, "
                             "not per token [n_query, T, n_train]")
        cfg = run.cfg
        builder = self.builder(run.task, cfg)
        gt = builder.build()
        tokens = builder.token_outcomes(gt)  # [M, K, Q, T]
        if tokens.shape[-1] != run.scores.shape[1]:
            raise ValueError(f"the scores have {run.scores.shape[1]} tokens per query, the ground truth "
                             f"{tokens.shape[-1]}")
        per_query = token_lds(run.scores, gt.masks, tokens.mean(dim=1))
        if not np.isfinite(per_query).any():
            raise ValueError("no query token's loss changes over the subsets: raise gt.subsets")
        n_boot, seed = cfg["lds"]["bootstrap"], cfg["seed"]
        value = float(np.nanmean(per_query))
        m, k = tokens.shape[:2]
        ceiling = noise_ceiling(tokens.reshape(m, k, -1).numpy(), n_boot, seed)
        return MetricResult(value, bootstrap_ci(per_query, n_boot, seed), ceiling.ceiling, extra={
            "ceiling_ci": None if ceiling.ceiling_ci is None else list(ceiling.ceiling_ci),
            "normalized": value / ceiling.ceiling if ceiling.ceiling else None,
            "per_query": [None if v != v else round(float(v), 6) for v in per_query],
            "tokens": int(tokens.shape[-1]), "outcomes_key": builder.dir.name, "seeds": builder.seeds})
