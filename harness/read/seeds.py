"""Replicates over data seeds: the leaderboard's "across data seeds" table.

Records with the same ground-truth settings (task config, n_train, subsets x seeds, alpha,
observable, mode) at two or more values of the run's ``seed`` are replicates: each seed has its
own training set, reference model, queries, subsets and retraining. Per method and setting (the
leaderboard's rows, newest ok record per seed), the table gives the mean LDS over seeds (each
seed's LDS the mean over its queries, NaNs dropped), the per-seed values and a 95% interval from a
two-level bootstrap: resample the seeds with replacement, then the queries within each drawn
seed, and average. Pairwise differences of two rows use the seeds both have and the per-query
differences within each seed (the same queries), with the same two-level interval and a two-sided
bootstrap p-value (twice the smaller share of resampled means on either side of 0, counted as
(k + 1) / (B + 1) so that it is never 0),
Holm-adjusted over the pairs of one ground truth (:func:`harness.read.statistics.holm`).
Written as ``leaderboard_seeds.csv`` and ``pairwise_seeds.csv``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import ground_truth_prefix
from tdabench.harness.read.statistics import holm

N_BOOT = 2000
#: gt settings that do not change the outcomes (how they are computed), left out of the grouping
HOW_COMPUTED = ("shard", "num_shards", "vectorize", "models_per_batch")


def replicate_key(rec: RunRecord) -> str:
    """What replicates over data seeds share: the ground-truth settings without the seed."""
    cfg = rec.config or {}
    gt = {k: v for k, v in (cfg.get("gt") or {}).items() if k not in HOW_COMPUTED}
    return json.dumps({"task": cfg.get("task"), "gt": gt, "label": ground_truth_prefix(rec)},
                      sort_keys=True, default=str)


def finite_per_query(rec: RunRecord) -> np.ndarray:
    """The record's finite per-query LDS values (NaNs and missing values dropped)."""
    v = np.array([np.nan if x is None else x for x in rec.lds_per_query or []], float)
    return v[np.isfinite(v)]


def two_level_bootstrap(per_seed: list[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """``n_boot`` resampled means of the mean over seeds of each seed's mean: seeds drawn with
    replacement, then queries within each drawn seed. ``per_seed``: one array of per-query values
    per seed (finite). Returns [n_boot]."""
    rng = np.random.default_rng(seed)
    q = np.stack([v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1) for v in per_seed])  # [S, B]
    s = len(per_seed)
    seeds = rng.integers(0, s, size=(n_boot, s))
    cols = rng.integers(0, n_boot, size=(n_boot, s))
    return q[seeds, cols].mean(axis=1)


def _interval(boot: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(lo), float(hi)


def across_seeds(chosen: dict[tuple, tuple[RunRecord, list[RunRecord]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table and its pairwise differences from the leaderboard's rows ``chosen`` (row key
    (ground truth, task, method, setting, sweep) -> (shown record, all records)); empty frames
    when no ground-truth setting was run at two or more seeds."""
    rows: dict[tuple, dict[int, np.ndarray]] = {}
    labels: dict[str, str] = {}
    for (_, _, method, setting, sweep), (_, recs) in chosen.items():
        for rec in recs:
            values = finite_per_query(rec) if rec.is_ok else np.array([])
            if len(values) < 2:
                continue
            group = replicate_key(rec)
            labels[group] = ground_truth_prefix(rec)
            # the newest ok record of each data seed (records are in the order they were written)
            rows.setdefault((group, method, setting or "", sweep), {})[(rec.config or {}).get("seed")] = values
    table, pairs = [], []
    for group in sorted(labels):
        mine = {k[1:]: v for k, v in rows.items() if k[0] == group and len(v) >= 2}
        for (method, setting, sweep), by_seed in sorted(mine.items(), key=lambda kv: kv[0][:2]):
            seeds = sorted(by_seed)
            means = [float(by_seed[s].mean()) for s in seeds]
            lo, hi = _interval(two_level_bootstrap([by_seed[s] for s in seeds]))
            table.append({"ground_truth": labels[group], "method": method, "setting": setting,
                          **({"sweep": sweep} if sweep else {}), "seeds": len(seeds),
                          "lds_mean": float(np.mean(means)), "lds_ci_low": lo, "lds_ci_high": hi,
                          "per_seed": " ".join(f"{s}:{m:.4f}" for s, m in zip(seeds, means))})
        pairs += _pairs(labels[group], mine)
    return pd.DataFrame(table), pd.DataFrame(pairs)


def _pairs(label: str, rows: dict[tuple, dict]) -> list[dict]:
    """Pairwise differences (a - b, a the higher mean) over the seeds two rows share."""
    def name(key):
        method, setting, sweep = key
        return method + (f" [{setting}]" if setting else "") + (f" @{sweep}" if sweep else "")

    order = sorted(rows, key=lambda k: -np.mean([v.mean() for v in rows[k].values()]))
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            shared = sorted(set(rows[a]) & set(rows[b]))
            diffs = []
            for s in shared:
                x, y = rows[a][s], rows[b][s]
                if len(x) == len(y):  # the same queries (records whose NaNs differ are left out)
                    diffs.append(x - y)
            if len(diffs) < 2:
                continue
            boot = two_level_bootstrap(diffs)
            lo, hi = _interval(boot)
            tail = min((boot <= 0).sum(), (boot >= 0).sum())
            p = float(min(1.0, 2 * (tail + 1) / (len(boot) + 1)))  # never 0 from finitely many draws
            out.append({"ground_truth": label, "a": name(a), "b": name(b), "seeds": len(diffs),
                        "mean_diff": float(np.mean([d.mean() for d in diffs])), "ci_low": lo,
                        "ci_high": hi, "p_value": p})
    for row, adjusted in zip(out, holm([r["p_value"] for r in out])):
        row["p_holm"] = adjusted
    return out


def render(table: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """The markdown section of the across-data-seeds table and its pairwise differences."""
    if table.empty:
        return []
    parts = ["## Across data seeds", "",
             "Ground-truth settings run at several data seeds (each with its own training set, model, "
             "queries and subsets): mean LDS over seeds, 95% interval from a two-level bootstrap "
             "(seeds, then queries within each seed), and each seed's LDS.", ""]
    for gt, sub in table.groupby("ground_truth", sort=True):
        parts += [f"### {gt}", "", sub.drop(columns="ground_truth").to_markdown(index=False, floatfmt=".4g"), ""]
        if not pairs.empty and (pairs["ground_truth"] == gt).any():
            p = pairs[pairs["ground_truth"] == gt].drop(columns="ground_truth")
            parts += [f"Pairwise differences across data seeds ({gt}): mean a - b over shared seeds, "
                      "two-level bootstrap 95% interval and p-value, Holm-adjusted over these "
                      f"{len(p)} pairs", "", p.to_markdown(index=False, floatfmt=".3g"), ""]
    return parts
