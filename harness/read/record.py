"""The run record: the contract between a run and every reader of its results.

A run writes one :class:`RunRecord` as a JSON line to ``RESULTS_DIR/runs.jsonl``
(:func:`tdabench.harness.read.results.append_record`); the leaderboard, report, adequacy, insight and
tracking read them through :func:`tdabench.harness.read.results.read_records`, which passes every line
through :func:`upgrade`, so records written by earlier versions read as the current schema.

Units: seconds for ``time_s`` and ``cpu_time_s``, MiB for ``peak_mem_mb``, floating-point
operations for ``flops``; each of these maps a phase (prepare, ground_truth, fit, score, lds) to
its value. ``lds`` is the mean over queries of the Spearman correlation between predicted and
retrained outcomes (``None`` when the run did not reach it, or for cost-only tasks).
"""

from __future__ import annotations

from typing import Any, TypedDict

#: 1: records without the field (written before the schema was versioned); 2: this layout
SCHEMA_VERSION = 2
STATUSES = ("ok", "error", "oom", "timeout", "unsupported", "degenerate_model")


class RunRecord(TypedDict, total=False):
    schema_version: int
    run_id: str                  # <task>-<method>-<8 hex digits>; names the scores file too
    task: str
    method: str
    status: str                  # one of STATUSES
    message: str                 # why the status is not ok
    failed_phase: str | None
    traceback: str
    group: str                   # the sweep (or single run) the record belongs to
    config: dict[str, Any]       # the resolved config, every method parameter included
    config_hash: str             # hash of the settings that determine the numbers
    gt_key: str | None           # the ground truth's cache key (same key: same ground truth)
    split: str                   # "test": the queries and ground truth the record is scored on
    query_ids: list[int]         # the queries' indices into the task's held-out pool
    tuned: dict[str, Any]        # with tune.trials > 0: trials, search_space, best_params, val_lds,
                                 # val_gt_key, val_query_ids, study, storage (engine/tuning.py)
    gt_subsets: int
    gt_seeds: int
    gt_cached: bool
    count_replay_s: float        # wall seconds of the untimed counting replay (cost.count=separate)
    n_train: int
    n_query: int
    num_params: int
    model_quality: dict[str, float]  # test_acc, test_loss of the attributed model
    trainings: int               # full model trainings the method consumed
    lds: float | None
    lds_ci: list[float] | None   # bootstrap 95% interval over queries
    lds_per_query: list[float | None]
    constant_outcome_queries: list[int]
    constant_prediction_queries: list[int]
    gt_reliability: float | None
    gt_reliability_ci: list[float] | None
    lds_ceiling: float | None
    lds_ceiling_ci: list[float] | None
    normalized_lds: float | None
    gt_warning: str
    metrics: dict[str, dict[str, Any]]  # per metric: status (ok, unsupported, error), value, ci
                                        # [low, high], ceiling (None without one), its own fields
    time_s: dict[str, float]
    peak_mem_mb: dict[str, float]
    diagnostics: dict[str, Any] | None
    cached_work: list[str]       # work fit and score read from the cache (ensemble members,
                                 # curvature factors) instead of computing it; absent when none
    scores_file: str             # relative to the results folder
    wandb_dir: str | None
    version: str                 # tdabench's version
    git_sha: str | None
    libraries: dict[str, str]
    device: str
    host: str
    platform: str
    timestamp: str               # UTC, ISO 8601


#: keys every record has, whatever its status (a line without them is not a record)
REQUIRED = ("run_id", "task", "method", "status")


def upgrade(raw: dict) -> RunRecord:
    """The record ``raw`` in the current schema. Version 1 records (no ``schema_version``) lack
    only fields that later versions added; they get neutral values, never invented numbers."""
    rec: dict = dict(raw)
    version = rec.get("schema_version", 1)
    if version < 2:
        rec.setdefault("time_s", {})
        rec.setdefault("peak_mem_mb", {})
        rec.setdefault("config", {})
        rec.setdefault("lds", None)
        rec["schema_version"] = SCHEMA_VERSION
    return rec  # type: ignore[return-value]


def new_record(**fields) -> RunRecord:
    """A record of the current schema holding ``fields``."""
    return RunRecord(schema_version=SCHEMA_VERSION, **fields)  # type: ignore[typeddict-item]
