"""The run record: the contract between a run and every reader of its results.

A run builds one :class:`RunRecord` (:func:`new_record`) and writes it as a JSON line to
``RESULTS_DIR/runs.jsonl`` (:func:`tdabench.harness.read.results.append_record`); the leaderboard,
report, adequacy, insight and tracking read them through
:func:`tdabench.harness.read.results.read_records`, which passes every line through
:func:`upgrade` (records written by earlier versions read as the current schema) and
:func:`invalid_reason` (a record of the wrong types or out of range is skipped, never ranked)
and hands each over as a :class:`RunRecord`: readers use its attributes (a field the record lacks
reads as None), not string keys.

Units: seconds for ``time_s`` and ``cpu_time_s``, MiB for ``peak_mem_mb`` and ``peak_rss_mb``,
floating-point operations for ``flops``; each of these maps a phase (prepare, ground_truth, fit,
score, lds) to its value. ``lds`` is the mean over queries of the Spearman correlation between
predicted and retrained outcomes, in [-1, 1] (``None`` when the run did not reach it, or for
cost-only tasks); its interval ``lds_ci`` is ordered and holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from tdabench.harness.core.typecheck import fits

#: 1: records without the field (written before the schema was versioned); 2: this layout
SCHEMA_VERSION = 2
STATUSES = ("ok", "error", "oom", "timeout", "unsupported", "degenerate_model")
#: statuses of a run that failed (a sweep with one of them exits non-zero)
FAILED = ("error", "oom", "timeout", "degenerate_model")


class _Unset:
    """The value of a field a record does not have (left out of its dict form)."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass
class RunRecord:
    """Every field a run writes. A field left :data:`UNSET` is absent from the JSON line.

    Readers use attributes: a field the record does not have reads as None (as ``dict.get`` would
    give), while :meth:`as_dict` still leaves it out, so a record read and written back is
    unchanged; :meth:`has` tells an absent field from one set to None. Nested JSON objects
    (``config``, ``metrics``, ``time_s``...) stay dicts."""

    schema_version: int = UNSET
    run_id: str = UNSET                  # <task>-<method>-<8 hex digits>; names the scores file too
    task: str = UNSET
    method: str = UNSET
    status: str = UNSET                  # one of STATUSES
    message: str | None = UNSET          # why the status is not ok
    failed_phase: str | None = UNSET
    traceback: str = UNSET
    group: str = UNSET                   # the sweep (or single run) the record belongs to
    config: dict[str, Any] = UNSET       # the resolved config, every method parameter included
    config_hash: str = UNSET             # hash of the settings that determine the numbers
    gt_key: str | None = UNSET           # the ground truth's cache key (same key: same ground truth)
    gt_subsets: int | None = UNSET
    gt_seeds: int | None = UNSET         # retrainings per subset (1 in the same-seed mode)
    gt_mode: str = UNSET                 # fresh_seeds or same_seed
    gt_cached: bool = UNSET
    gt_source: dict[str, Any] | None = UNSET  # with gt.from: the bundle or file the ground truth was read
                                         # from (format, path, manifest_sha256 or the files' sha256, gt_key)
    count_replay_s: float = UNSET        # wall seconds of the untimed counting replay (cost.count=separate)
    gt_wait_s: float = UNSET             # seconds spent waiting for another run's ground truth
    gt_degenerate_share: float | None = UNSET  # share of retrained models no better than chance
    quality_check: str = UNSET           # why the model was not checked against chance
    n_train: int | None = UNSET
    n_query: int | None = UNSET
    num_params: int = UNSET
    model_quality: dict[str, float | None] = UNSET  # test_acc, test_loss of the attributed model
    trainings: int | float = UNSET       # full model trainings the method consumed
    lds: float | None = UNSET
    lds_ci: list[float] | None = UNSET   # bootstrap 95% interval over queries
    lds_per_query: list[float | None] = UNSET
    constant_outcome_queries: list[int] = UNSET
    constant_prediction_queries: list[int] = UNSET
    gt_reliability: float | None = UNSET
    gt_reliability_ci: list[float | None] | None = UNSET
    lds_ceiling: float | None = UNSET
    lds_ceiling_ci: list[float | None] | None = UNSET
    normalized_lds: float | None = UNSET
    gt_warning: str = UNSET
    metrics: dict[str, dict[str, Any]] | None = UNSET  # per metric: status (ok, unsupported, error),
                                         # value, ci [low, high], ceiling (None without one), its own fields
    query_ids: list[int] | None = UNSET  # the queries' indices into the task's held-out pool
    split: str | None = UNSET            # "test": the queries and ground truth the record is scored on
    tuned: dict[str, Any] | None = UNSET  # with tune.trials > 0: trials, search_space, best_params,
                                         # val_lds, val_gt_key, val_query_ids, study, storage
    time_s: dict[str, float | None] = UNSET
    cpu_time_s: dict[str, float | None] = UNSET
    peak_mem_mb: dict[str, float | None] = UNSET
    peak_rss_mb: dict[str, float | None] = UNSET
    flops: dict[str, int | float | None] = UNSET
    load_avg: dict[str, float | None] = UNSET  # one-minute load average per phase
    overloaded: bool = UNSET             # the load exceeded the core count during a timed phase
    diagnostics: dict[str, Any] | None = UNSET
    cached_work: list[str] = UNSET       # work fit and score read from the cache instead of computing it
    scores_file: str = UNSET             # relative to the results folder, inside it
    write_error: str = UNSET             # why the result could not be written where it belonged
    wandb_dir: str | None = UNSET
    version: str = UNSET                 # tdabench's version
    git_sha: str | None = UNSET
    libraries: dict[str, str] = UNSET
    device: str = UNSET
    host: str = UNSET
    platform: str = UNSET
    timestamp: str = UNSET               # UTC, ISO 8601
    extra: dict[str, Any] = field(default_factory=dict)  # fields of later versions, kept as they are

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        return None if value is UNSET else value

    def has(self, name: str) -> bool:
        """Whether the record has the field ``name`` (set, possibly to None)."""
        return vars(self).get(name, UNSET) is not UNSET

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"

    @property
    def task_config(self) -> dict[str, Any]:
        """The resolved task config (``config["task"]``), {} when the record has none."""
        return (self.config or {}).get("task") or {}

    @property
    def method_config(self) -> dict[str, Any]:
        """The resolved method config (``config["method"]``), {} when the record has none."""
        return (self.config or {}).get("method") or {}

    @classmethod
    def from_dict(cls, raw: dict) -> RunRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in raw.items() if k in known},
                   extra={k: v for k, v in raw.items() if k not in known})

    def as_dict(self) -> dict:
        """The record as its JSON object: set fields only, later versions' fields included."""
        own = vars(self)
        out = {f.name: own[f.name] for f in fields(self) if f.name != "extra" and own[f.name] is not UNSET}
        return {**out, **self.extra}


#: keys every record has, whatever its status (a line without them is not a record)
REQUIRED = ("run_id", "task", "method", "status")
#: an ``ok`` record with an LDS also has these keys (besides :data:`REQUIRED`)
REQUIRED_OK_KEYS = ("lds", "lds_ci", "config_hash")
_TYPES = get_type_hints(RunRecord)
_TOLERANCE = 1e-6  # rounding between a value and its interval


def _interval_problem(name: str, ci, value=None, bounds: tuple[float, float] | None = None) -> str | None:
    """Why ``ci`` is no interval [low, high] (ordered, finite, within ``bounds``, holding ``value``)."""
    if ci is None:
        return None
    if not (isinstance(ci, list) and len(ci) == 2 and all(fits(v, float) for v in ci)):
        return f"{name}={ci!r} is not an interval [low, high] of two finite numbers"
    lo, hi = ci
    if lo > hi:
        return f"{name}={ci!r} is not ordered (low > high)"
    if bounds and (lo < bounds[0] - _TOLERANCE or hi > bounds[1] + _TOLERANCE):
        return f"{name}={ci!r} lies outside [{bounds[0]}, {bounds[1]}]"
    if fits(value, float) and not lo - _TOLERANCE <= value <= hi + _TOLERANCE:
        return f"{name}={ci!r} does not hold the value {value}"
    return None


def scores_path(results_dir: str | Path, scores_file) -> Path:
    """The file a record's ``scores_file`` names, resolved inside ``results_dir``; ValueError with
    the reason when it is not a relative path or leads outside the folder (links included)."""
    if not isinstance(scores_file, str) or not scores_file or Path(scores_file).is_absolute():
        raise ValueError(f"scores_file={scores_file!r} is not a path relative to the results folder")
    root = Path(results_dir).resolve()
    path = (root / scores_file).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"scores_file={scores_file!r} leads outside the results folder {root}; it is not read")
    return path


def invalid_reason(raw: dict) -> str | None:
    """Why ``raw`` (a record in the current schema) is not a valid record, or None: required keys,
    the type of every known field, the status, the LDS (finite, in [-1, 1]) and the intervals
    (ordered, holding their value), the metrics, and a ``scores_file`` inside its folder."""
    need = list(REQUIRED) + (list(REQUIRED_OK_KEYS) if raw.get("status") == "ok" and raw.get("lds") is not None
                             else [])
    missing = [k for k in need if k not in raw]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, value in raw.items():
        if key in _TYPES and key != "extra" and not fits(value, _TYPES[key]):
            return f"{key}={value!r:.60} is not of type {_TYPES[key]}"
    if raw["status"] not in STATUSES:
        return f"status={raw['status']!r} is not one of {', '.join(STATUSES)}"
    lds = raw.get("lds")
    if lds is not None and not -1 - _TOLERANCE <= lds <= 1 + _TOLERANCE:
        return f"lds={lds} lies outside [-1, 1]"
    problem = (_interval_problem("lds_ci", raw.get("lds_ci"), lds, (-1, 1))
               or _metrics_problem(raw.get("metrics") or {}))
    if problem:
        return problem
    if "scores_file" in raw:
        try:
            scores_path(".", raw["scores_file"])
        except ValueError as exc:
            return str(exc).split(";")[0]
    return None


def _metrics_problem(metrics: dict) -> str | None:
    for name, entry in metrics.items():
        value = entry.get("value")
        if value is not None and not fits(value, float):
            return f"metrics.{name}.value={value!r} is not a finite number"
        problem = _interval_problem(f"metrics.{name}.ci", entry.get("ci"), value)
        if problem:
            return problem
    return None


def upgrade(raw: dict) -> dict:
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
    return rec


def validated(raw: dict) -> tuple[RunRecord | None, str | None]:
    """``(record, None)`` with the record in the current schema as a :class:`RunRecord`, or
    ``(None, reason)`` when it is not valid."""
    rec = upgrade(raw)
    reason = invalid_reason(rec)
    return (None, reason) if reason else (RunRecord.from_dict(rec), None)


def new_record(**fields) -> dict:
    """A record of the current schema holding ``fields`` (each a declared field of
    :class:`RunRecord`; an undeclared one raises TypeError), in its dict form."""
    return RunRecord(schema_version=SCHEMA_VERSION, **fields).as_dict()
