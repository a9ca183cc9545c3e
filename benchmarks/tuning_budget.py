"""How often a small tuning budget finds what a large one finds, per sampler and search space.

    .venv/bin/python benchmarks/tuning_budget.py [--task digits_mlp] [--method bif]
        [--sizes 200 400] [--seeds 0 1 2] [--budgets 8 12 16] [--reference 64]
        [--baseline-budgets 8 12 16] [--tolerance 0.01] [--out results/reference/tuning_budget]
        [--set method.chains=4 method.draws=100 ...]
    .venv/bin/python benchmarks/tuning_budget.py --summarize --out FOLDER   # tables and plot only

For each training-set size and data seed, on one validation ground truth (``tune.val_subsets`` x
``tune.val_seeds``; the test ground truth is never read):

- a **reference** study of ``--reference`` trials with the default sampler (``quasi_tpe``: the
  default setting, quasi-random start-up points, multivariate TPE) over the method's search space
  as the task declares it: its best validation LDS is what a large budget finds;
- a fresh study per ``--budgets`` value with the same sampler and space;
- a fresh study per ``--baseline-budgets`` value with the earlier tuning (``tune.sampler=tpe``:
  random start-up, independent TPE, the method's earlier space; for the BIF ``BIF_SPACE_WIDE``, the
  space of the committed small-data studies).

A study "finds it" when its best validation LDS is within ``--tolerance`` of the reference's best.
Studies live in ``OUT/studies.journal`` (a rerun continues them); each (size, seed) writes
``OUT/studies/<size>-<seed>.json`` when done (a rerun skips it), so several processes can share
the work by giving each its own ``--seeds``. ``--summarize`` (also run at the end) writes
``budget_studies.csv`` (one row per study), ``budget_summary.csv`` and ``.md`` (per arm and
budget: studies within the tolerance, mean and worst shortfall, failed trials, CPU seconds) and
``budget.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def study_rows(task_name: str, method: str, n: int, seed: int, args) -> list[dict]:
    from tdabench.harness.core.registry import METHODS
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import prepare, study_key
    from tdabench.harness.engine.tuning import tune

    out = Path(args.out)
    base = [f"task={task_name}", f"method={method}", f"task.n_train={n}", f"seed={seed}", "threads=1",
            "wandb.mode=disabled", "cost.count=off", f"tune.val_subsets={args.val_subsets}",
            f"tune.val_seeds={args.val_seeds}", f"cache_dir={args.cache_dir}", f"results_dir={out}",
            f"tune.storage={out / 'studies.journal'}", f"tune.max_cpu_s={args.max_cpu_s}", *args.set]
    arms = [("quasi_tpe", "reference", args.reference)]
    arms += [("quasi_tpe", "centred", b) for b in args.budgets]
    earlier = "wide" if getattr(METHODS.get(method), "earlier_search_space", None) else "own"
    arms += [("tpe", earlier, b) for b in args.baseline_budgets]
    rows = []
    for sampler, space_name, budget in arms:
        cfg = compose([*base, f"tune.trials={budget}", f"tune.sampler={sampler}"])
        task, m = prepare(cfg)
        start = time.process_time()
        tuned = tune(task, type(m), cfg, f"{study_key(cfg)}-{space_name}-b{budget}").info
        log = tuned.trial_log
        rows.append({"task": task_name, "method": method, "n_train": n, "seed": seed, "sampler": sampler,
                     "space": space_name, "budget": budget, "best_val_lds": tuned.val_lds,
                     "best_trial": tuned.best_trial, "default_val_lds": next(
                         (t["value"] for t in log if t.get("default")), None),
                     "failed_trials": sum(t["value"] is None for t in log), "trials_cpu_s": tuned.trials_cpu_s,
                     "cpu_s": round(time.process_time() - start, 1), "best_params": tuned.best_params})
        print(f"{task_name} n={n} seed={seed} {sampler}/{space_name} x{budget}: best validation LDS "
              f"{tuned.val_lds:.4f} (trial {tuned.best_trial})", file=sys.stderr, flush=True)
    return rows


def summarize(out: Path, tolerance: float) -> None:
    import pandas as pd

    rows = [r for p in sorted((out / "studies").glob("*.json")) for r in json.loads(p.read_text())]
    if not rows:
        sys.exit(f"no finished studies in {out / 'studies'}")
    df = pd.DataFrame(rows)
    ref = df[df["space"] == "reference"].set_index(["task", "method", "n_train", "seed"])["best_val_lds"]
    df["reference_best"] = [ref.get((r.task, r.method, r.n_train, r.seed)) for r in df.itertuples()]
    df["shortfall"] = (df["reference_best"] - df["best_val_lds"]).clip(lower=0)
    df["found"] = df["shortfall"] <= tolerance
    df.drop(columns=["best_params"]).to_csv(out / "budget_studies.csv", index=False)
    arms = df[df["space"] != "reference"]
    summary = (arms.groupby(["method", "sampler", "space", "budget"])
               .agg(studies=("found", "size"), found=("found", "sum"), mean_shortfall=("shortfall", "mean"),
                    worst_shortfall=("shortfall", "max"), mean_gain_over_default=(
                        "best_val_lds", "mean"), failed_trials=("failed_trials", "sum"),
                    cpu_s=("trials_cpu_s", "sum")).reset_index())
    default = arms.groupby(["method", "sampler", "space", "budget"])["default_val_lds"].mean().values
    summary["mean_gain_over_default"] = summary["mean_gain_over_default"] - default
    summary.to_csv(out / "budget_summary.csv", index=False)
    lines = [f"Studies whose best validation LDS came within {tolerance} of the best of the reference "
             "study (same size and seed, quasi_tpe over the centred space, "
             f"{int(df[df['space'] == 'reference']['budget'].iloc[0])} trials):", "",
             "| method | sampler | space | trials | within | mean shortfall | worst | gain over default "
             "| failed trials | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.method} | {r.sampler} | {r.space} | {r.budget} | {r.found} of {r.studies} | "
                     f"{r.mean_shortfall:.3f} | {r.worst_shortfall:.3f} | {r.mean_gain_over_default:+.3f} | "
                     f"{r.failed_trials} | {r.cpu_s:.0f} |")
    (out / "budget_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(summary, out / "budget.png", tolerance)


def plot(summary, path: Path, tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for (sampler, space), g in summary.groupby(["sampler", "space"]):
        g = g.sort_values("budget")
        label = f"{sampler}, {space} space"
        axes[0].plot(g["budget"], g["found"] / g["studies"], marker="o", label=label)
        axes[1].plot(g["budget"], g["mean_shortfall"], marker="o", label=label)
    axes[0].set(xlabel="trials", ylabel=f"share within {tolerance} of the reference best", ylim=(-0.05, 1.05))
    axes[1].set(xlabel="trials", ylabel="mean shortfall (validation LDS)")
    axes[1].axhline(tolerance, color="grey", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--method", default="bif")
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--baseline-budgets", type=int, nargs="*", default=[8, 12, 16])
    ap.add_argument("--reference", type=int, default=64)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--val-subsets", type=int, default=50)
    ap.add_argument("--val-seeds", type=int, default=2)
    ap.add_argument("--max-cpu-s", type=float, default=120.0)
    ap.add_argument("--cache-dir", default=os.environ.get("TDABENCH_CACHE", str(ROOT / ".cache" / "tdabench")))
    ap.add_argument("--out", default=str(ROOT / "results" / "reference" / "tuning_budget"))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="further tdabench settings of every study (method.chains=4 ...)")
    ap.add_argument("--summarize", action="store_true", help="only write the tables and the plot")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.summarize:
        (out / "studies").mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            for seed in args.seeds:
                done = out / "studies" / f"{args.task}-{args.method}-{n}-{seed}.json"
                if done.exists():
                    continue
                rows = study_rows(args.task, args.method, n, seed, args)
                tmp = done.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows, indent=1, default=lambda v: None if isinstance(v, float)
                                          and not math.isfinite(v) else str(v)))
                tmp.replace(done)
    summarize(out, args.tolerance)


if __name__ == "__main__":
    main()
