"""How often a small tuning budget finds what a large one finds, per sampler and search space.

    .venv/bin/python benchmarks/tuning_budget.py [--task digits_mlp] [--method bif]
        [--sizes 200 400] [--seeds 0 1 2] [--budgets 8 12 16] [--reference 64]
        [--space step] [--compare quasi_tpe:centred tpe:wide] [--tolerance 0.01]
        [--out results/reference/tuning_budget] [--set method.chains=4 method.draws=100 ...]
    .venv/bin/python benchmarks/tuning_budget.py --summarize --out FOLDER   # tables and plot only
    .venv/bin/python benchmarks/tuning_budget.py --summarize --reevaluate 3 --out FOLDER

For each training-set size and data seed, on one validation ground truth (``tune.val_subsets`` x
``tune.val_seeds``; the test ground truth is never read):

- a **reference** study of ``--reference`` trials with the default sampler (``quasi_tpe``: the
  default setting, quasi-random start-up points, multivariate TPE) over the method's search space
  (``--space``, by default ``step``: the method's own as the task declares it; for the BIF the step
  ``eps * nbeta`` is searched): its best validation LDS is what a large budget finds;
- a fresh study per ``--budgets`` value with the same sampler and space;
- a fresh study per ``--budgets`` value for each ``--compare`` arm ``SAMPLER:SPACE``: for the BIF
  ``quasi_tpe:centred`` (its space before the step was searched, ``BIF_SPACE_CENTRED``) and
  ``tpe:wide`` (the earlier tuning: random start-up, independent TPE and ``BIF_SPACE_WIDE``, the
  space of the committed small-data studies).

A study "finds it" when its best validation LDS is within ``--tolerance`` of the best of every
reference study of its size and seed (the reference studies of earlier spaces included: the target
is the best any large budget found). Studies live in ``OUT/studies.journal`` (a rerun continues
them); each study writes ``OUT/studies/<task>-<method>-<size>-<seed>-<sampler>-<space>-b<trials>.json``
when done (a rerun skips it), so several processes can share the work by giving each its own
``--seeds`` or sizes. ``--summarize`` (also run at the end) writes
``budget_studies.csv`` (one row per study), ``budget_summary.csv`` and ``.md`` (per arm and
budget: studies within the tolerance, mean and worst shortfall, failed trials, CPU seconds) and
``budget.png``. ``--reevaluate K`` first evaluates each finished study's best setting K more times
with other method seeds (``OUT/reeval/``): a study's best validation LDS is the largest of noisy
values, biased upwards the more trials it saw, so the tables also compare those means ("again").
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


def named_space(method_cls, name: str):
    """The search space an arm names: ``step`` (or ``own``) the method's own, ``centred`` and
    ``wide`` the BIF's earlier ones."""
    from tdabench.methods import bif_spaces as bif

    spaces = {"step": None, "own": None, "centred": bif.BIF_SPACE_CENTRED, "wide": bif.BIF_SPACE_WIDE}
    if name not in spaces or (name in ("centred", "wide") and method_cls.name not in ("bif", "bif_devinterp")):
        sys.exit(f"unknown space {name!r} for {method_cls.name}: choose among step (the method's own)"
                 + (", centred, wide" if method_cls.name.startswith("bif") else ""))
    return spaces[name]


def run_study(task_name: str, method: str, n: int, seed: int, sampler: str, space_name: str,
              budget: int, reference: bool, args) -> dict:
    """One study (resumed from the journal); its row."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import prepare, study_key
    from tdabench.harness.engine.tuning import tune

    base = study_base(task_name, method, n, seed, args)
    cfg = compose([*base, f"tune.trials={budget}", f"tune.sampler={sampler}"])
    task, m = prepare(cfg)
    cls = type(m)
    space = named_space(cls, space_name)
    saved = cls.__dict__.get("search_space"), cls.__dict__.get("earlier_search_space")
    if space is not None:  # the arm's space stands in for the method's for this study only
        cls.search_space = cls.earlier_search_space = space
    # the studies of the first design were named <key>-centred-b<trials> and <key>-reference-b64
    label = ("reference" if space_name == "centred" else f"reference-{space_name}") if reference else space_name
    start = time.process_time()
    try:
        tuned = tune(task, cls, cfg, f"{study_key(cfg)}-{label}-b{budget}").info
    finally:
        for attr, value in zip(("search_space", "earlier_search_space"), saved):
            if value is None:
                if attr in cls.__dict__:
                    delattr(cls, attr)
            else:
                setattr(cls, attr, value)
    log = tuned.trial_log
    print(f"{task_name} n={n} seed={seed} {sampler}/{space_name} x{budget}{' (reference)' if reference else ''}: "
          f"best validation LDS {tuned.val_lds:.4f} (trial {tuned.best_trial})", file=sys.stderr, flush=True)
    return {"task": task_name, "method": method, "n_train": n, "seed": seed, "sampler": sampler,
            "space": "reference" if reference else space_name, "reference_space": space_name if reference else None,
            "budget": budget, "best_val_lds": tuned.val_lds, "best_trial": tuned.best_trial,
            "default_val_lds": next((t["value"] for t in log if t.get("default")), None),
            "failed_trials": sum(t["value"] is None for t in log), "trials_cpu_s": tuned.trials_cpu_s,
            "cpu_s": round(time.process_time() - start, 1), "best_params": tuned.best_params}


def arm_name(row: dict) -> str:
    """``<task>-<method>-<size>-<seed>-<sampler>-[reference-]<space>-b<trials>``: a study's file name."""
    reference = row["space"] == "reference"
    space = (row.get("reference_space") or "centred") if reference else row["space"]
    return (f"{row['task']}-{row['method']}-{row['n_train']}-{row['seed']}-{row['sampler']}-"
            f"{'reference-' if reference else ''}{space}-b{row['budget']}")


def study_rows_on_disk(out: Path) -> list[dict]:
    """Every finished study's row, once (the first design's files held all studies of a size and seed)."""
    rows = {}
    for p in sorted((out / "studies").glob("*.json")):
        for r in json.loads(p.read_text()):
            rows[arm_name(r)] = r
    return list(rows.values())


def study_base(task_name: str, method: str, n: int, seed: int, args) -> list[str]:
    out = Path(args.out)
    return [f"task={task_name}", f"method={method}", f"task.n_train={n}", f"seed={seed}", "threads=1",
            "wandb.mode=disabled", "cost.count=off", f"tune.val_subsets={args.val_subsets}",
            f"tune.val_seeds={args.val_seeds}", f"cache_dir={args.cache_dir}", f"results_dir={out}",
            f"tune.storage={out / 'studies.journal'}", f"tune.max_cpu_s={args.max_cpu_s}", *args.set]


def reevaluate(out: Path, times: int, args) -> None:
    """Evaluate the best setting of every finished study of the arms asked for (``--space``,
    ``--compare``) and of every reference study ``times`` more, each with another method
    seed (the SGLD noise; the same validation ground truth): a study's best validation LDS is the
    maximum of noisy values, higher than its setting's mean (most so for the study of most trials).
    Writes ``OUT/reeval/<study>.json`` per study (skipped when present)."""
    from tdabench.harness.core.settings import settings_of
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import prepare
    from tdabench.harness.engine.tuning import validation_gt
    from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
    from tdabench.harness.read.lds import lds

    (out / "reeval").mkdir(exist_ok=True)
    spaces = {"reference", args.space, *(a.split(":", 1)[-1] for a in args.compare)}
    for row in study_rows_on_disk(out):
        name = arm_name(row)
        if row["space"] not in spaces:  # the arms asked for (--space, --compare) and the references
            continue
        done = out / "reeval" / f"{name}.json"
        if done.exists() or not row.get("best_params"):
            continue
        key = json.dumps([row["task"], row["method"], row["n_train"], row["seed"], row["best_params"]], sort_keys=True)
        same = [p for p in (out / "reeval").glob("*.json") if json.loads(p.read_text()).get("key") == key]
        if same:  # another study (of another budget) chose the same setting: the same values
            done.write_text(json.dumps({**json.loads(same[0].read_text()), "study": name}))
            continue
        try:  # several processes share the work: each study's re-evaluation is claimed by one
            os.close(os.open(done.with_suffix(".claim"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        cfg = compose(study_base(row["task"], row["method"], row["n_train"], row["seed"], args))
        task, m = prepare(cfg)
        s = settings_of(cfg)
        view = task.validation_view()
        gt = GroundTruthBuilder(view, validation_gt(s), s.cache_dir).build()
        values = []
        for j in range(1, times + 1):
            params = {**s.method_params, **row["best_params"], "seed": row["seed"] + 1000 * j}
            try:
                method = type(m)(**params)
                method.fit(view, view.checkpoint())
                scores = method.score(view, view.checkpoint())
                values.append(lds(scores.cpu(), gt.masks, gt.mean_outcomes, 1, s.seed).lds)
            except Exception as exc:  # a diverged chain at another seed: recorded as such
                print(f"{name} seed {j}: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
                values.append(None)
        print(f"{name}: best {row['best_val_lds']:.4f}, again {values}", file=sys.stderr, flush=True)
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps({"study": name, "key": key, "values": values}))
        tmp.replace(done)
        done.with_suffix(".claim").unlink()


def summarize(out: Path, tolerance: float) -> None:
    import pandas as pd

    rows = study_rows_on_disk(out)
    for r in rows:  # the mean of the best setting evaluated again with other method seeds, if done
        again = out / "reeval" / f"{arm_name(r)}.json"
        tried = json.loads(again.read_text())["values"] if again.exists() else []
        values = [v for v in tried if v is not None]
        r["reeval_mean"] = sum(values) / len(values) if values else None
        r["reeval_n"], r["reeval_diverged"] = len(tried), len(tried) - len(values)
    if not rows:
        sys.exit(f"no finished studies in {out / 'studies'}")
    df = pd.DataFrame(rows)
    if "reference_space" not in df:
        df["reference_space"] = None
    # the first design's files held every study of a size and seed, its reference over the centred space
    df.loc[(df["space"] == "reference") & df["reference_space"].isna(), "reference_space"] = "centred"
    keys = ["task", "method", "n_train", "seed"]
    ref = df[df["space"] == "reference"].groupby(keys)["best_val_lds"].max()
    df["reference_best"] = [ref.get((r.task, r.method, r.n_train, r.seed)) for r in df.itertuples()]
    df["shortfall"] = (df["reference_best"] - df["best_val_lds"]).clip(lower=0)
    df["found"] = df["shortfall"] <= tolerance
    # evaluated again with other method seeds: the target is the best mean of any study's setting of
    # that size and seed (a reference's best can be a lucky draw, even one that diverges at other seeds);
    # a setting whose every re-evaluation diverged has no mean and counts as a shortfall
    top = df.groupby(keys)["reeval_mean"].max()
    df["reference_again"] = [top.get((r.task, r.method, r.n_train, r.seed)) for r in df.itertuples()]
    df["shortfall_again"] = (df["reference_again"] - df["reeval_mean"]).where(
        df["reeval_mean"].notna(), df["reference_again"].where(df["reeval_n"] > 0))
    df["found_again"] = (df["shortfall_again"] <= tolerance).where(df["shortfall_again"].notna())
    df.drop(columns=["best_params"]).to_csv(out / "budget_studies.csv", index=False)
    arms = df.assign(space=df["space"].where(df["space"] != "reference", df["reference_space"] + " (reference)"))
    summary = (arms.groupby(["method", "n_train", "sampler", "space", "budget"])
               .agg(studies=("found", "size"), found=("found", "sum"), mean_shortfall=("shortfall", "mean"),
                    worst_shortfall=("shortfall", "max"), mean_gain_over_default=(
                        "best_val_lds", "mean"), failed_trials=("failed_trials", "sum"),
                    cpu_s=("trials_cpu_s", "sum"), again=("found_again", "count"),
                    found_again=("found_again", "sum"), mean_shortfall_again=("shortfall_again", "mean"),
                    diverged_again=("reeval_diverged", "sum"), evaluated_again=("reeval_n", "sum"))
               .reset_index())
    default = arms.groupby(["method", "n_train", "sampler", "space", "budget"])["default_val_lds"].mean().values
    summary["mean_gain_over_default"] = summary["mean_gain_over_default"] - default
    summary.to_csv(out / "budget_summary.csv", index=False)
    refs = df[df["space"] == "reference"]
    if refs.empty:
        sys.exit(f"no reference study has finished in {out / 'studies'}")
    lines = [f"Studies whose best validation LDS came within {tolerance} of the best of the reference "
             f"studies of their size and seed (quasi_tpe, {int(refs['budget'].iloc[0])} trials, over the "
             f"{' and the '.join(sorted(refs['reference_space'].unique()))} space):", "",
             "| method | n_train | sampler | space | trials | within | mean shortfall | worst | gain over default "
             "| failed trials | CPU s | within, again | mean shortfall, again | diverged again |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        again = (f"{int(r.found_again)} of {r.again} | {r.mean_shortfall_again:.3f} | "
                 f"{int(r.diverged_again)} of {int(r.evaluated_again)}" if r.again else "- | - | -")
        lines.append(f"| {r.method} | {r.n_train} | {r.sampler} | {r.space} | {r.budget} | {r.found} of {r.studies} | "
                     f"{r.mean_shortfall:.3f} | {r.worst_shortfall:.3f} | {r.mean_gain_over_default:+.3f} | "
                     f"{r.failed_trials} | {r.cpu_s:.0f} | {again} |")
    ref_rows = refs.dropna(subset=["reeval_mean"])
    if len(ref_rows):
        lines += ["", "Again: each study's best setting evaluated with other method seeds; a study is within when "
                  "its setting's mean is within the tolerance of the best mean of any study's setting of its size "
                  "and seed (a setting whose every re-evaluation diverged is short by that whole best mean). "
                  "A reference study's best validation LDS stood "
                  f"{(ref_rows['best_val_lds'] - ref_rows['reeval_mean']).mean():.3f} above its setting's mean "
                  f"over other seeds ({len(ref_rows)} studies whose setting completed again)."]
    (out / "budget_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(summary, out / "budget.png", tolerance)


def plot(summary, path: Path, tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    arms = summary[~summary["space"].str.endswith("(reference)")]  # the small budgets only
    designs = sorted(set(zip(arms["sampler"], arms["space"])))
    colours = {d: f"C{i}" for i, d in enumerate(designs)}
    sizes = sorted(arms["n_train"].unique())
    for (n, sampler, space), g in arms.groupby(["n_train", "sampler", "space"]):
        g = g.sort_values("budget")
        style = {"color": colours[(sampler, space)], "ls": ["-", "--", ":", "-."][sizes.index(n) % 4],
                 "marker": "os^D"[sizes.index(n) % 4], "label": f"{sampler}, {space} space, {n} images"}
        axes[0].plot(g["budget"], g["found"] / g["studies"], **style)
        axes[1].plot(g["budget"], g["mean_shortfall"], **style)
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
    ap.add_argument("--space", default="step", help="the space of the reference and budget studies")
    ap.add_argument("--compare", nargs="*", default=[], metavar="SAMPLER:SPACE",
                    help="further arms, each run at every budget (quasi_tpe:centred tpe:wide)")
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
    ap.add_argument("--reevaluate", type=int, default=0, metavar="K",
                    help="evaluate each finished study's best setting K more times with other method seeds")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.summarize:
        (out / "studies").mkdir(parents=True, exist_ok=True)
        compare = [a.split(":", 1) for a in args.compare]
        if any(len(a) != 2 for a in compare):
            sys.exit(f"--compare takes SAMPLER:SPACE arms (quasi_tpe:centred tpe:wide), not {args.compare}")
        arms = [("quasi_tpe", args.space, args.reference, True)]
        arms += [(sampler, space, b, False) for sampler, space in [("quasi_tpe", args.space), *compare]
                 for b in args.budgets]
        for n in args.sizes:
            for seed in args.seeds:
                for sampler, space, budget, reference in arms:
                    arm = f"{sampler}-{'reference-' if reference else ''}{space}-b{budget}"
                    done = out / "studies" / f"{args.task}-{args.method}-{n}-{seed}-{arm}.json"
                    if done.exists():
                        continue
                    row = run_study(args.task, args.method, n, seed, sampler, space, budget, reference, args)
                    tmp = done.with_suffix(".tmp")
                    tmp.write_text(json.dumps([row], indent=1, default=lambda v: None if isinstance(v, float)
                                              and not math.isfinite(v) else str(v)))
                    tmp.replace(done)
    if args.reevaluate:
        reevaluate(out, args.reevaluate, args)
    summarize(out, args.tolerance)


if __name__ == "__main__":
    main()
