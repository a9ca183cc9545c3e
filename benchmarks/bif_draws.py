"""LDS of the BIF against the number of draws and the seconds spent, for a few SGLD settings.

    .venv/bin/python benchmarks/bif_draws.py [--task digits_mlp] [--max-draws 800]
        [--setting NAME=key=value,key=value ...] [--out results/reference]

Each setting runs the native ``bif`` once with ``--max-draws`` draws per chain; after selected
draw counts the scores of the draws so far are scored against the task's default ground truth
(the time spent on those intermediate scores is not counted). When ``ekfac`` is registered its
LDS on the same ground truth is the reference line, and the script reports the draws and seconds
at which each setting first reaches it. Writes ``bif_draws_<task>.csv``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.run import prepare
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import lds

ROOT = Path(__file__).resolve().parents[1]

#: name -> method overrides; the task's own defaults apply to everything not named
SETTINGS = {
    "default": {},
    "chains=4": {"chains": 4},
    "eps=1e-4": {"eps": 1e-4},
    "gamma=30": {"gamma": 30.0},
    "correlation": {"normalize": "correlation"},
}


def checkpoints(max_draws: int) -> list[int]:
    marks = [d for d in (10, 25, 50, 100, 200, 400, 800, 1600, 3200) if d < max_draws]
    return marks + [max_draws]


def trace_setting(task_name: str, name: str, overrides: dict, max_draws: int, log) -> list[dict]:
    cfg = pairing_config(task_name, "bif", {**overrides, "draws": max_draws, "parallel_chains": None})
    task, method = prepare(cfg)
    gt = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log).build()
    model = task.checkpoint()
    marks = set(checkpoints(max_draws))
    rows, excluded = [], 0.0
    start = time.perf_counter()

    def on_draw(d: int) -> None:
        nonlocal excluded
        if d not in marks:
            return
        t0 = time.perf_counter()
        res = lds(method.score(task, model), gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"])
        rows.append({"setting": name, "draws": d, "total_draws": d * method.chains,
                     "seconds": round(t0 - start - excluded, 2), "lds": round(res.lds, 4),
                     "ci_lo": round(res.ci[0], 4), "ci_hi": round(res.ci[1], 4)})
        log(f"{name}: {d} draws/chain, {rows[-1]['seconds']} s, LDS {res.lds:.4f}")
        excluded += time.perf_counter() - t0

    method.fit(task, model, on_draw=on_draw)
    return rows, method.diagnostics


def reference_lds(task_name: str, method_name: str, log) -> float | None:
    if method_name not in METHODS.names():
        return None
    cfg = pairing_config(task_name, method_name, {})
    task, method = prepare(cfg)
    gt = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log).build()
    model = task.checkpoint()
    method.fit(task, model)
    return lds(method.score(task, model), gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"]).lds


def plot(rows: list[dict], ref: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for name in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == name]
        axes[0].plot([r["total_draws"] for r in rs], [r["lds"] for r in rs], marker="o", label=name)
        axes[1].plot([r["seconds"] for r in rs], [r["lds"] for r in rs], marker="o", label=name)
    for ax, xlabel in zip(axes, ("draws (all chains)", "seconds (SGLD + draws)")):
        for i, (m, v) in enumerate(ref.items()):
            ax.axhline(v, color="k", ls=("--", ":", "-.")[i % 3], lw=1, label=f"{m} ({v:.3f})")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LDS")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_traces(traces: dict[str, dict], path: Path, task: str) -> None:
    """Full training loss at every draw, per chain, for each setting (the sampler's health)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traces), figsize=(3.2 * len(traces), 3), sharey=True, squeeze=False)
    for ax, (name, diag) in zip(axes[0], traces.items()):
        for c, trace in enumerate(diag["draw_loss_trace"]):
            ax.plot(trace, lw=0.8, label=f"chain {c}")
        ax.axhline(sum(diag["loss_start"]) / len(diag["loss_start"]), color="k", ls=":", lw=1, label="w*")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("draw")
    axes[0][0].set_ylabel("mean training loss")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"BIF SGLD chains on {task}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--max-draws", type=int, default=800)
    ap.add_argument("--setting", action="append", default=[],
                    help="NAME=key=value,key=value (repeatable; NAME without '='); default: the built-in settings")
    ap.add_argument("--out", default=str(ROOT / "results" / "reference"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    settings = SETTINGS
    if args.setting:
        settings = {}
        for spec in args.setting:
            name, _, kvs = spec.partition("=")
            settings[name] = {k: float(v) if v.replace(".", "").replace("e-", "").isdigit() else v
                              for k, _, v in (kv.partition("=") for kv in kvs.split(",") if kv)}
    rows, traces = [], {}
    for name, overrides in settings.items():
        r, traces[name] = trace_setting(args.task, name, overrides, args.max_draws, log)
        rows += r
    ref = {m: v for m in ("ekfac",) if (v := reference_lds(args.task, m, log)) is not None}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bif_draws_{args.task}"
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"# BIF: LDS against draws on {args.task}", "",
             "| setting | draws/chain | total draws | seconds | LDS | 95% CI |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['draws']} | {r['total_draws']} | {r['seconds']} | {r['lds']:.4f} | "
              f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}] |" for r in rows]
    for m, v in ref.items():
        lines += ["", f"{m} LDS on the same ground truth: {v:.4f}"]
        for name in settings:
            hit = next((r for r in rows if r["setting"] == name and r["lds"] >= v), None)
            lines.append(f"- {name}: " + (f"reaches it at {hit['draws']} draws/chain, {hit['seconds']} s"
                                           if hit else "does not reach it"))
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(rows, ref, Path(f"{stem}.png"), f"BIF on {args.task}: LDS against draws and time")
    plot_traces(traces, Path(f"{out}/bif_loss_trace_{args.task}.png"), args.task)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
