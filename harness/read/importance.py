"""Which settings matter: the importance of each searched parameter in tuned records.

A tuned record keeps every trial of its study (``tuned.trial_log``: the search-space values, their
Optuna distributions as JSON, the validation LDS of the completed ones), so this reads no study
file. Per record, a study is rebuilt in memory from the completed, not refused trials and Optuna's
fANOVA evaluator (Hutter et al. 2014: the share of the validation LDS's variance over the search
space that each parameter explains, from a random forest fitted to the trials) gives each
parameter's importance; the gain of tuning is the best trial's validation LDS minus the default's
(trial 0, the method's own setting, enqueued first).

Records of one task, method and training-set size but different data seeds are summarized
together: the mean importance and gain, with their range over the seeds (low, high), in
``importance.csv`` (:data:`COLUMNS`) and a table in leaderboard.md. With few trials (fewer than
:data:`MIN_TRIALS` completed) an importance is not estimated (blank): the forest would describe
noise.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from tdabench.harness.read.record import RunRecord

log = logging.getLogger(__name__)

COLUMNS = ["task", "method", "n_train", "parameter", "importance", "importance_low", "importance_high",
           "seeds", "trials", "completed", "default_val_lds", "best_val_lds", "gain", "gain_low", "gain_high"]
#: completed trials below which no importance is estimated
MIN_TRIALS = 3


def fanova(trials: list[dict], seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each parameter over the completed ``trials`` of a trial log (values
    sum to 1); ``{}`` when there are too few trials or nothing varied."""
    import optuna
    from optuna.distributions import json_to_distribution

    done = [t for t in trials if t.get("value") is not None and math.isfinite(t["value"])]
    if len(done) < MIN_TRIALS:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for t in done:
        study.add_trial(optuna.trial.create_trial(
            params=t["params"], value=t["value"],
            distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()}))
    try:
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)))
    except (RuntimeError, ValueError) as exc:  # e.g. every trial gave the same value
        log.info(f"no importance from {len(done)} trials: {exc}")
        return {}


def record_rows(rec: RunRecord) -> list[dict]:
    """One row per searched parameter of a tuned record (none without a trial log)."""
    tuned = rec.tuning
    trials = tuned.trial_log if tuned else None
    if not trials:
        return []
    values = {t["number"]: t.get("value") for t in trials}
    done = [v for v in values.values() if v is not None and math.isfinite(v)]
    marked = [t.get("value") for t in trials if t.get("default")]  # logs before the mark: trial 0
    default = marked[0] if marked else values.get(min(values)) if values else None
    best = max(done) if done else None
    imp = fanova(trials)
    drawn = {k for t in trials for k in t.get("params", {})}
    # a product dimension is drawn as "eps*nbeta" (tdabench.harness.plugin.space.trial_name): named so
    names = [next((k for k in sorted(drawn) if k.startswith(f"{p}*")), p) for p in sorted(tuned.search_space or {})]
    return [{"task": rec.task, "method": rec.method, "n_train": rec.n_train, "seed": (rec.config or {}).get("seed"),
             "parameter": p, "importance": imp.get(p) if imp else None, "trials": len(trials),
             "completed": len(done), "default_val_lds": default, "best_val_lds": best,
             "gain": None if best is None or default is None else best - default}
            for p in names]


def importance_table(records: list[RunRecord]) -> pd.DataFrame:
    """:data:`COLUMNS`: per task, method, size and parameter, over the data seeds of ok records."""
    latest = {}  # the last record of each study (a rerun with more trials continues it)
    for rec in records:
        if rec.is_ok and rec.tuning and rec.tuning.trial_log:
            latest[rec.tuning.study or rec.run_id] = rec
    rows = [r for rec in latest.values() for r in record_rows(rec)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    df = pd.DataFrame(rows)
    out = []
    for (task, method, n, p), g in df.groupby(["task", "method", "n_train", "parameter"], sort=True, dropna=False):
        imp, gain = g["importance"].dropna(), g["gain"].dropna()
        out.append({"task": task, "method": method, "n_train": n, "parameter": p,
                    "importance": imp.mean() if len(imp) else None,
                    "importance_low": imp.min() if len(imp) else None,
                    "importance_high": imp.max() if len(imp) else None,
                    "seeds": g["seed"].nunique(dropna=False), "trials": int(g["trials"].sum()),
                    "completed": int(g["completed"].sum()),
                    "default_val_lds": g["default_val_lds"].mean(), "best_val_lds": g["best_val_lds"].mean(),
                    "gain": gain.mean() if len(gain) else None, "gain_low": gain.min() if len(gain) else None,
                    "gain_high": gain.max() if len(gain) else None})
    return pd.DataFrame(out, columns=COLUMNS)


def render_importance(table: pd.DataFrame) -> list[str]:
    """The leaderboard.md section of :func:`importance_table` (nothing when it is empty)."""
    if table.empty:
        return []
    shown = table.astype(object).where(table.notna(), None)
    return ["## Which settings matter", "",
            "fANOVA importance of each searched parameter on the validation LDS (share of its variance "
            "over the trials; mean over data seeds, with their range low to high) and the gain of the best "
            f"trial over the default (trial 0). Blank: fewer than {MIN_TRIALS} completed trials.", "",
            shown.to_markdown(index=False, floatfmt=".3g", missingval=""), ""]
