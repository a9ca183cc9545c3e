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
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd
from scipy.stats import kendalltau

from tdabench.harness.read.record import RunRecord

COLUMNS = ["metric", "ground_truth", "outcomes", "task", "method", "setting", "sweep", "status", "value",
           "ci_low", "ci_high", "ceiling", "normalized", "spearman", "message"]
AGREEMENT_COLUMNS = ["ground_truth", "metric_a", "metric_b", "rows", "kendall_tau", "p_value"]


def _row(key: tuple, name: str, entry: dict) -> dict:
    ci = entry.get("ci") or [None, None]
    value, ceiling = entry.get("value"), entry.get("ceiling")
    return {"metric": name, "ground_truth": key.ground_truth, "outcomes": entry.get("outcomes_key") or "",
            "task": key.task, "method": key.method, "setting": key.setting, "sweep": key.sweep,
            "status": entry.get("status", "ok"), "value": value, "ci_low": ci[0], "ci_high": ci[1],
            "ceiling": ceiling, "normalized": value / ceiling if value is not None and ceiling else None,
            "spearman": entry.get("spearman"), "message": entry.get("message") or ""}


def metric_table(chosen: dict[tuple, tuple[RunRecord, list[RunRecord]]]) -> pd.DataFrame:
    """One row per (leaderboard row, metric) of every shown record that carries ``metrics``,
    sorted by metric, ground truth and value (best first, rows without a value last)."""
    rows = [_row(key, name, entry) for key, (rec, _) in chosen.items() if rec.is_ok
            for name, entry in (rec.metrics or {}).items()]
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
