"""Trends with the training-set size: does the difference between two methods change with n_train?

Records whose ground truths differ only in ``task.n_train`` (same task settings otherwise, same
subsets x seeds, alpha and observable) form a size series. For two leaderboard rows (method and
setting; a tuned row's setting names its trial budget, not its chosen parameters, so it is one row
across sizes) present at two or more sizes, the difference a - b at each size is the mean over
that size's data seeds of the mean over queries of the per-query LDS differences (the same
queries: both records of a seed share its ground truth). The trend is the least-squares slope of
these differences against log2(n_train): the change in a - b per doubling of the training set
(with two sizes, the change from one to the other per doubling between them).

Its 95% interval and two-sided p-value come from a bootstrap that keeps the design: at each size,
independently, the data seeds are drawn with replacement and then the queries within each drawn
seed (:func:`harness.read.seeds.two_level_bootstrap`); the slope is refitted to every draw. The
p-value is twice the smaller share of refitted slopes on either side of 0, counted as
(k + 1) / (B + 1), and Holm-adjusted over the pairs of one series. A size with a single seed
contributes its query-level uncertainty only, so the interval is then too narrow for a claim
about new data: read it with the seeds column. Rows ``a`` and ``b`` are ordered by their mean LDS
over the series (a the higher), as in the pairwise tables. Written as ``trend.csv``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.seeds import HOW_COMPUTED, N_BOOT, finite_per_query, two_level_bootstrap
from tdabench.harness.read.statistics import holm

#: sizes a pair needs before a slope is fitted
MIN_SIZES = 2


def series_key(rec: RunRecord) -> tuple[str, str]:
    """What the records of one size series share (the ground-truth settings without n_train and
    the seed), and its readable label."""
    cfg = rec.config or {}
    task = {k: v for k, v in (cfg.get("task") or {}).items() if k != "n_train"}
    gt = {k: v for k, v in (cfg.get("gt") or {}).items() if k not in HOW_COMPUTED}
    label = (f"{rec.task} {rec.gt_subsets}x{rec.gt_seeds} alpha={gt.get('alpha', 0.5):g} "
             f"{task.get('observable', 'loss')}")
    return json.dumps({"task": task, "gt": gt}, sort_keys=True, default=str), label


def _name(key: tuple) -> str:
    method, setting, sweep = key
    return method + (f" [{setting}]" if setting else "") + (f" @{sweep}" if sweep else "")


def slope_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of the rows of ``y`` ([..., len(x)]) against ``x``."""
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)


def pair_trend(by_size_a: dict, by_size_b: dict, n_boot: int = N_BOOT) -> dict | None:
    """The trend of a - b from ``{n_train: {seed: per-query LDS}}`` of each row; None where fewer
    than :data:`MIN_SIZES` sizes have a seed with both rows on the same queries."""
    sizes, means, boots, seeds = [], [], [], []
    for n in sorted(set(by_size_a) & set(by_size_b)):
        diffs = [by_size_a[n][s] - by_size_b[n][s] for s in sorted(set(by_size_a[n]) & set(by_size_b[n]))
                 if len(by_size_a[n][s]) == len(by_size_b[n][s])]
        if not diffs:
            continue
        sizes.append(n)
        seeds.append(len(diffs))
        means.append(float(np.mean([d.mean() for d in diffs])))
        boots.append(two_level_bootstrap(diffs, n_boot=n_boot, seed=len(sizes)))  # independent per size
    if len(sizes) < MIN_SIZES:
        return None
    x = np.log2(np.asarray(sizes, float))
    slope = float(slope_fit(x, np.asarray(means)))
    boot = slope_fit(x, np.stack(boots, axis=1))  # [B]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    return {"sizes": " ".join(str(n) for n in sizes), "seeds": " ".join(map(str, seeds)),
            "diff_smallest": means[0], "diff_largest": means[-1], "slope_per_doubling": slope,
            "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(min(1.0, 2 * (tail + 1) / (len(boot) + 1)))}


def trends(chosen: dict[tuple, tuple[RunRecord, list[RunRecord]]]) -> pd.DataFrame:
    """The trend of every pair of rows present at :data:`MIN_SIZES` or more sizes of a series,
    from the leaderboard's rows ``chosen`` (row key (ground truth, task, method, setting, sweep)
    -> (shown record, all records)); an empty frame when there is none."""
    rows: dict[tuple, dict[int, dict]] = {}
    labels: dict[str, str] = {}
    for (_, _, method, setting, sweep), (_, recs) in chosen.items():
        for rec in recs:
            values = finite_per_query(rec) if rec.is_ok else np.array([])
            if len(values) < 2 or rec.n_train is None:
                continue
            group, label = series_key(rec)
            labels[group] = label
            # the newest ok record of each size and data seed (records are in the order written)
            rows.setdefault((group, (method, setting or "", sweep)), {}).setdefault(rec.n_train, {})[
                (rec.config or {}).get("seed")] = values
    out = []
    for group in sorted(labels):
        mine = {k[1]: v for k, v in rows.items() if k[0] == group and len(v) >= MIN_SIZES}
        order = sorted(mine, key=lambda k: -np.mean([v.mean() for by in mine[k].values() for v in by.values()]))
        found = []
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                fit = pair_trend(mine[a], mine[b])
                if fit is not None:
                    found.append({"series": labels[group], "a": _name(a), "b": _name(b), **fit})
        for row, adjusted in zip(found, holm([r["p_value"] for r in found])):
            row["p_holm"] = adjusted
        out += found
    return pd.DataFrame(out)


def render(table: pd.DataFrame) -> list[str]:
    """The markdown section of the trends."""
    if table.empty:
        return []
    parts = ["## Trend with the training-set size", "",
             "The difference a - b at each size (mean over data seeds of the mean per-query LDS "
             "difference) and its least-squares slope against log2(n_train), per doubling of the "
             "training set; 95% interval and p-value from a bootstrap over data seeds, then "
             "queries, at each size; Holm-adjusted over the pairs of each series. A positive slope: "
             "a's lead grows with the training set (or b's lead shrinks).", ""]
    for series, sub in table.groupby("series", sort=True):
        parts += [f"### {series}", "", sub.drop(columns="series").to_markdown(index=False, floatfmt=".3g"), ""]
    return parts
