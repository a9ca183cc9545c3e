"""The report's section of every metric besides the LDS, and the pairwise matrices.

One section per metric a record carries besides the LDS (the leaderboard is the LDS's): its table
(value with 95% interval, ceiling and value / ceiling where it has one), a plot of the values with
their intervals, and its pairwise matrix from ``pairwise_metrics.csv``
(:func:`harness.read.metric_tables.pairwise_metrics`). Every matrix (the LDS's too) shows each
difference with its interval, and holds the p-values in the cell's tooltip.
"""

from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tdabench.harness.read.record_view import row_label  # noqa: E402

#: a metric's name in headings
TITLES = {"lds": "LDS", "loo": "leave-one-out correlation (loo)",
          "mislabel_auc": "mislabel detection AUC (mislabel_auc)"}


def matrix_html(pairs: pd.DataFrame) -> str:
    """The pairwise matrix of one family (rows of ``pairwise.csv`` or ``pairwise_metrics.csv``): row
    minus column, * where p_holm < 0.05, the 95% interval under it and every number in the cell's
    tooltip."""
    order = list(dict.fromkeys([*pairs["method_a"], *pairs["method_b"]]))
    cells = {(r.method_a, r.method_b): r for r in pairs.itertuples()}
    head = "".join(f"<th>{html.escape(b)}</th>" for b in order[1:])
    body = []
    for a in order[:-1]:
        tds = []
        for b in order[1:]:
            r = cells.get((a, b))
            if r is None:
                tds.append("<td></td>")
                continue
            tip = (f"{a} minus {b}: {r.mean_diff:+.4f}, 95% interval [{r.ci_low:+.4f}, {r.ci_high:+.4f}], "
                   f"p = {r.p_value:.3g}, Holm-adjusted p = {r.p_holm:.3g}")
            tds.append(f"<td title='{html.escape(tip, quote=True)}'>{r.mean_diff:+.3f}{'*' if r.significant else ''}"
                       f"<br><small>[{r.ci_low:+.3f}, {r.ci_high:+.3f}] p<sub>Holm</sub> {r.p_holm:.2g}</small></td>")
        body.append(f"<tr><th>{html.escape(a)}</th>{''.join(tds)}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def plot_metric(sub: pd.DataFrame, title: str, path, save) -> object:
    """Bars of one metric's values with their 95% intervals, one per row of ``sub`` (rows of
    ``leaderboard_metrics.csv`` with a value), the ceiling as a dashed line where there is one."""
    sub = sub[sub["value"].notna()].sort_values("value")
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(sub) + 1.6))
    y = np.arange(len(sub))
    value = sub["value"].to_numpy(float)
    low, high = sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float)
    ax.barh(y, value, xerr=[value - low, high - value], capsize=3, color="tab:green", alpha=0.75)
    names = [row_label((None, None, m, s or "", w if isinstance(w, str) else None))
             for m, s, w in zip(sub["method"], sub["setting"], sub["sweep"])]
    ax.set_yticks(y, names, fontsize=8)
    ceilings = sub["ceiling"].dropna()
    if len(ceilings):
        ax.axvline(float(ceilings.iloc[0]), ls="--", c="gray", label=f"ceiling {float(ceilings.iloc[0]):.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0.5 if sub["metric"].iloc[0] == "mislabel_auc" else 0, c="k", lw=0.5)
    ax.set_xlabel(f"{sub['metric'].iloc[0]} (95% interval)")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def metric_sections(table: pd.DataFrame, pairs: pd.DataFrame, out, save, slug, img) -> list[str]:
    """The report's HTML of every metric but the LDS in ``table`` (``leaderboard_metrics.csv``):
    a heading per metric, then per ground truth its table, plot and pairwise matrix (``pairs``:
    ``pairwise_metrics.csv``). ``save(fig, path)`` writes a figure and returns its path,
    ``slug(text)`` makes a file name, ``img(path)`` embeds a PNG."""
    parts = []
    for metric, of_metric in table[table["metric"] != "lds"].groupby("metric", sort=True):
        parts.append(f"<h2>Metric: {html.escape(TITLES.get(metric, metric))}</h2>")
        for (gt, outcomes), sub in of_metric.groupby(["ground_truth", "outcomes"], sort=True):
            head = gt + (f" (outcomes {outcomes})" if outcomes else "")
            shown = sub[["method", "setting", "sweep", "status", "value", "ci_low", "ci_high", "ceiling",
                         "normalized", "message"]]
            shown = shown.drop(columns=[c for c in ("setting", "sweep", "ceiling", "normalized", "message")
                                        if (shown[c].isna() | (shown[c] == "")).all()])
            parts += [f"<h3>{html.escape(metric)}: {html.escape(head)}</h3>",
                      f"<div class='scroll'>{shown.map(_cell).to_html(index=False, escape=True)}</div>"]
            if sub["value"].notna().any():
                parts.append(img(plot_metric(sub, f"{metric}: {head}", out / f"{slug(f'{metric}_{head}')}.png",
                                             save)))
            family = pairs[(pairs["metric"] == metric) & (pairs["ground_truth"] == gt)
                           & (pairs["outcomes"].fillna("") == outcomes)]
            if not family.empty:
                parts += [f"<p>Pairwise ({html.escape(family['test'].iloc[0])}; Holm within {html.escape(metric)} "
                          "on this ground truth): row minus column, * where p<sub>Holm</sub> &lt; 0.05, 95% "
                          "interval below; hover a cell for the p-values. All are in pairwise_metrics.csv.</p>",
                          f"<div class='scroll'>{matrix_html(family)}</div>"]
    return parts
