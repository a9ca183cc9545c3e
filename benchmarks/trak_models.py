"""LDS of TRAK against the number of ensemble members (= model trainings), with references.

    .venv/bin/python benchmarks/trak_models.py [--task digits_mlp] [--models 1 2 5 10]
        [--proj-dim 512] [--out results/reference]

Runs the native ``trak`` with each ensemble size on the task's default ground truth (members
after the first are trained once and cached like the checkpoint; seconds are fit + score after
training), plus ``trak_traker`` with one
model and ``grad_dot`` as reference lines when registered and available. Writes
``trak_models_<task>.csv``, ``.md`` and ``.png``.
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


def run(task_name: str, method: str, overrides: dict, log) -> dict:
    cfg = pairing_config(task_name, method, overrides)
    task, m = prepare(cfg)
    gt = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log).build()
    model = task.checkpoint()
    if "models" in overrides:
        task.ensemble(overrides["models"], cfg["method"].get("ensemble_mode", "full"))  # train first
    start = time.perf_counter()
    m.fit(task, model)
    scores = m.score(task, model)
    seconds = time.perf_counter() - start
    res = lds(scores, gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"])
    row = {"method": method, "models": overrides.get("models", 1), "trainings": m.trainings(task),
           "seconds": round(seconds, 2), "lds": round(res.lds, 4), "ci_lo": round(res.ci[0], 4),
           "ci_hi": round(res.ci[1], 4)}
    log(f"{method} {overrides}: LDS {res.lds:.4f} in {seconds:.1f} s")
    return row


def plot(rows: list[dict], refs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = [r["models"] for r in rows]
    ax.errorbar(ks, [r["lds"] for r in rows],
                yerr=[[r["lds"] - r["ci_lo"] for r in rows], [r["ci_hi"] - r["lds"] for r in rows]],
                marker="o", capsize=3, label="trak (native)")
    for i, r in enumerate(refs):
        ax.axhline(r["lds"], color="k", ls=("--", ":", "-.")[i % 3], lw=1,
                   label=f"{r['method']} ({r['lds']:.3f})")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("ensemble members (= model trainings)")
    ax.set_ylabel("LDS (95% CI over queries)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--models", type=int, nargs="+", default=[1, 2, 5, 10])
    ap.add_argument("--proj-dim", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "results" / "reference"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    run(args.task, "trak", {"models": 1, "proj_dim": 8}, log)  # warm-up: torch.func's first call
    rows = [run(args.task, "trak", {"models": k, "proj_dim": args.proj_dim}, log) for k in args.models]
    refs = []
    if "trak_traker" in METHODS.names() and METHODS.get("trak_traker").available() is None:
        refs.append(run(args.task, "trak_traker", {"models": 1, "proj_dim": args.proj_dim}, log))
    refs.append(run(args.task, "grad_dot", {}, log))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"trak_models_{args.task}"
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows + refs)
    lines = [f"# TRAK: LDS against ensemble members on {args.task} (proj_dim {args.proj_dim})", "",
             "| method | models | trainings | fit+score s | LDS | 95% CI |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['models']} | {r['trainings']} | {r['seconds']} | {r['lds']:.4f} | "
              f"[{r['ci_lo']:.3f}, {r['ci_hi']:.3f}] |" for r in rows + refs]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(rows, refs, Path(f"{stem}.png"), f"TRAK on {args.task}: LDS against ensemble size")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
