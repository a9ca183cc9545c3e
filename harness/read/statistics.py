"""How far LDS differences can be trusted: noise ceiling and paired comparisons.

Noise ceiling. With K >= 2 retraining seeds per subset, the ground truth's reliability r is the
correlation one would get between two independent K-seed ground truths. It is estimated per query
by splitting the seeds into two halves, taking the Spearman correlation over subsets between the
two half-means, and stepping it up to K seeds with the Spearman-Brown formula
r_K = m r_h / (1 + (m - 1) r_h), m = K / (K / 2) = 2. With K odd the halves differ by one seed;
every balanced split is averaged. By attenuation, no predictor's expected correlation with a
ground truth of reliability r exceeds sqrt(r): that is ``lds_ceiling``.

Paired comparisons. Methods scored on the same ground truth are compared query by query: mean
per-query LDS difference, a paired bootstrap 95% interval and a Wilcoxon signed-rank p-value.
The p-values of all pairs on one ground truth are one family: ``p_holm`` is the Holm
step-down adjustment over that family (family-wise error rate <= alpha), and a method is tied with
the best when the adjusted p-value of its comparison with the best is >= alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import wilcoxon

from tdabench.harness.read.lds import bootstrap_ci, columnwise_spearman


@dataclass
class Ceiling:
    reliability: float | None
    reliability_ci: tuple[float, float] | None
    ceiling: float | None
    ceiling_ci: tuple[float, float] | None
    per_query_reliability: np.ndarray | None
    message: str | None = None


def seed_splits(k: int, max_splits: int = 10) -> list[tuple[list[int], list[int]]]:
    """Balanced splits of ``k`` seeds into two halves (the first half the smaller)."""
    half = k // 2
    splits = []
    for a in combinations(range(k), half):
        b = [s for s in range(k) if s not in a]
        if (b, list(a)) not in splits:
            splits.append((list(a), b))
        if len(splits) == max_splits:
            break
    return splits


def spearman_brown(r: np.ndarray, m: float) -> np.ndarray:
    return m * r / (1 + (m - 1) * r)


def noise_ceiling(outcomes: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  correlate=columnwise_spearman) -> Ceiling:
    """Reliability and LDS ceiling of ground-truth ``outcomes`` [M, K, n_query]: the half-seed
    means are compared with ``correlate`` (columnwise, [M, Q] x [M, Q] -> [Q]; Spearman for the
    LDS, Pearson for a Pearson metric)."""
    outcomes = np.asarray(outcomes, dtype=np.float64)
    k = outcomes.shape[1]
    if k < 2:
        return Ceiling(None, None, None, None, None,
                       "the noise ceiling needs at least 2 retraining seeds per subset; "
                       "rerun with gt.seeds=2 or more")
    per_split = []
    for a, b in seed_splits(k):
        r_half = correlate(outcomes[:, a].mean(1), outcomes[:, b].mean(1))
        per_split.append(spearman_brown(r_half, k / (k / 2)))
    r = np.nanmean(np.stack(per_split), axis=0)  # [n_query]
    ceil_q = np.sqrt(np.clip(r, 0.0, 1.0))
    return Ceiling(float(np.nanmean(r)), bootstrap_ci(r, n_boot, seed), float(np.nanmean(ceil_q)),
                   bootstrap_ci(ceil_q, n_boot, seed), r)


@dataclass
class Paired:
    a: str
    b: str
    mean_diff: float  # mean over queries of LDS_a - LDS_b
    ci: tuple[float, float]
    p_value: float
    n: int
    p_holm: float | None = None  # Holm-adjusted over the family the pair was compared in


def paired_comparison(a: np.ndarray, b: np.ndarray, name_a: str = "a", name_b: str = "b",
                      n_boot: int = 2000, seed: int = 0) -> Paired:
    """Compare two methods' per-query LDS values on the same queries (NaNs dropped pairwise)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    if len(d) < 2 or np.allclose(d, 0):
        return Paired(name_a, name_b, float(d.mean()) if len(d) else float("nan"), (0.0, 0.0), 1.0,
                      len(d))
    p = float(wilcoxon(d).pvalue)
    return Paired(name_a, name_b, float(d.mean()), bootstrap_ci(d, n_boot, seed), p, len(d))


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: the i-th smallest of m p-values is
    multiplied by (m - i + 1) (i from 1), made monotone non-decreasing in that order, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order])) if m else p
    out = np.empty(m)
    out[order] = adjusted
    return [float(v) for v in out]


def _finite_mean(values) -> float:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def pairwise_table(per_query: dict[str, np.ndarray]) -> list[Paired]:
    """Every pair of methods (best-first order, a ahead of b; methods without finite values sort
    last), with Holm-adjusted p-values over the distinct hypotheses: rows with bitwise-equal
    per-query values are one hypothesis (each comparison with them is counted once in the family),
    and a comparison between two of them is no hypothesis (it leaves the family; its adjusted
    p-value is 1)."""
    def order(m):
        mean = _finite_mean(per_query[m])
        return -mean if np.isfinite(mean) else np.inf

    names = sorted(per_query, key=order)
    same: dict[bytes, int] = {}
    group = {m: same.setdefault(np.asarray(per_query[m], float).tobytes(), len(same)) for m in names}
    pairs = [paired_comparison(per_query[a], per_query[b], a, b)
             for i, a in enumerate(names) for b in names[i + 1:]]
    family: dict[frozenset, float] = {}
    for pair in pairs:
        if group[pair.a] != group[pair.b]:
            family.setdefault(frozenset((group[pair.a], group[pair.b])), pair.p_value)
    adjusted = dict(zip(family, holm(list(family.values()))))
    for pair in pairs:
        pair.p_holm = 1.0 if group[pair.a] == group[pair.b] else \
            adjusted[frozenset((group[pair.a], group[pair.b]))]
    return pairs


def tied_with_best(per_query: dict[str, np.ndarray], alpha: float = 0.05,
                   pairs: list[Paired] | None = None) -> dict[str, bool]:
    """For each method, whether it is statistically indistinguishable from the best-scoring one:
    the Holm-adjusted p-value (over every pair, ``pairs`` as made by :func:`pairwise_table`)
    of the paired Wilcoxon test against the best is >= alpha. The best is tied with itself. A
    method without one finite per-query value is never the best and never tied."""
    means = {m: _finite_mean(v) for m, v in per_query.items()}
    finite = {m: v for m, v in means.items() if np.isfinite(v)}
    if not finite:
        return {m: False for m in per_query}
    best = max(finite, key=finite.get)
    pairs = pairwise_table(per_query) if pairs is None else pairs
    vs_best = {(p.b if p.a == best else p.a): p.p_holm for p in pairs if best in (p.a, p.b)}
    return {m: m == best or (m in finite and vs_best.get(m, 0.0) >= alpha) for m in per_query}
