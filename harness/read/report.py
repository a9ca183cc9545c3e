"""Plots of one or several results folders and one self-contained ``report.html``.

Figures (each also a PNG in ``OUT/plots/``), per ground truth: LDS with 95% intervals per row
(method and setting), with the ground truth's LDS ceiling as a line, its interval as a band and
its size in the legend; LDS against compute (fit + score seconds; model trainings and FLOPs only
where they differ between rows), as in TRAK's main figure. Per task: LDS against n_train when a
sweep varies it, time and peak memory against parameter count on log-log axes when a sweep varies
model size. Per BIF row: its SGLD loss traces as the median over chains with a band from the
lowest to the highest chain. Per ground truth where a method ran at two or more settings: the
cost-quality frontier (:mod:`harness.frontier`), LDS with 95% error bars against fit + score
CPU seconds and against FLOPs (log x), one line per method, the Pareto front over every row marked and
EK-FAC's cost as a dotted line.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tdabench.harness.core.storage import atomic_write_bytes  # noqa: E402
from tdabench.harness.read.frontier import (  # noqa: E402
    PLOT_AXES,
    frontier_ground_truths,
    pareto,
    points,
    reference_point,
)
from tdabench.harness.read.frontier import table as frontier_table  # noqa: E402
from tdabench.harness.read.leaderboard import (  # noqa: E402
    RowKey,
    build,
    ceiling_text,
    chosen_records,
    ground_truths,
    observable_note,
    read_folders,
    row_keys,
    row_label,
    shown_columns,
)
from tdabench.harness.read.metric_report import matrix_html, metric_sections  # noqa: E402
from tdabench.harness.read.metric_tables import metric_table, pairwise_metrics  # noqa: E402
from tdabench.harness.read.record import RunRecord  # noqa: E402
from tdabench.harness.read.record_view import (  # noqa: E402
    engineering,
    fit_from_cache,
    row_cost,
    run_cost,
    short_hash,
)
from tdabench.harness.read.size_plot import plot_n_train  # noqa: E402
from tdabench.harness.read.stagewise import plot_stagewise_table, stagewise_table  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gt_slug(gt: str, info: dict) -> str:
    """File-name part of a ground truth: task and short hash."""
    return f"{info.get('task')}_{short_hash(info.get('gt_key'))}" if info.get("gt_key") else str(info.get("task"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text).strip("_")


def _shown_ok(chosen: dict, gt: str) -> list[tuple[tuple, RunRecord]]:
    return [(key, rec) for key, (rec, _) in chosen.items()
            if key.ground_truth == gt and rec.is_ok and rec.lds is not None]


def plot_lds(records: list[RunRecord], out: Path) -> list[Path]:
    chosen = chosen_records(records)
    gts = ground_truths(records)
    paths = []
    for gt, info in sorted(gts.items()):
        rows = sorted(_shown_ok(chosen, gt), key=lambda kr: kr[1].lds)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(rows) + 1.6))
        y = np.arange(len(rows))
        lds = np.array([r.lds for _, r in rows])
        ci = np.array([r.lds_ci or [v, v] for v, (_, r) in zip(lds, rows)], float)
        ax.barh(y, lds, xerr=[lds - ci[:, 0], ci[:, 1] - lds], capsize=3, color="tab:blue", alpha=0.75)
        ax.set_yticks(y, [row_label(k) for k, _ in rows], fontsize=8)
        if info.get("lds_ceiling"):
            lo, hi = info["lds_ceiling_ci"]
            ax.axvspan(lo, hi, color="gray", alpha=0.2)
            ax.axvline(info["lds_ceiling"], ls="--", c="gray",
                       label=f"LDS ceiling {info['lds_ceiling']:.2f} [{lo:.2f}, {hi:.2f}]\n"
                             f"({info['gt_subsets']} subsets x {info['gt_seeds']} seeds)")
            ax.legend(loc="lower right", fontsize=8)
        ax.axvline(0, c="k", lw=0.5)
        ax.set_xlabel("LDS (95% interval)")
        ax.set_title(f"LDS by method: {gt}", fontsize=10)
        paths.append(_save(fig, out / f"lds_{gt_slug(gt, info)}.png"))
    return paths


def plot_cost(records: list[RunRecord], out: Path) -> list[Path]:
    """LDS against each cost that differs between the rows of a ground truth: fit + score seconds,
    model trainings, FLOPs (fit + score), each from scratch (:func:`row_cost`). A cost every row
    shares (zero aside: the random baseline trains nothing) carries no information and has no
    panel. Rows are told apart by colour and marker and named in one legend beside the panels
    (labels beside the points would overlap); a cross marks a cost that is partly a file read."""
    chosen = chosen_records(records)
    gts = ground_truths(records)
    paths = []
    for gt, info in sorted(gts.items()):
        rows = [(key, rec, row_cost(rec, chosen[key][1])) for key, rec in _shown_ok(chosen, gt)]
        if len(rows) < 2:
            continue
        costs = {"fit + score seconds (log)": [c["total_s"] for _, _, c in rows],
                 "model trainings consumed": [r.trainings for _, r, _ in rows],
                 "FLOPs, fit + score (log)": [c["flops"] for _, _, c in rows]}
        panels = {k: v for k, v in costs.items()  # zero (the random baseline) differs trivially
                  if all(x is not None for x in v) and len({x for x in v if x}) > 1}
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(3.5 + 5 * len(panels), max(4.4, 0.22 * len(rows) + 1)),
                                 squeeze=False)
        colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
        for ax, (label, xs) in zip(axes[0], panels.items()):
            for i, ((key, r, c), x) in enumerate(zip(rows, xs)):
                ax.scatter(x, r.lds, color=colors(i % colors.N), marker="osD^v<>"[i // colors.N % 7],
                           label=row_label(key) + (" (cost partly a cache read)" if c["from_cache"] else ""))
                if c["from_cache"]:
                    ax.scatter(x, r.lds, color="k", marker="x", s=60)
            if "(log)" in label and min(xs) > 0:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("LDS")
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(f"LDS against compute: {gt}", fontsize=10)
        paths.append(_save(fig, out / f"cost_{gt_slug(gt, info)}.png"))
    return paths


def _by(records, key):
    """One row per record with ``key`` set: task, row label without the ground truth (method,
    setting, sweep: one line per label), x = the record's ``key``, LDS, seconds and memory."""
    rows = []
    for r, (_, _, method, setting_, sweep) in zip(records, row_keys(records)):
        if getattr(r, key) is not None:
            cost = run_cost(r)
            ci = r.lds_ci or [None, None]
            rows.append({"task": r.task, "method": row_label(RowKey(None, None, method, setting_, sweep)),
                         "x": getattr(r, key), "lds": r.lds, "lds_lo": ci[0], "lds_hi": ci[1],
                         "normalized_lds": r.normalized_lds, "time": cost["total_s"],
                         "mem": cost["peak_mem_mb"], "flops": cost["flops"]})
    return pd.DataFrame(rows)


def plot_scaling(records: list[RunRecord], out: Path) -> list[Path]:
    rows = [r for r in records if r.is_ok and r.num_params and (r.time_s or {}).get("fit") is not None]
    df = _by(rows, "num_params")
    paths = []
    for task, sub in (df.groupby("task") if not df.empty else []):
        if sub["x"].nunique() < 2:
            continue
        panels = [("time", "fit + score seconds"), ("mem", "peak memory above start (MiB)")]
        if sub["flops"].notna().any():  # counted FLOPs: the machine-independent cost
            panels.append(("flops", "fit + score FLOPs"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
        for method, m in sub.groupby("method"):
            m = m.groupby("x")[[k for k, _ in panels]].last()
            for ax, (k, _) in zip(axes, panels):
                y = m[k].astype(float).dropna()
                ax.plot(y.index, y.clip(lower=1) if k == "mem" else y, "o-", label=method)
        for ax, (_, label) in zip(axes, panels):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("parameters")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        failed = sorted({(r.method, r.num_params) for r in records
                         if r.task == task and r.status in ("timeout", "oom")}, key=str)
        note = ("; not finished: " + ", ".join(f"{m} at {p / 1e6:.0f}M" for m, p in failed)) if failed else ""
        cached = sorted({(r.method, r.num_params) for r in rows
                         if r.task == task and fit_from_cache(r)}, key=str)
        if cached:  # a cache hit times a file read, not the fit
            note += "; fit read from cache: " + ", ".join(f"{m} at {p / 1e6:.0f}M" for m, p in cached)
        fig.suptitle(f"{task}: cost against model size (log-log){note}", fontsize=10)
        paths.append(_save(fig, out / f"scaling_{task}.png"))
    return paths


def plot_traces(records: list[RunRecord], out: Path) -> list[Path]:
    """Per shown row with SGLD loss traces (``diagnostics.loss_trace``, [chains, steps]): the
    median over chains and a band from the lowest to the highest chain at each step."""
    chosen = chosen_records(records)
    gts = ground_truths(records)
    paths = []
    for key, (r, _) in chosen.items():
        trace = (r.diagnostics or {}).get("loss_trace") if r.is_ok else None
        if not trace:
            continue
        trace = np.atleast_2d(np.asarray(trace, dtype=float))
        steps = np.arange(trace.shape[1])
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        ax.fill_between(steps, np.nanmin(trace, 0), np.nanmax(trace, 0), alpha=0.3,
                        label=f"lowest to highest of {len(trace)} chains")
        ax.plot(steps, np.nanmedian(trace, 0), lw=1, label="median over chains")
        ax.set_xlabel("SGLD step")
        ax.set_ylabel("minibatch training loss")
        ax.set_title(f"SGLD loss traces: {row_label(key)}\n{key.ground_truth}", fontsize=9)
        ax.legend(fontsize=7)
        name = _slug(f"traces_{gt_slug(key.ground_truth, gts.get(key.ground_truth, {}))}_{row_label(key)}")
        paths.append(_save(fig, out / f"{name}.png"))
    return paths


AXIS_LABELS = {"cpu_s": "fit + score CPU seconds (log)", "flops": "FLOPs, fit + score (log)"}


def plot_frontier(records: list[RunRecord], out: Path) -> list[Path]:
    """Per ground truth where some method ran at two or more settings: LDS (95% error bars)
    against cost, one panel per axis the rows measure (CPU seconds, FLOPs; never wall seconds), one line per
    method through its settings, the Pareto front over every row (the highest LDS at no more
    cost) as a dashed step line with ringed points, and EK-FAC's cost as a dotted line."""
    pts = points(records)
    gts = ground_truths(records)
    paths = []
    for gt in frontier_ground_truths(pts):
        lines = pts[gt]
        axes_shown = [a for a in PLOT_AXES if sum(p.cost(a) is not None for line in lines.values() for p in line) >= 2]
        if not axes_shown:
            continue
        ref, _ = reference_point(lines)
        fig, axes = plt.subplots(1, len(axes_shown), figsize=(1.5 + 6 * len(axes_shown), 4.6), squeeze=False)
        for ax, axis in zip(axes[0], axes_shown):
            for name, line in sorted(lines.items()):
                line = sorted((p for p in line if p.cost(axis) is not None), key=lambda p: p.cost(axis))
                if not line:
                    continue
                x = [p.cost(axis) for p in line]
                y = np.array([p.lds for p in line])
                err = [y - np.array([p.low for p in line]), np.array([p.high for p in line]) - y]
                bar = ax.errorbar(x, y, yerr=err, fmt="o-", ms=4, capsize=3, lw=1.2, label=name)
                cached = [(p.cost(axis), p.lds) for p in line if p.cached_fit]
                if cached:  # work cached before costs were kept: its cost is partly a file read
                    ax.scatter(*zip(*cached), marker="x", s=60, color=bar[0].get_color(),
                               label=f"{name}: cost partly a read of cached work")
            front = pareto([p for line in lines.values() for p in line], axis)
            if front:
                fx = [p.cost(axis) for p in front] + [max(p.cost(axis) for line in lines.values() for p in line
                                                          if p.cost(axis) is not None)]
                fy = [p.lds for p in front] + [front[-1].lds]
                ax.step(fx, fy, where="post", ls="--", c="k", lw=1, label="Pareto front (max LDS at <= cost)")
                ax.scatter(fx[:-1], fy[:-1], s=90, facecolors="none", edgecolors="k", lw=1)
            if ref is not None and ref.cost(axis) is not None:
                ax.axvline(ref.cost(axis), ls=":", c="gray", lw=1, label="EK-FAC's cost")
            ax.set_xscale("log")
            ax.set_xlabel(AXIS_LABELS[axis])
            ax.set_ylabel("LDS (95% interval)")
            ax.legend(fontsize=7)
        fig.suptitle(f"Cost-quality frontier: {gt}", fontsize=10)
        paths.append(_save(fig, out / f"frontier_{gt_slug(gt, gts.get(gt, {}))}.png"))
    return paths


def make_plots(records: list[RunRecord], out: Path) -> list[Path]:
    return (plot_lds(records, out) + plot_cost(records, out) + plot_frontier(records, out)
            + plot_n_train(records, out, _save) + plot_scaling(records, out) + plot_traces(records, out)
            + plot_stagewise_table(stagewise_table(chosen_records(records)), out, _save))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def _dirs(results_dirs) -> list[Path]:
    return [Path(d) for d in ([results_dirs] if isinstance(results_dirs, (str, Path)) else results_dirs)]


def _heading_breaks(name: str) -> str:
    """A column name that may wrap after its underscores (narrow tables that fit the page)."""
    return html.escape(str(name)).replace("_", "_<wbr>")


#: frontier.csv columns shown in report.html
FRONTIER_SHOWN = ["ground_truth", "method", "settings", "best_lds", "pareto", "lds_at_ekfac_cpu_s",
                  "lds_at_ekfac_cpu_s_note", "lds_90pct", "cpu_s_to_90pct", "cpu_s_to_90pct_note"]


def write_report(results_dirs, out: str | Path | None = None) -> Path:
    """Write ``plots/*.png`` and ``report.html`` for the records of ``results_dirs`` (one folder or
    several) into ``out`` (default: the first folder); returns the report path."""
    dirs = _dirs(results_dirs)
    out = Path(out) if out is not None else dirs[0]
    records = read_folders(dirs)
    df, pairs, gts = build(records)
    plots = make_plots(records, out / "plots")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:12px;max-width:100%}"
             "td,th{border:1px solid #ccc;padding:2px 4px}th{font-weight:600;vertical-align:bottom}"
             "td{white-space:nowrap}.scroll{overflow-x:auto}"
             "img{max-width:100%}figure{margin:1em 0}")
    where = ", ".join(html.escape(str(d)) for d in dirs)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tdabench report</title>"
             f"<style>{style}</style></head><body><h1>tdabench report</h1>",
             f"<p>{len(records)} runs in {where}. One table per ground truth; a row is a method at "
             "one setting (parameters that differ from its defaults). LDS: mean Spearman over "
             "queries with 95% bootstrap interval; normalized_lds = LDS / ceiling; ≈ = tied with "
             "the best (paired Wilcoxon, Holm-adjusted p &ge; 0.05).</p>", "<h2>Leaderboard</h2>"]
    for gt, sub in df.groupby("ground_truth", sort=True):
        shown = shown_columns(sub, ["ground_truth", "task", "lds_ci_low", "lds_ci_high"])
        if "flops" in shown:
            shown = shown.assign(flops=shown["flops"].map(engineering))
        shown = shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v))
        shown = shown.replace("nan", "")
        if "overloaded" in shown:
            shown["overloaded"] = shown["overloaded"].map(lambda v: "⚠" if v is True else "")
        table = shown.to_html(index=False, escape=True)
        for col in shown.columns:
            table = table.replace(f"<th>{html.escape(col)}</th>", f"<th>{_heading_breaks(col)}</th>", 1)
        text = ceiling_text(gts.get(gt, {}))
        note = observable_note(gts.get(gt, {}).get("task"))  # what a language model's LDS judges
        parts += [f"<h3>{html.escape(gt)}</h3>", f"<p>{html.escape(text)}</p>" if text else "",
                  f"<p>{html.escape(note)}</p>" if note else "", f"<div class='scroll'>{table}</div>"]
    if not pairs.empty:
        parts += ["<h2>Pairwise comparisons</h2>",
                  "<p>Row minus column: mean per-query LDS difference with its paired bootstrap 95% "
                  "interval below; * marks a Holm-adjusted p &lt; 0.05 (paired Wilcoxon signed-rank "
                  "test, adjusted over every pair of the ground truth); hover a cell for the p-values. "
                  "All are in pairwise.csv.</p>"]
        for gt, sub in pairs.groupby("ground_truth"):
            parts += [f"<h3>{html.escape(gt)}</h3>", f"<div class='scroll'>{matrix_html(sub)}</div>"]
    chosen = chosen_records(records)
    parts += metric_sections(metric_table(chosen), pairwise_metrics(chosen), out / "plots", _save, _slug, _img)
    frontier = frontier_table(records)
    if not frontier.empty:
        shown = frontier[FRONTIER_SHOWN].map(
            lambda v: "" if v is None or v != v else f"{v:.4g}" if isinstance(v, float) else v)
        parts += ["<h2>Cost-quality frontier</h2>",
                  "<p>Per method: its LDS at EK-FAC's fit + score seconds (interpolated in log-cost "
                  "between its two nearest settings; never extrapolated) and the seconds at which it "
                  "first reaches 90% of the best LDS on the ground truth. FLOPs and intervals are in "
                  "frontier.csv.</p>", f"<div class='scroll'>{shown.to_html(index=False, escape=True)}</div>"]
    parts += ["<h2>Plots</h2>"] + [_img(p) for p in plots] + ["</body></html>"]
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


#: leaderboard columns logged to wandb as numbers (identity columns are logged as strings)
WANDB_NUMERIC = ["lds", "lds_ci_low", "lds_ci_high", "normalized_lds", "lds_sd_over_seeds", "method_seeds",
                 "fit_s", "score_s", "total_s", "flops", "peak_mem_mb", "trainings", "n_train", "n_query",
                 "test_acc", "test_loss", "runs"]


def _most_common(values: list):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def leaderboard_table(sub: pd.DataFrame) -> pd.DataFrame:
    """A ground truth's leaderboard rows for a wandb Table: row label, identity strings, numeric
    columns as floats (missing values as None), and the tie mark as a bool."""
    out = pd.DataFrame({"row": [row_label((g, t, m, s or "", w if isinstance(w, str) else None))
                                for g, t, m, s, w in zip(sub["ground_truth"], sub["task"], sub["method"],
                                                         sub["setting"], sub["sweep"])],
                        "method": sub["method"], "setting": sub["setting"].fillna(""),
                        "status": sub["status"], "tied_with_best": sub["tied_with_best"] == "≈",
                        "overloaded": sub["overloaded"].map(lambda v: v is True)})
    if sub["sweep"].notna().any():
        out.insert(3, "sweep", sub["sweep"].fillna(""))
    for col in WANDB_NUMERIC:
        out[col] = pd.to_numeric(sub[col], errors="coerce").astype(float)
    out = out.astype(object)
    return out.where(out.notna(), None).reset_index(drop=True)


def log_to_wandb(results_dirs, mode: str = "offline", out: str | Path | None = None) -> list[str]:
    """Log one summary run per ground truth: a wandb Table of its leaderboard (numeric columns,
    the interval as ``lds_ci_low`` / ``lds_ci_high``), a bar chart of LDS by row, and the plots
    (the LDS plot is bars with 95% error bars), into the wandb group, project and entity its records
    name (the most common); a later call updates that run (``summary_run_id``). Returns their folders."""
    import wandb

    from tdabench.harness.read.tracking import summary_run_id

    dirs = _dirs(results_dirs)
    out = Path(out) if out is not None else dirs[0]
    records = read_folders(dirs)
    df, pairs, gts = build(records)
    chosen = chosen_records(records)
    plots = make_plots(records, out / "plots")
    run_dirs = []
    for gt, sub in df.groupby("ground_truth", sort=True):
        info = gts.get(gt, {})
        recs = [rec for key, (_, rs) in chosen.items() if key.ground_truth == gt for rec in rs]
        wandb_cfgs = [(r.config or {}).get("wandb") or {} for r in recs]
        groups = sorted({r.group for r in recs if r.group})
        slug = gt_slug(gt, info)
        logged = [r for r in recs if ((r.config or {}).get("wandb") or {}).get("artifacts")]
        artifacts = {"ground_truth": f"gt-{info.get('gt_key')}" if logged else None,
                     "scores": [f"scores-{r.run_id}" for r in logged]}
        run = wandb.init(project=_most_common([w.get("project") for w in wandb_cfgs]) or "tdabench",
                         entity=_most_common([w.get("entity") for w in wandb_cfgs]), mode=mode,
                         group=_most_common([r.group for r in recs]) or "leaderboard",
                         name=f"leaderboard {gt}", job_type="leaderboard", dir=str(out), resume="allow",
                         id=summary_run_id(out, gt, groups), reinit="finish_previous",
                         config={"ground_truth": gt, "gt_key": info.get("gt_key"), "task": info.get("task"),
                                 "groups": groups, "results_dirs": [str(d) for d in dirs], "artifacts": artifacts})
        try:
            table = wandb.Table(dataframe=leaderboard_table(sub))
            payload = {"leaderboard": table,
                       "lds_by_method": wandb.plot.bar(table, "row", "lds", title=f"LDS by method: {gt}")}
            if not pairs.empty and (pairs["ground_truth"] == gt).any():
                payload["pairwise"] = wandb.Table(dataframe=pairs[pairs["ground_truth"] == gt].reset_index(drop=True))
            for p in plots:
                if slug in p.stem:
                    payload[f"plots/{p.stem}"] = wandb.Image(str(p))
            run.log(payload)
            for name in filter(None, [artifacts["ground_truth"], *artifacts["scores"]]) if mode == "online" else []:
                try:  # the lineage link; an artifact not uploaded yet (wandb sync) stays named in the config
                    run.use_artifact(f"{name}:latest")
                except Exception as exc:  # noqa: BLE001
                    log.warning(f"wandb: artifact {name} is not available ({type(exc).__name__}); named in the config")
            for k in ("lds_ceiling", "gt_reliability", "gt_subsets", "gt_seeds"):
                run.summary[k] = info.get(k)
            run_dirs.append(run.dir)
        finally:
            run.finish()
    wandb.teardown()  # wait until the runs' files are written, so they can be read back at once
    return run_dirs
