"""Leaderboard tables per metric: one table per metric and ground truth, and how the metrics rank
the methods alike.

Each record's ``metrics`` field (``{name: {"status", "value", "ci", "ceiling", ...}}``, written by
the run for every metric of ``metric=[...]``) gives one row per leaderboard row and metric: value,
95% interval, ceiling and value / ceiling where the metric has one, and the metric's status
(``unsupported`` and ``error`` rows carry their message). Rows of one metric are ranked only
against rows of the same ground truth and, for metrics with outcomes of their own (leave-one-out),
the same outcomes (``outcomes``: their cache key). The agreement table gives, per ground truth and
pair of metrics, Kendall's tau between the two rankings of the rows both metrics scored, with its
p-value. Rows come from :func:`harness.read.leaderboard.chosen_records` (the shown record of each
leaderboard row); ``leaderboard_metrics.csv`` holds :data:`COLUMNS`.

Paired tests (``pairwise_metrics.csv``, :data:`PAIRWISE_COLUMNS`): per metric, ground truth and
outcomes, every pair of rows whose shown records carry the metric's per-unit values:

* per query (the LDS's ``lds_per_query``, leave-one-out's ``per_query``): the mean per-query
  difference a - b, its paired bootstrap 95% interval and the Wilcoxon signed-rank p-value
  (:func:`harness.read.statistics.paired_comparison`, as for the LDS in ``pairwise.csv``);
* per training example (mislabel detection's ``suspicion`` of each example, on the same flipped
  examples ``flipped_idx``): the difference of the two ROC AUCs, with a paired bootstrap over
  examples (both AUCs on each resample) for its 95% interval and its two-sided p-value (twice
  the share of resampled differences on the far side of zero).

``p_holm`` is the Holm adjustment within one metric, ground truth and outcomes (the family a
verdict is drawn from); ``significant``: ``p_holm < 0.05``. Rows are ordered best first, so a
pair's ``mean_diff`` is >= 0 when a is ahead.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, rankdata

from tdabench.harness.read.record import MetricEntry, RunRecord
from tdabench.harness.read.record_view import RowKey, row_label
from tdabench.harness.read.statistics import Paired, holm, paired_comparison

COLUMNS = ["metric", "ground_truth", "outcomes", "task", "method", "setting", "sweep", "status", "value",
           "ci_low", "ci_high", "ceiling", "normalized", "spearman", "message"]
AGREEMENT_COLUMNS = ["ground_truth", "metric_a", "metric_b", "rows", "kendall_tau", "p_value"]
PAIRWISE_COLUMNS = ["metric", "ground_truth", "outcomes", "method_a", "method_b", "mean_diff", "ci_low",
                    "ci_high", "p_value", "p_holm", "n", "test", "significant"]


def _row(key: RowKey, name: str, entry: MetricEntry) -> dict:
    (low, high), value, ceiling = entry.interval, entry.value, entry.ceiling
    return {"metric": name, "ground_truth": key.ground_truth, "outcomes": entry.outcomes_key or "",
            "task": key.task, "method": key.method, "setting": key.setting, "sweep": key.sweep,
            "status": entry.status or "ok", "value": value, "ci_low": low, "ci_high": high,
            "ceiling": ceiling, "normalized": value / ceiling if value is not None and ceiling else None,
            "spearman": entry.spearman, "message": entry.message or ""}


def metric_table(chosen: dict[tuple, tuple[RunRecord, list[RunRecord]]]) -> pd.DataFrame:
    """One row per (leaderboard row, metric) of every shown record that carries ``metrics``,
    sorted by metric, ground truth and value (best first, rows without a value last)."""
    rows = [_row(key, name, entry) for key, (rec, _) in chosen.items() if rec.is_ok
            for name, entry in rec.metric_entries.items()]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if not df.empty:
        df = df.sort_values(["metric", "ground_truth", "outcomes", "value"], ascending=[True, True, True, False],
                            na_position="last").reset_index(drop=True)
    return df


def _label(row) -> tuple:
    return (row["method"], row["setting"], row["sweep"])


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau between the rankings two metrics give the rows of one ground truth (rows both
    scored with a value; at least 3), with its p-value."""
    out = []
    ok = table[table["value"].notna()]
    for gt, sub in ok.groupby("ground_truth", sort=True):
        values = {m: {_label(r): r["value"] for _, r in s.iterrows()} for m, s in sub.groupby("metric", sort=True)}
        for a, b in combinations(sorted(values), 2):
            common = sorted(set(values[a]) & set(values[b]), key=str)
            if len(common) < 3:
                continue
            tau, p = kendalltau([values[a][k] for k in common], [values[b][k] for k in common])
            out.append({"ground_truth": gt, "metric_a": a, "metric_b": b, "rows": len(common),
                        "kendall_tau": float(tau), "p_value": float(p)})
    return pd.DataFrame(out, columns=AGREEMENT_COLUMNS)


def render_metric_tables(table: pd.DataFrame, agree: pd.DataFrame) -> str:
    """The markdown section of the per-metric tables ('' when no record has a metric besides the
    LDS, which the main tables show)."""
    if table.empty or set(table["metric"]) <= {"lds"}:
        return ""
    parts = ["## Metrics", "",
             "One table per metric and ground truth: value with its 95% bootstrap interval, ceiling "
             "(the value noise-free outcomes would allow, where the metric has one) and value / ceiling. "
             "lds: mean Spearman over queries of predicted vs retrained subset outcomes; loo: mean "
             "Pearson over queries of -scores vs the change when a sampled example is left out "
             "(spearman: the Spearman version); mislabel_auc: ROC AUC of |self-influence| for finding "
             "flipped training labels (0.5 = chance).", ""]
    for (metric, gt, outcomes), sub in table.groupby(["metric", "ground_truth", "outcomes"], sort=True):
        head = f"**{metric}** on {gt}" + (f" (outcomes {outcomes})" if outcomes else "")
        shown = sub.drop(columns=["metric", "ground_truth", "outcomes", "task"])
        shown = shown.drop(columns=[c for c in ("setting", "sweep", "spearman", "ceiling", "normalized", "message")
                                    if (shown[c].isna() | (shown[c] == "")).all()])
        if (shown["status"] == "ok").all():
            shown = shown.drop(columns="status")
        shown = shown.astype(object).where(shown.notna(), None)
        parts += [head, "", shown.to_markdown(index=False, floatfmt=".4g", missingval=""), ""]
    if not agree.empty:
        parts += ["Rank agreement between metrics: Kendall's tau over the rows both metrics scored on "
                  "the same ground truth (1: the same order), with its p-value", "",
                  agree.to_markdown(index=False, floatfmt=".3g"), ""]
    return "\n".join(parts)


def _units(name: str, rec: RunRecord, entry: MetricEntry):
    """The per-unit values of a record's metric entry: ('query', values) or ('example', (suspicion,
    flipped)); None when the record does not carry them."""
    per_query = rec.lds_per_query if name == "lds" else entry.per_query
    if per_query:
        return "query", np.array([np.nan if v is None else v for v in per_query], float)
    if entry.suspicion and entry.flipped_idx is not None:
        labels = np.zeros(len(entry.suspicion), bool)
        labels[entry.flipped_idx] = True
        return "example", (np.asarray(entry.suspicion, float), labels)
    return None


def auc(labels: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` against bool ``labels`` (ties count one half): the Mann-Whitney
    statistic from average ranks."""
    ranks = rankdata(score)
    pos = int(labels.sum())
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))


def paired_auc(a: np.ndarray, b: np.ndarray, labels: np.ndarray, name_a: str, name_b: str,
               n_boot: int = 2000, seed: int = 0) -> Paired:
    """AUC of suspicion ``a`` minus that of ``b`` against the same bool ``labels``, with a paired
    bootstrap over examples (interval and two-sided p)."""
    rng = np.random.default_rng(seed)
    diff = auc(labels, a) - auc(labels, b)
    n, draws = len(labels), []
    while len(draws) < n_boot:
        idx = rng.integers(0, n, size=n)
        if labels[idx].any() and not labels[idx].all():
            draws.append(auc(labels[idx], a[idx]) - auc(labels[idx], b[idx]))
    draws = np.asarray(draws)
    lo, hi = np.quantile(draws, [0.025, 0.975])
    p = 1.0 if np.allclose(draws, 0) else min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean()))
    return Paired(name_a, name_b, diff, (float(lo), float(hi)), float(p), n)


def pairwise_metrics(chosen: dict) -> pd.DataFrame:
    """Paired tests of every metric (see the module docstring) among the shown ok records of
    ``chosen`` (:func:`harness.read.leaderboard.chosen_records`)."""
    groups: dict[tuple, dict[str, tuple]] = {}
    for key, (rec, _) in chosen.items():
        if not rec.is_ok:
            continue
        entries = rec.metric_entries
        if rec.lds_per_query:
            entries.setdefault("lds", MetricEntry(value=rec.lds))
        for name, entry in entries.items():
            units = _units(name, rec, entry) if entry.is_ok else None
            if units is not None and entry.value is not None:
                group = (name, key.ground_truth, entry.outcomes_key or "")
                groups.setdefault(group, {})[row_label(key)] = (entry.value, *units)
    rows = []
    for (name, gt, outcomes), rows_of in sorted(groups.items()):
        labels = sorted(rows_of, key=lambda k: -rows_of[k][0])
        pairs = []
        for a, b in combinations(labels, 2):
            (_, kind_a, ua), (_, kind_b, ub) = rows_of[a], rows_of[b]
            if kind_a != kind_b:
                continue
            if kind_a == "query" and len(ua) == len(ub):
                pairs.append((paired_comparison(ua, ub, a, b), "paired bootstrap + Wilcoxon over queries"))
            elif kind_a == "example" and len(ua[0]) == len(ub[0]) and np.array_equal(ua[1], ub[1]):
                pairs.append((paired_auc(ua[0], ub[0], ua[1], a, b), "paired bootstrap over examples"))
        for (p, test), adjusted in zip(pairs, holm([p.p_value for p, _ in pairs])):
            rows.append({"metric": name, "ground_truth": gt, "outcomes": outcomes, "method_a": p.a,
                         "method_b": p.b, "mean_diff": p.mean_diff, "ci_low": p.ci[0], "ci_high": p.ci[1],
                         "p_value": p.p_value, "p_holm": adjusted, "n": p.n, "test": test,
                         "significant": adjusted < 0.05})
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS)
