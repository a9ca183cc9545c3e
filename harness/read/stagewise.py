"""The stagewise LDS as a leaderboard table: LDS against training step, per method.

From the shown record of each leaderboard row that carries ``metrics.lds_stagewise``: one row per
(ground truth, task, method, setting, sweep, snapshot) with the reference run's step, the LDS and
its interval (``stagewise.csv``), and in leaderboard.md one table per ground truth with a column
per step; ``plots/stagewise_<ground truth>.png`` draws the same.
"""

from __future__ import annotations

import re

import pandas as pd

from tdabench.harness.read.record import RunRecord

COLUMNS = ["ground_truth", "task", "method", "setting", "sweep", "snapshot", "step", "lds", "ci_low", "ci_high"]


def stagewise_table(chosen: dict[tuple, tuple[RunRecord, list[RunRecord]]]) -> pd.DataFrame:
    rows = []
    for key, (rec, _) in chosen.items():
        entry = rec.metric_entries.get("lds_stagewise")
        for s in (entry.snapshots if entry else None) or []:
            ci = s.get("ci") or [None, None]
            rows.append({"ground_truth": key.ground_truth, "task": key.task, "method": key.method,
                         "setting": key.setting, "sweep": key.sweep, "snapshot": s.get("snapshot"),
                         "step": s.get("step"), "lds": s.get("lds"), "ci_low": ci[0], "ci_high": ci[1]})
    return pd.DataFrame(rows, columns=COLUMNS)


def render_stagewise(table: pd.DataFrame) -> list[str]:
    """One markdown table per task: a row per method and setting, the LDS at each step."""
    if table.empty:
        return []
    parts = []
    for (gt, task), sub in table.groupby(["ground_truth", "task"], sort=True):
        wide = sub.pivot_table(index=["method", "setting", "sweep"], columns="step", values="lds",
                               aggfunc="first")
        wide.columns = [f"step {c}" for c in wide.columns]
        if not sub["sweep"].astype(bool).any():
            wide = wide.droplevel("sweep")
        parts += [f"## LDS along training ({task}, ground truth {gt})", "",
                  "metric lds_stagewise: each method fitted at the reference run's snapshot and scored "
                  "against retraining stopped at the same point of training", "",
                  wide.reset_index().to_markdown(index=False, floatfmt=".3f"), ""]
    return parts


def plot_stagewise_table(table: pd.DataFrame, out, save) -> list:
    """``stagewise_<task>.png``: per task, each method's LDS (with its 95% interval) against the
    training step it was fitted and scored at; ``save(fig, path)`` writes a figure."""
    import matplotlib.pyplot as plt

    paths = []
    for (gt, task), sub in table.groupby(["ground_truth", "task"], sort=True):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        keys = sub[["method", "setting", "sweep"]].fillna("")  # a run of no sweep is a line too
        for (method, setting_, sweep), line in sub.groupby([keys[k] for k in keys], sort=True):
            line = line.sort_values("step")
            label = method + (f" [{setting_}]" if setting_ else "") + (f" @{sweep}" if sweep else "")
            ax.plot(line["step"], line["lds"], marker="o", label=label)
            if line["ci_low"].notna().all():
                ax.fill_between(line["step"], line["ci_low"].astype(float), line["ci_high"].astype(float), alpha=0.15)
        ax.axhline(0, c="k", lw=0.5)
        ax.set(xlabel="training step of the snapshot", ylabel="LDS at the snapshot",
               title=f"LDS along training ({task})\nground truth {gt}")
        ax.legend(fontsize=8)
        paths.append(save(fig, out / f"stagewise_{re.sub(r'[^A-Za-z0-9_.=-]+', '_', str(gt))[:100]}.png"))
    return paths
