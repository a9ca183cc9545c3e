"""Plots of a results folder and one self-contained ``report.html``.

Figures (each also a PNG in ``RESULTS_DIR/plots/``): LDS with 95% intervals per method (the
task's LDS ceiling as a line), LDS against compute (fit + score seconds, and model trainings, as
in TRAK's main figure), LDS against n_train when a sweep varies it, time and peak memory against
parameter count on log-log axes when a sweep varies model size, and the BIF's SGLD loss traces.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tdabench.harness.leaderboard import build, chosen_records, fit_from_cache, run_cost, task_summaries  # noqa: E402
from tdabench.harness.results import read_records  # noqa: E402


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lds(records: list[dict], out: Path) -> list[Path]:
    chosen = chosen_records(records)
    ceilings = task_summaries(records)
    paths = []
    for task in sorted({t for t, _ in chosen}):
        recs = sorted((r for (t, _), (r, _) in chosen.items()
                       if t == task and r.get("status") == "ok" and r.get("lds") is not None),
                      key=lambda r: r["lds"])
        if not recs:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(recs) + 1.5))
        y = np.arange(len(recs))
        lds = np.array([r["lds"] for r in recs])
        ci = np.array([r["lds_ci"] for r in recs])
        ax.errorbar(lds, y, xerr=[lds - ci[:, 0], ci[:, 1] - lds], fmt="o", capsize=3)
        ax.set_yticks(y, [r["method"] for r in recs])
        ceiling = ceilings.get(task, {}).get("lds_ceiling")
        if ceiling:
            ax.axvline(ceiling, ls="--", c="gray", label=f"ceiling {ceiling:.2f}")
            ax.legend(loc="lower right")
        ax.axvline(0, c="k", lw=0.5)
        ax.set_xlabel("LDS (95% interval)")
        ax.set_title(f"{task}: LDS by method")
        paths.append(_save(fig, out / f"lds_{task}.png"))
    return paths


def plot_cost(records: list[dict], out: Path) -> list[Path]:
    chosen = chosen_records(records)
    paths = []
    for task in sorted({t for t, _ in chosen}):
        recs = [r for (t, _), (r, _) in chosen.items()
                if t == task and r.get("status") == "ok" and r.get("lds") is not None]
        if len(recs) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, key, label in ((axes[0], "seconds", "fit + score seconds (log)"),
                               (axes[1], "trainings", "model trainings consumed")):
            for r in recs:
                x = run_cost(r)["total_s"] if key == "seconds" else r.get("trainings") or 0
                ax.scatter(x, r["lds"])
                ax.annotate(r["method"], (x, r["lds"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
            if key == "seconds":
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("LDS")
        fig.suptitle(f"{task}: LDS against compute")
        paths.append(_save(fig, out / f"cost_{task}.png"))
    return paths


def _by(records, key):
    rows = []
    for r in records:
        if r.get(key) is not None:
            cost = run_cost(r)
            rows.append({"task": r["task"], "method": r["method"], "x": r.get(key), "lds": r.get("lds"),
                         "time": cost["total_s"], "mem": cost["peak_mem_mb"]})
    return pd.DataFrame(rows)


def plot_n_train(records: list[dict], out: Path) -> list[Path]:
    df = _by(_ok(records), "n_train")
    paths = []
    for task, sub in (df.groupby("task") if not df.empty else []):
        if sub["x"].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for method, m in sub.groupby("method"):
            m = m.groupby("x")["lds"].last()
            ax.plot(m.index, m.values, "o-", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("n_train (log)")
        ax.set_ylabel("LDS")
        ax.set_title(f"{task}: LDS against training-set size")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"n_train_{task}.png"))
    return paths


def plot_scaling(records: list[dict], out: Path) -> list[Path]:
    rows = [r for r in _ok(records) if r.get("num_params") and r.get("time_s", {}).get("fit") is not None]
    df = _by(rows, "num_params")
    paths = []
    for task, sub in (df.groupby("task") if not df.empty else []):
        if sub["x"].nunique() < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for method, m in sub.groupby("method"):
            m = m.groupby("x")[["time", "mem"]].last()
            axes[0].plot(m.index, m["time"], "o-", label=method)
            axes[1].plot(m.index, m["mem"].clip(lower=1), "o-", label=method)
        for ax, label in ((axes[0], "fit + score seconds"), (axes[1], "peak memory above start (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("parameters")
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        failed = sorted({(r["method"], r.get("num_params")) for r in records
                         if r["task"] == task and r.get("status") in ("timeout", "oom")}, key=str)
        note = ("; not finished: " + ", ".join(f"{m} at {p / 1e6:.0f}M" for m, p in failed)) if failed else ""
        cached = sorted({(r["method"], r["num_params"]) for r in rows
                         if r["task"] == task and fit_from_cache(r)}, key=str)
        if cached:  # a cache hit times a file read, not the fit
            note += "; fit read from cache: " + ", ".join(f"{m} at {p / 1e6:.0f}M" for m, p in cached)
        fig.suptitle(f"{task}: cost against model size (log-log){note}", fontsize=10)
        paths.append(_save(fig, out / f"scaling_{task}.png"))
    return paths


def plot_traces(records: list[dict], out: Path) -> list[Path]:
    paths = []
    for r in _ok(records):
        trace = (r.get("diagnostics") or {}).get("loss_trace")
        if not trace:
            continue
        trace = np.atleast_2d(np.asarray(trace, dtype=float))
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for c, chain in enumerate(trace):
            ax.plot(chain, lw=0.8, label=f"chain {c}")
        ax.set_xlabel("SGLD step")
        ax.set_ylabel("minibatch training loss")
        ax.set_title(f"{r['task']} / {r['method']}: SGLD loss traces")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out / f"traces_{r['task']}_{r['method']}.png"))
    return paths


def make_plots(records: list[dict], out: Path) -> list[Path]:
    return (plot_lds(records, out) + plot_cost(records, out) + plot_n_train(records, out)
            + plot_scaling(records, out) + plot_traces(records, out))


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def write_report(results_dir: str | Path) -> Path:
    """Write ``plots/*.png`` and ``report.html`` for ``results_dir``; returns the report path."""
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    df, pairs, tasks = build(records)
    plots = make_plots(records, results_dir / "plots")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}figure{margin:1em 0}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tdabench report</title>"
             f"<style>{style}</style></head><body><h1>tdabench report</h1>",
             f"<p>{len(records)} runs in {html.escape(str(results_dir))}. LDS: mean Spearman over "
             "queries with 95% bootstrap interval; normalized_lds = LDS / ceiling; ≈ = tied with "
             "the best (paired Wilcoxon, p &ge; 0.05).</p>"]
    for task, info in tasks.items():
        if info.get("lds_ceiling") is not None:
            parts.append(f"<p><b>{html.escape(task)}</b>: LDS ceiling {info['lds_ceiling']:.3f} "
                         f"(ground-truth reliability {info['gt_reliability']:.3f}).</p>")
    shown = df.drop(columns=["status"] if (df["status"] == "ok").all() else [])
    shown = shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v))
    parts += ["<h2>Leaderboard</h2>", "<div style='overflow-x:auto'>",
              shown.replace("nan", "").to_html(index=False), "</div>"]
    if not pairs.empty:
        parts += ["<h2>Pairwise comparisons</h2>",
                  "<p>Row minus column: mean per-query LDS difference; * marks p &lt; 0.05 (paired "
                  "Wilcoxon signed-rank test). Intervals and p-values are in pairwise.csv.</p>"]
        for task, sub in pairs.groupby("task"):
            cells = sub.assign(cell=[f"{d:+.3f}{'*' if sig else ''}" for d, sig in
                                     zip(sub["mean_diff"], sub["significant"])])
            order = list(dict.fromkeys([*sub["method_a"], *sub["method_b"]]))
            matrix = cells.pivot(index="method_a", columns="method_b", values="cell")
            matrix = matrix.reindex(index=order[:-1], columns=order[1:]).fillna("")
            parts += [f"<h3>{html.escape(task)}</h3>", matrix.to_html()]
    parts += ["<h2>Plots</h2>"] + [_img(p) for p in plots] + ["</body></html>"]
    path = results_dir / "report.html"
    path.write_text("\n".join(parts))
    return path


def log_to_wandb(results_dir: str | Path, mode: str = "offline", project: str = "tdabench") -> str:
    """Log the leaderboard as a wandb Table and the plots as images to a summary run in the group
    of the newest record; returns the run's folder."""
    import wandb

    results_dir = Path(results_dir)
    records = read_records(results_dir)
    df, _, _ = build(records)
    group = records[-1].get("group", "leaderboard") if records else "leaderboard"
    run = wandb.init(project=project, mode=mode, group=group, name="leaderboard", job_type="leaderboard",
                     dir=str(results_dir), reinit="finish_previous")
    try:
        payload = {"leaderboard": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))}
        for p in make_plots(records, results_dir / "plots"):
            payload[f"plots/{p.stem}"] = wandb.Image(str(p))
        run.log(payload)
        return run.dir
    finally:
        run.finish()
