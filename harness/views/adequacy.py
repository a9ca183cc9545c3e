"""``tdabench-adequacy RESULTS_DIR``: is the ground truth big enough to tell the methods apart?

From the saved scores of a results folder and its cached ground truth (nothing is retrained:
smaller ground truths are prefixes of it), it prints a verdict per task and writes a table and
a plot:

* the verdict: on the whole ground truth, the LDS ceiling and each method's LDS with their 95%
  intervals, then which pairwise comparisons the ground truth resolves (paired test over queries,
  Holm-adjusted p < 0.05) and which it cannot (more subsets, seeds or queries narrow them);
* ``RESULTS_DIR/adequacy_<task>.csv``: one row per prefix (``seeds``, ``subsets``) with the
  ``ceiling`` and each method's LDS, each with its interval (``<name>_ci_low``, ``<name>_ci_high``);
* ``RESULTS_DIR/plots/adequacy_<task>.png``: those curves with their intervals as bands, against
  gt.seeds and against gt.subsets; where they flatten is the cheapest adequate ground truth.

Only a cached ground truth is read: when it is missing the command says how to compute it
(``--compute`` retrains it here). A damaged file or an unwritable folder ends the command with one
line naming the file and the fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tdabench.harness.core.logs import setup as setup_logging  # noqa: E402
from tdabench.harness.core.registry import TASKS  # noqa: E402
from tdabench.harness.core.storage import CorruptFileError, atomic_write_bytes, load_verified  # noqa: E402
from tdabench.harness.engine.config import ConfigError  # noqa: E402
from tdabench.harness.engine.gt_from import ground_truth_source  # noqa: E402
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder  # noqa: E402
from tdabench.harness.read.lds import lds  # noqa: E402
from tdabench.harness.read.leaderboard import chosen_records, ground_truth_labels, row_label  # noqa: E402
from tdabench.harness.read.record import RunRecord, scores_path  # noqa: E402
from tdabench.harness.read.results import one_line_errors, read_records  # noqa: E402
from tdabench.harness.read.statistics import noise_ceiling, pairwise_table  # noqa: E402


class AdequacyError(RuntimeError):
    """A ground truth or scores file that adequacy needs is missing or damaged."""


#: bootstrap resamples (over queries) of each interval in the table
N_BOOT = 200


def curves(gt_outcomes, masks, scores: dict, seeds_grid, subsets_grid) -> pd.DataFrame:
    """LDS per method and the ceiling, each with its 95% interval, on prefixes of the ground truth
    ([M, K, n_query] outcomes)."""
    rows = []
    for k in seeds_grid:
        for m in subsets_grid:
            out = gt_outcomes[:m, :k]
            c = noise_ceiling(out.numpy(), n_boot=N_BOOT) if k >= 2 else None
            row = {"seeds": k, "subsets": m, "ceiling": c.ceiling if c else None,
                   "ceiling_ci_low": c.ceiling_ci[0] if c else None, "ceiling_ci_high": c.ceiling_ci[1] if c else None}
            for name, s in scores.items():
                res = lds(s, masks[:m], out.mean(1), n_boot=N_BOOT)
                row.update({name: res.lds, f"{name}_ci_low": res.ci[0], f"{name}_ci_high": res.ci[1]})
            rows.append(row)
    return pd.DataFrame(rows)


def verdict(task: str, gt, scores: dict) -> list[str]:
    """What the whole ground truth (labelled ``task``) can tell apart: its ceiling and each method's LDS with their
    95% intervals, then the comparisons it resolves (Holm-adjusted p < 0.05) and those it cannot."""
    k = gt.outcomes.shape[1]
    c = noise_ceiling(gt.outcomes.numpy(), n_boot=1000) if k >= 2 else None
    ceiling = (f"LDS ceiling {c.ceiling:.3f} [{c.ceiling_ci[0]:.3f}, {c.ceiling_ci[1]:.3f}]" if c and c.ceiling
               is not None else "LDS ceiling unknown (it needs gt.seeds >= 2)")
    results = {name: lds(s, gt.masks, gt.mean_outcomes, n_boot=1000) for name, s in scores.items()}
    lines = [f"{task}: {ceiling}",
             "  LDS: " + ", ".join(f"{n} {r.lds:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}]" for n, r in
                                   sorted(results.items(), key=lambda item: -item[1].lds))]
    pairs = pairwise_table({n: np.asarray(r.per_query, dtype=float) for n, r in results.items()})
    if not pairs:
        return lines + ["  one method: no comparison to resolve"]
    def said(p):
        return f"{p.a} vs {p.b} {p.mean_diff:+.3f} [{p.ci[0]:.3f}, {p.ci[1]:.3f}] p_holm {p.p_holm:.2g}"
    resolved = [p for p in pairs if p.p_holm < 0.05]
    unresolved = [p for p in pairs if p.p_holm >= 0.05]
    lines.append(f"  resolves {len(resolved)} of {len(pairs)} comparisons" +
                 (": " + "; ".join(map(said, resolved)) if resolved else ""))
    if unresolved:
        lines.append("  cannot resolve: " + "; ".join(map(said, unresolved)) + " (more gt.subsets, gt.seeds "
                     "or task.n_query narrow these intervals; the curves show whether the LDS has settled)")
    return lines


def _ground_truth(task_name: str, cfg: dict, compute: bool):
    """The cached ground truth of a recorded run's config; retrained only with ``compute``."""
    t = TASKS.get(task_name)(cfg["task"], seed=cfg["seed"], cache_dir=cfg["cache_dir"], log=lambda m: None)
    if (cfg["gt"].get("from")) is not None:  # read from a bundle or a field format, as the run did
        try:
            return ground_truth_source(t, cfg).build()
        except ConfigError as exc:
            raise AdequacyError("; ".join(exc.problems)) from exc
    builder = GroundTruthBuilder(t, cfg["gt"], cfg["cache_dir"], log=print)
    if compute:
        return builder.build()
    try:
        gt = builder.cached()
    except CorruptFileError as exc:
        raise AdequacyError(f"{exc}; rerun with --compute to rebuild it") from exc
    if gt is None:
        raise AdequacyError(
            f"the ground truth of {task_name} ({cfg['gt']['subsets']} subsets x {cfg['gt']['seeds']} "
            f"seeds) is not in {builder.dir}; nothing was retrained. Point the runs' cache_dir at the "
            f"cache that holds it, or rerun with --compute to retrain it "
            f"({cfg['gt']['subsets'] * cfg['gt']['seeds']} trainings)")
    return gt


def _scores(results_dir: Path, rec: RunRecord):
    try:
        return load_verified(scores_path(results_dir, rec.scores_file))["scores"]
    except (CorruptFileError, OSError, KeyError, TypeError, ValueError) as exc:
        raise AdequacyError(f"the scores of run {rec.run_id} ({rec.method}) cannot be read "
                            f"({exc}); rerun that method with force=true") from exc


def adequacy(results_dir: str | Path, task: str | None = None, compute: bool = False, say=print) -> list[Path]:
    """Write the adequacy table and plot of each task and ``say`` its :func:`verdict`; nothing is
    retrained unless ``compute``."""
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    chosen = chosen_records(records)
    written = []
    newest = {r.task: label for r, label in zip(records, ground_truth_labels(records))
              if r.is_ok and r.gt_key}  # per task, its newest ground truth
    for task_name, label in newest.items():
        if task and task_name != task:
            continue
        rows = {row_label(key): r for key, (r, _) in chosen.items()
                if key.ground_truth == label and r.is_ok and r.scores_file}
        if not rows:
            continue
        recs = list(rows.values())
        gt = _ground_truth(task_name, recs[0].config, compute)
        scores = {label: _scores(results_dir, r) for label, r in rows.items()}
        m_all, k_all = gt.outcomes.shape[:2]
        seeds_grid = list(range(1, k_all + 1))
        subsets_grid = sorted({int(x) for x in np.linspace(min(10, m_all), m_all, 5)})
        df = curves(gt.outcomes, gt.masks, scores, seeds_grid, subsets_grid)
        atomic_write_bytes(results_dir / f"adequacy_{task_name}.csv", df.to_csv(index=False).encode())
        for line in verdict(label, gt, scores):
            say(line)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax in axes:
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        full_m = df[df["subsets"] == m_all]
        full_k = df[df["seeds"] == k_all]
        for ax, sub, x, label in ((axes[0], full_m, "seeds", f"gt.seeds (subsets = {m_all})"),
                                  (axes[1], full_k, "subsets", f"gt.subsets (seeds = {k_all})")):
            for name in scores:
                line, = ax.plot(sub[x], sub[name], "o-", lw=1, label=name)
                ax.fill_between(sub[x], sub[f"{name}_ci_low"], sub[f"{name}_ci_high"], color=line.get_color(),
                                alpha=0.15, lw=0)
            if sub["ceiling"].notna().any():
                ax.plot(sub[x], sub["ceiling"], "k--", lw=2, label="LDS ceiling")
                ax.fill_between(sub[x], sub["ceiling_ci_low"].astype(float), sub["ceiling_ci_high"].astype(float),
                                color="k", alpha=0.1, lw=0)
            ax.set_xlabel(label)
            ax.set_ylabel("LDS")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # seeds and subsets are counts
        axes[1].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{task_name}: ground-truth adequacy (bands: 95% intervals over queries)")
        fig.tight_layout()
        path = results_dir / "plots" / f"adequacy_{task_name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


@one_line_errors("tdabench-adequacy")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tdabench-adequacy", description=__doc__.replace("``", ""),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", help="a results folder whose runs kept their scores")
    ap.add_argument("--task", default=None, help="only this task (default: every task of the folder)")
    ap.add_argument("--compute", action="store_true",
                    help="retrain a ground truth that is not cached (by default nothing is retrained)")
    ap.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    ap.add_argument("-v", "--verbose", action="count", default=0, help="debugging detail")
    args = ap.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    try:
        written = adequacy(args.results_dir, args.task, args.compute)
    except AdequacyError as exc:
        sys.exit(f"tdabench-adequacy: error: {exc}")
    if not written:
        print(f"tdabench-adequacy: no ok record with saved scores in {args.results_dir}; nothing to plot")
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
