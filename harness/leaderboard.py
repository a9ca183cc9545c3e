"""``tdabench-leaderboard RESULTS_DIR``: one row per task and method from ``runs.jsonl``.

Each (task, method) row uses its newest ``ok`` record; pairings without one are listed with their
last status. Per task it shows the ground truth's LDS ceiling once; per method the LDS with its
95% interval, the normalized LDS (LDS / ceiling), a tie mark (``≈``) for methods statistically
indistinguishable from the best one on the same ground truth (paired Wilcoxon test over queries,
p >= 0.05), the spread of LDS over ``method.seed`` values when several were run, cost (fit and
score seconds, peak memory, model trainings). Tasks whose runs span several model sizes (the
pythia_scaling sweep) also get a table of every run's cost by size. Writes ``leaderboard.md``,
``leaderboard.csv``, ``pairwise.csv``, prints the table, and writes ``report.html`` with its
plots (``--no-report`` skips them); ``--wandb`` also logs the leaderboard and plots to a wandb
summary run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.results import one_line_errors, read_records
from harness.statistics import pairwise_table, tied_with_best

COLUMNS = ["task", "method", "status", "lds", "lds_ci", "normalized_lds", "tied_with_best",
           "lds_sd_over_seeds", "method_seeds", "fit_s", "score_s", "total_s", "peak_mem_mb",
           "trainings", "n_train", "n_query", "test_acc", "runs"]


def run_cost(rec: dict) -> dict:
    """A record's fit and score seconds, their sum and the larger of their peak memories (None
    where the record has no profile)."""
    t, m = rec.get("time_s") or {}, rec.get("peak_mem_mb") or {}
    return {"fit_s": t.get("fit"), "score_s": t.get("score"),
            "total_s": round(sum(t.get(p, 0) for p in ("fit", "score")), 3) if t else None,
            "peak_mem_mb": max(m.get("fit", 0), m.get("score", 0)) if m else None}


def fit_from_cache(rec: dict) -> bool:
    """Whether the run's fit read curvature factors cached by an earlier run (its fit time is then
    a file read, not the cost of fitting)."""
    return bool((rec.get("diagnostics") or {}).get("factors_from_cache"))


def _method_seed(rec: dict):
    return rec.get("config", {}).get("method", {}).get("seed")


def _per_query(rec: dict) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in rec.get("lds_per_query") or []], float)


def _row(rec: dict, recs: list[dict]) -> dict:
    ci = rec.get("lds_ci") or [None, None]
    same_gt = [r for r in recs if r.get("status") == "ok" and r.get("gt_key") == rec.get("gt_key")]
    by_seed = {_method_seed(r): r["lds"] for r in same_gt}
    return {
        "task": rec["task"], "method": rec["method"], "status": rec["status"], "lds": rec.get("lds"),
        "lds_ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "",
        "normalized_lds": rec.get("normalized_lds"), "tied_with_best": "",
        "lds_sd_over_seeds": float(np.std(list(by_seed.values()), ddof=1)) if len(by_seed) > 1 else None,
        "method_seeds": len(by_seed) or None,
        **run_cost(rec),
        "trainings": rec.get("trainings"), "n_train": rec.get("n_train"), "n_query": rec.get("n_query"),
        "test_acc": rec.get("model_quality", {}).get("test_acc"), "runs": len(recs),
    }


def chosen_records(records: list[dict]) -> dict[tuple, tuple[dict, list[dict]]]:
    """(task, method) -> (the record shown, all records of the pairing)."""
    by_pair: dict[tuple, list[dict]] = {}
    for rec in records:
        by_pair.setdefault((rec.get("task"), rec.get("method")), []).append(rec)
    out = {}
    for key, recs in by_pair.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        out[key] = (ok[-1] if ok else recs[-1], recs)
    return out


def task_summaries(records: list[dict]) -> dict[str, dict]:
    """Per task: the ground truth of its newest ok record and that ground truth's ceiling."""
    out = {}
    for rec in records:
        if rec.get("status") == "ok":
            out[rec["task"]] = {k: rec.get(k) for k in ("gt_key", "lds_ceiling", "lds_ceiling_ci",
                                                         "gt_reliability", "gt_seeds", "gt_subsets",
                                                         "gt_warning", "n_train")}
    return out


def comparable(chosen: dict, task: str, gt_key: str) -> dict[str, np.ndarray]:
    """Per-query LDS of every method of ``task`` whose shown record used ground truth ``gt_key``."""
    return {m: _per_query(rec) for (t, m), (rec, _) in chosen.items()
            if t == task and rec.get("status") == "ok" and rec.get("gt_key") == gt_key
            and rec.get("lds_per_query")}


def build(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    chosen = chosen_records(records)
    tasks = task_summaries(records)
    rows = [_row(rec, recs) for rec, recs in chosen.values()]
    pairs = []
    for task, info in tasks.items():
        per_query = comparable(chosen, task, info["gt_key"])
        if len(per_query) >= 2:
            ties = tied_with_best(per_query)
            for row in rows:
                if row["task"] == task and row["method"] in ties:
                    row["tied_with_best"] = "≈" if ties[row["method"]] else ""
            for p in pairwise_table(per_query):
                pairs.append({"task": task, "method_a": p.a, "method_b": p.b, "mean_diff": p.mean_diff,
                              "ci_low": p.ci[0], "ci_high": p.ci[1], "p_value": p.p_value,
                              "queries": p.n, "significant": p.p_value < 0.05})
    for (task, _), (rec, _) in chosen.items():
        if task in tasks and fit_from_cache(rec):
            tasks[task].setdefault("cached_fits", []).append(rec["method"])
    df = pd.DataFrame(rows, columns=COLUMNS)
    if not df.empty:
        df["_ok"] = df["status"] == "ok"
        df = df.sort_values(["task", "_ok", "lds"], ascending=[True, False, False]).drop(columns="_ok")
        df = df.reset_index(drop=True)
    return df, pd.DataFrame(pairs), tasks


def cost_by_size(records: list[dict]) -> pd.DataFrame:
    """One row per run of every task whose runs span several model sizes (the leaderboard shows
    one run per method): parameters, status, fit and score seconds, peak memory, and whether the
    fit read cached curvature factors (its time is then a file read, not a fit)."""
    sizes: dict[str, set] = {}
    for r in records:
        if r.get("num_params"):
            sizes.setdefault(r["task"], set()).add(r["num_params"])
    rows = []
    for r in records:
        if len(sizes.get(r.get("task"), ())) < 2:
            continue
        rows.append({"task": r["task"], "method": r["method"],
                     "size": r.get("config", {}).get("task", {}).get("size"),
                     "parameters": r.get("num_params"), "status": r["status"], **run_cost(r),
                     "fit_from_cache": fit_from_cache(r)})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["task", "method", "parameters"], na_position="last").reset_index(drop=True)
    return df


def _ceiling_line(task: str, info: dict) -> str:
    if info.get("lds_ceiling") is None:
        return (f"**{task}**: LDS ceiling unknown (gt.seeds={info.get('gt_seeds')}; it needs "
                "gt.seeds >= 2)")
    lo, hi = info["lds_ceiling_ci"]
    line = (f"**{task}**: LDS ceiling {info['lds_ceiling']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(ground-truth reliability {info['gt_reliability']:.3f}; {info['gt_subsets']} subsets x "
            f"{info['gt_seeds']} seeds)")
    if info.get("gt_warning"):
        line += f"\n\n> warning: {info['gt_warning']}"
    return line


def render_markdown(df: pd.DataFrame, pairs: pd.DataFrame, tasks: dict,
                    costs: pd.DataFrame | None = None) -> str:
    parts = ["# Leaderboard", "",
             "LDS: mean Spearman over queries (95% bootstrap interval). normalized_lds = LDS / "
             "ceiling. ≈ marks methods statistically tied with the best on the same ground truth "
             "(paired Wilcoxon over queries, p >= 0.05).", ""]
    for task, sub in df.groupby("task", sort=True):
        if task in tasks:
            parts += [_ceiling_line(task, tasks[task]), ""]
        parts += [sub.drop(columns="task").to_markdown(index=False, floatfmt=".4g"), ""]
        cached = sorted(tasks.get(task, {}).get("cached_fits", []))
        if cached:
            parts += [f"fit_s of {', '.join(cached)}: curvature factors read from the cache of an "
                      "earlier run (a file read, not the cost of fitting them)", ""]
        if not pairs.empty and (pairs["task"] == task).any():
            p = pairs[pairs["task"] == task].drop(columns="task")
            parts += [f"Pairwise comparisons ({task}): mean per-query LDS difference a - b, paired "
                      "bootstrap 95% interval, Wilcoxon p-value", "",
                      p.to_markdown(index=False, floatfmt=".3g"), ""]
        if costs is not None and not costs.empty and (costs["task"] == task).any():
            c = costs[costs["task"] == task].drop(columns="task")
            parts += [f"Cost by model size ({task}): every run, fit and score seconds and peak "
                      "memory above each phase's start (MiB)", "",
                      c.to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(parts)


def write(results_dir: str | Path) -> pd.DataFrame:
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    if not records:
        raise SystemExit(f"tdabench-leaderboard: error: no records in {results_dir / 'runs.jsonl'}; "
                         "run `tdabench ... results_dir=DIR` first")
    df, pairs, tasks = build(records)
    df.to_csv(results_dir / "leaderboard.csv", index=False)
    pairs.to_csv(results_dir / "pairwise.csv", index=False)
    (results_dir / "leaderboard.md").write_text(render_markdown(df, pairs, tasks, cost_by_size(records)))
    return df


@one_line_errors("tdabench-leaderboard")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tdabench-leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", default="results")
    parser.add_argument("--wandb", nargs="?", const="offline", choices=["offline", "online"],
                        help="also log the leaderboard and plots to a wandb summary run (offline by default)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html and the plots")
    args = parser.parse_args(argv)
    write(args.results_dir)
    print((Path(args.results_dir) / "leaderboard.md").read_text())
    if not args.no_report:
        from harness.report import write_report

        print(f"report: {write_report(args.results_dir)}")
    if args.wandb:
        from harness.report import log_to_wandb

        print(f"wandb summary run: {log_to_wandb(args.results_dir, args.wandb)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
