"""The leaderboard of one or several results folders: one row per ground truth, method and setting.

A row is the runs of one method setting (``setting``: the parameters that differ from the
method's defaults, see :mod:`harness.record_view`) scored on one ground truth (``ground_truth``:
task, n_train, subsets x seeds, alpha, observable and a short hash of the cached outcomes); with
several results folders, also of one folder (``sweep``). Each row shows its newest ``ok`` record;
rows without one are listed with their last status. Records of different ground truths are never
ranked together: each ground truth has its own table with its LDS ceiling, its tie marks (``≈``:
not distinguishable from the best row, paired Wilcoxon test over queries with Holm-adjusted p >=
0.05) and its pairwise tests. Per row: LDS with its 95% interval, normalized LDS (LDS / ceiling),
the spread of LDS over ``method.seed`` values when several were run, cost (fit and score
seconds, FLOPs once recorded, peak memory, model trainings) and a flag for runs measured on an
overloaded machine. Tasks whose runs span several model sizes (the pythia_scaling sweep) also get
a table of every run's cost by size. Runs with metrics besides the LDS (``metric=[...]``) add one
table per metric and ground truth and the metrics' rank agreement (:mod:`harness.read.metric_tables`).
Writes ``leaderboard.md``, ``leaderboard.csv``, ``pairwise.csv`` (with ``p_holm``),
``leaderboard_metrics.csv``, ``metric_agreement.csv`` and ``pairwise_metrics.csv`` (paired tests
of every metric, Holm within metric and ground truth); where the same ground-truth settings were
run at several data seeds, also an "across data seeds" section with ``leaderboard_seeds.csv`` and
``pairwise_seeds.csv`` (:mod:`harness.read.seeds`); where a pair of rows was run at two or more
training-set sizes, the slope of their difference against log2(n_train), ``trend.csv``
(:mod:`harness.read.trend`); the command ``tdabench-leaderboard`` is
:mod:`harness.leaderboard_cli`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tdabench.harness.core.registry import TASKS, UnknownNameError
from tdabench.harness.core.storage import atomic_write_bytes
from tdabench.harness.read.importance import importance_table, render_importance
from tdabench.harness.read.metric_tables import agreement, metric_table, pairwise_metrics, render_metric_tables
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import (  # noqa: F401 (RowKey: the leaderboard's row key)
    RowKey,
    engineering,
    fit_from_cache,
    ground_truth_label,
    ground_truth_prefix,
    method_defaults,
    method_params,
    row_cost,
    row_label,
    run_cost,
    setting,
    shown_setting,
)
from tdabench.harness.read.results import NoRecordsError, read_records
from tdabench.harness.read.seeds import across_seeds
from tdabench.harness.read.seeds import render as render_seeds
from tdabench.harness.read.stagewise import render_stagewise, stagewise_table
from tdabench.harness.read.statistics import pairwise_table, tied_with_best
from tdabench.harness.read.trend import render as render_trend
from tdabench.harness.read.trend import trends

COLUMNS = ["ground_truth", "task", "method", "setting", "sweep", "status", "lds", "lds_ci",
           "lds_ci_low", "lds_ci_high", "normalized_lds", "tied_with_best", "lds_sd_over_seeds",
           "method_seeds", "fit_s", "score_s", "total_s", "warm_s", "flops", "peak_mem_mb", "trainings",
           "overloaded", "n_train", "n_query", "test_acc", "test_loss", "runs"]
#: columns left out of leaderboard.md: the ground truth and task head each table, the interval's
#: ends are in lds_ci; optional columns no row fills are dropped too
NOT_IN_MARKDOWN = ["ground_truth", "task", "lds_ci_low", "lds_ci_high"]
OPTIONAL = ["setting", "sweep", "lds_sd_over_seeds", "method_seeds", "warm_s", "flops", "overloaded"]


def read_folders(results_dirs: list[str | Path]) -> list[RunRecord]:
    """Records of every folder; with several folders, each record is marked with its folder's
    name (the ``sweep`` column). Raises :class:`NoRecordsError` for a folder without records."""
    dirs = [Path(d) for d in results_dirs]
    names = [d.name if [x.name for x in dirs].count(d.name) == 1 else str(d) for d in dirs]
    records = []
    for d, name in zip(dirs, names):
        recs = read_records(d)
        if not recs:
            raise NoRecordsError(f"no records in {d / 'runs.jsonl'}; "
                             "run `tdabench ... results_dir=DIR` first, or leave the folder out")
        if len(dirs) > 1:
            for r in recs:
                r.folder = name
        records += recs
    return records


def _method_seed(rec: RunRecord):
    return rec.method_config.get("seed")


def _per_query(rec: RunRecord) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in rec.lds_per_query or []], float)


def ground_truth_labels(records: list[RunRecord]) -> list[str]:
    """Each record's ground-truth label. A record without a ground-truth key (an unsupported
    pairing stops before the ground truth) takes the label of the one keyed ground truth with the
    same task, size and subsets x seeds, if there is exactly one."""
    labels = [ground_truth_label(r) for r in records]
    by_prefix: dict[str, set] = {}
    for rec, label in zip(records, labels):
        if rec.gt_key:
            by_prefix.setdefault(ground_truth_prefix(rec), set()).add(label)
    for i, rec in enumerate(records):
        match = by_prefix.get(ground_truth_prefix(rec), set())
        if not rec.gt_key and len(match) == 1:
            labels[i] = next(iter(match))
    return labels


def row_keys(records: list[RunRecord]) -> list[RowKey]:
    """(ground truth, task, method, setting, sweep) of every record."""
    by_method: dict[str, list[RunRecord]] = {}
    for rec in records:
        by_method.setdefault(rec.method, []).append(rec)
    defaults = {m: method_defaults(m, recs) for m, recs in by_method.items()}
    keys = [RowKey(gt, rec.task, rec.method, setting(rec, defaults[rec.method]), rec.folder)
            for gt, rec in zip(ground_truth_labels(records), records)]
    # A record of a task that is not installed is labelled against the task defaults its own
    # config holds, so records made before and after that task changed its defaults can share a
    # label with different parameters. Such rows are told apart by their parameters against the
    # class's own defaults.
    params: dict[tuple, set] = {}
    for key, rec in zip(keys, records):
        params.setdefault(key, set()).add(json.dumps(method_params(rec), sort_keys=True, default=str))
    return [key if len(params[key]) == 1 else
            key._replace(setting=_explicit_setting(rec, defaults[rec.method]))
            for key, rec in zip(keys, records)]


def _explicit_setting(rec: RunRecord, defaults: dict) -> str:
    """The record's parameters that differ from ``defaults`` alone (no task defaults), or
    'class defaults' when none does."""
    own = RunRecord.from_dict({**rec.as_dict(), "task": None, "config": {**(rec.config or {}), "task": {}}})
    return setting(own, defaults) or "class defaults"


def chosen_records(records: list[RunRecord]) -> dict[RowKey, tuple[RunRecord, list[RunRecord]]]:
    """Row key (ground truth, task, method, setting, sweep) -> (the record shown: the newest ok
    one, else the newest; all records of the row)."""
    by_row: dict[RowKey, list[RunRecord]] = {}
    for key, rec in zip(row_keys(records), records):
        by_row.setdefault(key, []).append(rec)
    out = {}
    for key, recs in by_row.items():
        ok = [r for r in recs if r.is_ok]
        out[key] = (ok[-1] if ok else recs[-1], recs)
    return out


def ground_truths(records: list[RunRecord]) -> dict[str, dict]:
    """Per ground-truth label: its task, key, LDS ceiling with interval, reliability, size and
    warning, from its newest ok record (else its newest record)."""
    out = {}
    labels = ground_truth_labels(records)
    for want_ok in (False, True):
        for rec, label in zip(records, labels):
            if not want_ok or rec.is_ok:
                out[label] = {k: getattr(rec, k) for k in ("task", "gt_key", "lds_ceiling", "lds_ceiling_ci",
                                                      "gt_reliability", "gt_seeds", "gt_subsets",
                                                      "gt_warning", "n_train")}
    return out


def _row(key: tuple, rec: RunRecord, recs: list[RunRecord]) -> dict:
    ci = rec.lds_ci or [None, None]
    ok = [r for r in recs if r.is_ok]
    by_seed = {_method_seed(r): r.lds for r in ok if r.lds is not None}
    return {
        "ground_truth": key.ground_truth, "task": rec.task, "method": rec.method,
        "setting": shown_setting(key.setting, rec), "sweep": key.sweep, "status": rec.status, "lds": rec.lds,
        "lds_ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "",
        "lds_ci_low": ci[0], "lds_ci_high": ci[1],
        "normalized_lds": rec.normalized_lds, "tied_with_best": "",
        "lds_sd_over_seeds": float(np.std(list(by_seed.values()), ddof=1)) if len(by_seed) > 1 else None,
        "method_seeds": len(by_seed) or None,
        **row_cost(rec, recs),
        "trainings": rec.trainings, "overloaded": True if rec.overloaded else None,
        "n_train": rec.n_train, "n_query": rec.n_query,
        "test_acc": (rec.model_quality or {}).get("test_acc"),
        "test_loss": (rec.model_quality or {}).get("test_loss"), "runs": len(recs),
    }


def comparable(chosen: dict, gt: str) -> dict[str, np.ndarray]:
    """Per-query LDS of every row on ground truth ``gt`` whose shown record is ok, by row label."""
    return {row_label(key): _per_query(rec) for key, (rec, _) in chosen.items()
            if key.ground_truth == gt and rec.is_ok and rec.lds_per_query}


def build(records: list[RunRecord]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """The leaderboard (one row per ground truth, method, setting and sweep), the pairwise tests
    and the ground truths (label -> info, with ``cached_fits``: rows whose fit read cached
    curvature factors)."""
    chosen = chosen_records(records)
    gts = ground_truths(records)
    rows = {key: _row(key, rec, recs) for key, (rec, recs) in chosen.items()}
    pairs = []
    for gt in gts:
        per_query = comparable(chosen, gt)
        if len(per_query) < 2:
            continue
        table = pairwise_table(per_query)
        ties = tied_with_best(per_query, pairs=table)
        for key, row in rows.items():
            if key.ground_truth == gt and row_label(key) in ties:
                row["tied_with_best"] = "≈" if ties[row_label(key)] else ""
        for p in table:
            pairs.append({"ground_truth": gt, "method_a": p.a, "method_b": p.b, "mean_diff": p.mean_diff,
                          "ci_low": p.ci[0], "ci_high": p.ci[1], "p_value": p.p_value, "p_holm": p.p_holm,
                          "queries": p.n, "significant": p.p_holm < 0.05})
    for key, (rec, recs) in chosen.items():
        if key.ground_truth in gts and row_cost(rec, recs)["from_cache"]:
            gts[key.ground_truth].setdefault("cached_fits", []).append(row_label(key))
    df = pd.DataFrame(list(rows.values()), columns=COLUMNS)
    if not df.empty:
        df["_ok"] = df["status"] == "ok"
        df = df.sort_values(["ground_truth", "_ok", "lds"], ascending=[True, False, False]).drop(columns="_ok")
        df = df.reset_index(drop=True)
    return df, pd.DataFrame(pairs), gts


def cost_by_size(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run of every task whose runs span several model sizes (the leaderboard shows
    one run per method): parameters, status, fit and score seconds, peak memory, and whether the
    fit read cached curvature factors (its time is then a file read, not a fit)."""
    sizes: dict[str, set] = {}
    for r in records:
        if r.num_params:
            sizes.setdefault(r.task, set()).add(r.num_params)
    rows = []
    for r in records:
        if len(sizes.get(r.task, ())) < 2:
            continue
        rows.append({"task": r.task, "method": r.method,
                     "size": r.task_config.get("size"),
                     "parameters": r.num_params, "status": r.status,
                     **{k: v for k, v in run_cost(r).items() if k != "from_cache"},
                     "fit_from_cache": fit_from_cache(r)})
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["task", "method", "parameters"], na_position="last").reset_index(drop=True)
        df = df.drop(columns=[c for c in ("flops", "warm_s") if df[c].isna().all()])
    return df


def ceiling_text(info: dict) -> str:
    """The ground truth's LDS ceiling with its interval and size, as one phrase ('' without a
    ground truth)."""
    if not info.get("gt_key"):
        return ""
    size = f"{info['gt_subsets']} subsets x {info['gt_seeds']} seeds"
    if info.get("lds_ceiling") is None:
        why = ("it needs gt.seeds >= 2" if (info.get("gt_seeds") or 0) < 2
               else "no run on this ground truth reached the LDS")
        return f"LDS ceiling unknown ({size}; {why})"
    lo, hi = info["lds_ceiling_ci"]
    return (f"LDS ceiling {info['lds_ceiling']:.3f} [{lo:.3f}, {hi:.3f}] (ground-truth reliability "
            f"{info['gt_reliability']:.3f}; {size})")


def _ceiling_line(gt: str, info: dict) -> str:
    line = f"**{gt}**" + (f": {ceiling_text(info)}" if ceiling_text(info) else "")
    if observable_note(info.get("task")):
        line += f"\n\n{observable_note(info.get('task'))}"
    if info.get("gt_warning"):
        line += f"\n\n> warning: {info['gt_warning']}"
    return line


def observable_note(task: str | None) -> str:
    """What the LDS of a language-model task (capability ``per_token``) is measured on, or ''."""
    try:
        per_token = bool(task) and "per_token" in TASKS.get(task).capabilities
    except UnknownNameError:  # a task no longer installed
        return ""
    return ("Observable: each query's mean token loss (nats per token); per-token scores are "
            "reduced to sequence scores by their mean over tokens, so the LDS judges sequence "
            "scores (a per-token LDS does not exist yet). test_acc is next-token accuracy, "
            "test_loss the held-out mean token loss.") if per_token else ""


def shown_columns(df: pd.DataFrame, drop: list[str]) -> pd.DataFrame:
    """``df`` without the columns ``drop``, the optional columns no row fills, and ``status`` when
    every row is ok."""
    empty = [c for c in OPTIONAL if c in df and (df[c].isna() | (df[c] == "")).all()]
    if "status" in df and (df["status"] == "ok").all():
        empty.append("status")
    return df.drop(columns=[c for c in [*drop, *empty] if c in df])


def _with_flops_text(df: pd.DataFrame) -> str:
    """``df`` as a markdown table, its FLOPs in engineering notation."""
    if "flops" not in df:
        return df.to_markdown(index=False, floatfmt=".4g")
    return df.assign(flops=df["flops"].map(engineering)).to_markdown(
        index=False, floatfmt=".4g", disable_numparse=[list(df.columns).index("flops")])


def render_markdown(df: pd.DataFrame, pairs: pd.DataFrame, gts: dict,
                    costs: pd.DataFrame | None = None) -> str:
    parts = ["# Leaderboard", "",
             "One table per ground truth (task, n_train, subsets x seeds, alpha, observable, #hash); "
             "a row is a method at one setting (parameters that differ from its defaults). LDS: mean "
             "Spearman over queries (95% bootstrap interval). normalized_lds = LDS / ceiling. ≈ marks "
             "rows statistically tied with the best on the same ground truth (paired Wilcoxon over "
             "queries, Holm-adjusted p >= 0.05 over all pairs of that ground truth).", ""]
    for gt, sub in df.groupby("ground_truth", sort=True):
        info = gts.get(gt, {})
        parts += [_ceiling_line(gt, info), ""]
        shown = shown_columns(sub, NOT_IN_MARKDOWN)
        if "overloaded" in shown:
            shown = shown.assign(overloaded=shown["overloaded"].map(lambda v: "⚠" if v is True else ""))
        shown = shown.astype(object).where(shown.notna(), None)  # blank, not "nan", where unmeasured
        text = [list(shown.columns).index("flops")] if "flops" in shown else []  # kept as written
        if text:
            shown["flops"] = shown["flops"].map(engineering)
        parts += [shown.to_markdown(index=False, floatfmt=".4g", missingval="", disable_numparse=text), ""]
        if "overloaded" in shown:
            parts += ["⚠ overloaded: measured while the machine was overloaded; its times are not "
                      "comparable with the other rows", ""]
        cached = sorted(info.get("cached_fits", []))
        if cached:
            parts += [f"fit_s and score_s of {', '.join(cached)}: work read from the cache of an "
                      "earlier run whose cost is unknown (cached before costs were kept; a file read, "
                      "not the cost of computing it)", ""]
        if "warm_s" in shown:
            parts += ["Costs are from scratch: a run that read work cached by an earlier run or trial "
                      "(curvature factors, ensemble members) counts it at what computing it cost; "
                      "warm_s is that run's own fit + score seconds, the cache read", ""]
        if not pairs.empty and (pairs["ground_truth"] == gt).any():
            p = pairs[pairs["ground_truth"] == gt].drop(columns="ground_truth")
            parts += [f"Pairwise comparisons ({gt}): mean per-query LDS difference a - b, paired "
                      "bootstrap 95% interval, Wilcoxon p-value and its Holm adjustment over these "
                      f"{len(p)} comparisons (significant: p_holm < 0.05)", "",
                      p.to_markdown(index=False, floatfmt=".3g"), ""]
    if costs is not None and not costs.empty:
        for task, c in costs.groupby("task", sort=True):
            parts += [f"Cost by model size ({task}): every run, fit and score seconds and peak "
                      "memory above each phase's start (MiB)", "",
                      _with_flops_text(c.drop(columns="task")), ""]
    return "\n".join(parts)


def write(results_dirs: list[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Write leaderboard.md, leaderboard.csv and pairwise.csv for the records of ``results_dirs``
    into ``out`` (default: the one results folder); returns the leaderboard."""
    results_dirs = [Path(d) for d in ([results_dirs] if isinstance(results_dirs, (str, Path)) else results_dirs)]
    out = Path(out) if out is not None else results_dirs[0]
    records = read_folders(results_dirs)
    df, pairs, gts = build(records)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "leaderboard.csv", df.to_csv(index=False).encode())
    atomic_write_bytes(out / "pairwise.csv", pairs.to_csv(index=False).encode())
    metrics = metric_table(chosen_records(records))
    agree = agreement(metrics)
    atomic_write_bytes(out / "leaderboard_metrics.csv", metrics.to_csv(index=False).encode())
    atomic_write_bytes(out / "metric_agreement.csv", agree.to_csv(index=False).encode())
    paired = pairwise_metrics(chosen_records(records))
    atomic_write_bytes(out / "pairwise_metrics.csv", paired.to_csv(index=False).encode())
    markdown = render_markdown(df, pairs, gts, cost_by_size(records))
    section = render_metric_tables(metrics, agree)
    if section:
        markdown += "\n" + section
    seeds, seed_pairs = across_seeds(chosen_records(records))
    if not seeds.empty:
        atomic_write_bytes(out / "leaderboard_seeds.csv", seeds.to_csv(index=False).encode())
        atomic_write_bytes(out / "pairwise_seeds.csv", seed_pairs.to_csv(index=False).encode())
        markdown = "\n".join([markdown, *render_seeds(seeds, seed_pairs)])
    trend = trends(chosen_records(records))
    if not trend.empty:
        atomic_write_bytes(out / "trend.csv", trend.to_csv(index=False).encode())
        markdown = "\n".join([markdown, *render_trend(trend)])
    stages = stagewise_table(chosen_records(records))
    if not stages.empty:
        atomic_write_bytes(out / "stagewise.csv", stages.to_csv(index=False).encode())
        markdown = "\n".join([markdown, *render_stagewise(stages)])
    importance = importance_table(records)
    if not importance.empty:
        atomic_write_bytes(out / "importance.csv", importance.to_csv(index=False).encode())
        markdown = "\n".join([markdown, *render_importance(importance)])
    atomic_write_bytes(out / "leaderboard.md", markdown.encode())
    return df
