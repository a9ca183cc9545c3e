"""The Linear Datamodeling Score (Park et al. 2023, TRAK).

For subset masks ``masks`` [M, n] (1 where a training example is kept) and a method's scores
``scores`` [n_query, n_train] (d observable / d beta_i), the predicted outcome of subset j for
query q is ``masks[j] @ scores[q]``. LDS for q is the Spearman correlation over the M subsets
between predicted and actual (ground-truth) outcomes; the reported LDS is the mean over queries,
with a bootstrap 95% interval over queries.

Two kinds of query are listed apart. A query whose ground-truth outcome is constant over subsets
carries no signal about any method: its LDS is undefined (NaN) and it is left out of the mean. A
query on which a method's predictions are constant over subsets gives the method no ranking: it
counts as LDS 0 (never dropped, so a method cannot raise its mean by abstaining on hard queries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata


class ConstantOutcomeError(ValueError):
    """Every query's ground-truth outcome is constant over subsets: LDS is undefined."""


@dataclass
class LDSResult:
    lds: float
    ci: tuple[float, float]
    per_query: np.ndarray  # [n_query]; NaN only where the ground-truth outcome is constant
    constant_outcome_queries: list[int] = field(default_factory=list)
    constant_prediction_queries: list[int] = field(default_factory=list)


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` ([M, Q] each).

    Columns that are constant in either argument give NaN.
    """
    return columnwise_pearson(rankdata(a, axis=0), rankdata(b, axis=0))


def columnwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` ([M, Q] each).

    Columns that are constant in either argument give NaN.
    """
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denom = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * b).sum(axis=0) / denom
    out[denom == 0] = np.nan
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped)."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def sequence_scores(scores: torch.Tensor) -> torch.Tensor:
    """Reduce per-token scores [n_query, query_len, n_train] to sequence scores (mean over tokens)."""
    return scores.mean(dim=1) if scores.dim() == 3 else scores


def lds(scores: torch.Tensor, masks: torch.Tensor, outcomes: torch.Tensor, n_boot: int = 1000,
        seed: int = 0) -> LDSResult:
    """LDS of ``scores`` [n_query, n_train] against ``outcomes`` [M, n_query] on ``masks`` [M, n_train]."""
    scores = sequence_scores(scores).double().cpu().numpy()
    masks_np = masks.double().cpu().numpy()
    actual = outcomes.double().cpu().numpy()
    if scores.shape[1] != masks_np.shape[1] or scores.shape[0] != actual.shape[1]:
        raise ValueError(
            f"shape mismatch: scores {tuple(scores.shape)}, masks {tuple(masks_np.shape)}, "
            f"outcomes {tuple(actual.shape)}; expected [n_query, n_train], [M, n_train], [M, n_query]"
        )
    constant_outcome = [int(q) for q in np.flatnonzero(np.ptp(actual, axis=0) == 0)]
    if len(constant_outcome) == actual.shape[1]:
        raise ConstantOutcomeError(
            "every query's ground-truth outcome is constant over subsets; the ground truth carries "
            "no signal (check the task's training recipe and gt.alpha)"
        )
    predicted = masks_np @ scores.T  # [M, n_query]
    # constant up to the rounding of summing equal scores in different orders
    spread = np.ptp(predicted, axis=0) <= 1e-9 * np.abs(predicted).max(axis=0)
    constant_pred = [int(q) for q in np.flatnonzero(spread) if q not in constant_outcome]
    per_query = columnwise_spearman(predicted, actual)
    per_query[constant_pred] = 0.0  # no ranking: no information, counted as such
    mean = float(np.nanmean(per_query)) if np.isfinite(per_query).any() else float("nan")
    return LDSResult(mean, bootstrap_ci(per_query, n_boot, seed), per_query, constant_outcome,
                     constant_pred)
