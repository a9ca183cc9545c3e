"""The run record: the contract between a run and every reader of its results.

A run builds one :class:`RunRecord` (:meth:`RunRecord.new`) and writes it as a JSON line to
``RESULTS_DIR/runs.jsonl`` (:func:`tdabench.harness.read.results.append_record`); the leaderboard,
report, adequacy, insight and tracking read them through
:func:`tdabench.harness.read.results.read_records`, which passes every line through
:func:`upgrade` (records written by earlier versions read as the current schema) and
:func:`invalid_reason` (a record of the wrong types or out of range is skipped, never ranked)
and hands each over as a :class:`RunRecord`: readers use its attributes (every field is optional:
a field the record lacks is None), not string keys.

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


@dataclass
class TunedInfo:
    """A tuned record's ``tuned`` field: how its setting was chosen on the validation ground truth.
    Fields written by later versions are kept in ``extra``."""

    trials: int | None = None                # the study's trial budget
    search_space: dict[str, Any] | None = None  # parameter -> its distribution, described
    best_params: dict[str, Any] | None = None  # the chosen (tuned) parameters
    best_trial: int | None = None
    val_lds: float | None = None             # the chosen trial's validation LDS
    val_gt_key: str | None = None
    val_query_ids: list[int] | None = None
    val_subsets: int | None = None
    val_seeds: int | None = None
    max_cpu_s: float | None = None           # the per-trial CPU cap
    select_cpu_s: float | None = None        # the cap of the final choice (the tuned frontier)
    best_cpu_s: float | None = None
    completed_trials: int | None = None
    refused_trials: int | None = None
    study: str | None = None
    storage: str | None = None
    trials_cpu_s: float | None = None
    trial_log: list[dict[str, Any]] | None = None  # every trial: number, state, params, distributions, value
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict) -> TunedInfo:
        own = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in raw.items() if k in own}, extra={k: v for k, v in raw.items() if k not in own})

    def as_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}, **self.extra}


@dataclass
class MetricEntry:
    """One entry of a record's ``metrics``: the metric's status (ok, unsupported, error; absent
    in early records, read as ok), value, 95% interval ``ci`` and ``ceiling`` (None without one),
    why it has no value, the fields the read side compares across metrics, and the metric's other
    fields (``own``)."""

    status: str | None = None
    value: float | None = None
    ci: list[float | None] | None = None
    ceiling: float | None = None
    message: str | None = None
    outcomes_key: str | None = None          # the outcomes scored against, where not the LDS ground truth's
    spearman: float | None = None            # rank agreement with the outcomes (leave-one-out)
    per_query: list[float | None] | None = None  # per-query values, for paired tests
    suspicion: list[float] | None = None     # per-example scores of mislabel detection ...
    flipped_idx: list[int] | None = None     # ... and which examples were flipped
    snapshots: list[dict[str, Any]] | None = None  # lds_stagewise: step, lds, ci per snapshot
    own: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ok(self) -> bool:
        return (self.status or "ok") == "ok"

    @property
    def interval(self) -> tuple[float | None, float | None]:
        """``ci`` as (low, high), (None, None) without one."""
        return tuple(self.ci) if self.ci else (None, None)

    @classmethod
    def from_dict(cls, raw: dict) -> MetricEntry:
        mine = {f.name for f in fields(cls)} - {"own"}
        return cls(**{k: v for k, v in raw.items() if k in mine}, own={k: v for k, v in raw.items() if k not in mine})


@dataclass
class RunRecord:
    """Every field a run writes; each is optional (None: the record does not have it, or has it
    as null). ``present`` names the fields the record holds even where they are None (set by
    :meth:`new`, :meth:`update` and :meth:`from_dict`): :meth:`as_dict` writes those and every
    field that is not None, so a record read and written back is unchanged, and :meth:`has` tells
    an absent field from one set to None. Nested JSON objects (``config``, ``time_s``...) stay dicts."""

    schema_version: int | None = None
    run_id: str | None = None                  # <task>-<method>-<8 hex digits>; names the scores file too
    task: str | None = None
    method: str | None = None
    status: str | None = None                  # one of STATUSES
    message: str | None = None          # why the status is not ok
    failed_phase: str | None = None
    traceback: str | None = None
    group: str | None = None                   # the sweep (or single run) the record belongs to
    config: dict[str, Any] | None = None       # the resolved config, every method parameter included
    config_hash: str | None = None             # hash of the settings that determine the numbers
    gt_key: str | None = None           # the ground truth's cache key (same key: same ground truth)
    gt_subsets: int | None = None
    gt_seeds: int | None = None         # retrainings per subset (1 in the same-seed mode)
    gt_mode: str | None = None                 # fresh_seeds or same_seed
    gt_cached: bool | None = None
    gt_models_together: int | None = None  # models the ground truth trained at once when this run computed
                                           # it (1: one at a time; halved where memory ran out, as the log
                                           # says); its peak_mem_mb over this is per model
    gt_source: dict[str, Any] | None = None  # with gt.from: the bundle or file the ground truth was read
                                         # from (format, path, manifest_sha256 or the files' sha256, gt_key)
    count_replay_s: float | None = None        # wall seconds of the untimed counting replay (cost.count=separate)
    gt_wait_s: float | None = None             # seconds spent waiting for another run's ground truth
    gt_degenerate_share: float | None = None  # share of retrained models no better than chance
    quality_check: str | None = None           # why the model was not checked against chance
    n_train: int | None = None
    n_query: int | None = None
    num_params: int | None = None
    model_quality: dict[str, float | None] | None = None  # test_acc, test_loss of the attributed model
    trainings: int | float | None = None       # full model trainings the method consumed
    lds: float | None = None
    lds_ci: list[float] | None = None   # bootstrap 95% interval over queries
    lds_per_query: list[float | None] | None = None
    constant_outcome_queries: list[int] | None = None
    constant_prediction_queries: list[int] | None = None
    gt_reliability: float | None = None
    gt_reliability_ci: list[float | None] | None = None
    lds_ceiling: float | None = None
    lds_ceiling_ci: list[float | None] | None = None
    normalized_lds: float | None = None
    gt_warning: str | None = None
    metrics: dict[str, dict[str, Any]] | None = None  # per metric: status (ok, unsupported, error),
                                         # value, ci [low, high], ceiling (None without one), its own fields
    query_ids: list[int] | None = None  # the queries' indices into the task's held-out pool
    split: str | None = None            # "test": the queries and ground truth the record is scored on
    tuned: dict[str, Any] | None = None  # with tune.trials > 0: trials, search_space, best_params,
                                         # val_lds, val_gt_key, val_query_ids, study, storage
    time_s: dict[str, float | None] | None = None
    cpu_time_s: dict[str, float | None] | None = None
    peak_mem_mb: dict[str, float | None] | None = None
    peak_rss_mb: dict[str, float | None] | None = None
    flops: dict[str, int | float | None] | None = None
    load_avg: dict[str, float | None] | None = None  # one-minute load average per phase
    overloaded: bool | None = None             # the load exceeded the core count during a timed phase
    diagnostics: dict[str, Any] | None = None
    cached_work: list[str] | None = None       # work fit and score read from the cache instead of computing it
    cold_cost: dict[str, Any] | None = None    # with cached_work: time_s, cpu_time_s, flops, peak_mem_mb per
                                               # phase from scratch (own + the cached work's), unknown
    scores_file: str | None = None             # relative to the results folder, inside it
    write_error: str | None = None             # why the result could not be written where it belonged
    wandb_dir: str | None = None
    version: str | None = None                 # tdabench's version
    git_sha: str | None = None
    libraries: dict[str, str] | None = None
    device: str | None = None
    host: str | None = None
    platform: str | None = None
    timestamp: str | None = None               # UTC, ISO 8601
    extra: dict[str, Any] = field(default_factory=dict)  # fields of later schema versions, kept as they are
    present: set[str] = field(default_factory=set, repr=False, compare=False)
    #: the results folder's name when a reader combines several (not written: no record field)
    folder: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, **fields) -> RunRecord:
        """A record of the current schema holding ``fields`` (each a declared field; an undeclared
        one raises TypeError), every one of them written even where it is None."""
        return cls(schema_version=SCHEMA_VERSION, **fields, present={"schema_version", *fields})

    def update(self, fields: dict | None = None, **more) -> None:
        """Set declared fields (a dict and/or keywords); an undeclared one raises TypeError."""
        for name, value in {**(fields or {}), **more}.items():
            if name not in _FIELDS:
                raise TypeError(f"RunRecord has no field {name!r}")
            setattr(self, name, value)
            self.present.add(name)

    def drop(self, name: str) -> None:
        """Remove the field ``name`` (the record no longer has it)."""
        setattr(self, name, None)
        self.present.discard(name)

    def has(self, name: str) -> bool:
        """Whether the record has the field ``name`` (set, possibly to None)."""
        return name in self.present or getattr(self, name, None) is not None

    @property
    def is_ok(self) -> bool:
        return self.status == "ok"

    @property
    def tuning(self) -> TunedInfo | None:
        """The ``tuned`` field, typed (None for an untuned record)."""
        return TunedInfo.from_dict(self.tuned) if isinstance(self.tuned, dict) else None

    @property
    def metric_entries(self) -> dict[str, MetricEntry]:
        """The ``metrics`` field, each entry typed ({} for a record without metrics)."""
        return {name: MetricEntry.from_dict(entry) for name, entry in (self.metrics or {}).items()
                if isinstance(entry, dict)}

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
        return cls(**{k: v for k, v in raw.items() if k in _FIELDS},
                   extra={k: v for k, v in raw.items() if k not in _FIELDS},
                   present={k for k in raw if k in _FIELDS})

    def as_dict(self) -> dict:
        """The record as its JSON object: the fields it holds, later versions' fields included."""
        out = {name: getattr(self, name) for name in _FIELDS if self.has(name)}
        return {**out, **self.extra}


#: the record's own fields (those of its JSON object)
_FIELDS = tuple(f.name for f in fields(RunRecord) if f.name not in ("extra", "present", "folder"))


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
        if key in _FIELDS and not fits(value, _TYPES[key]):
            return f"{key}={value!r:.60} is not of type {_TYPES[key]}"
    if raw["status"] not in STATUSES:
        return f"status={raw['status']!r} is not one of {', '.join(STATUSES)}"
    lds = raw.get("lds")
    if lds is not None and not -1 - _TOLERANCE <= lds <= 1 + _TOLERANCE:
        return f"lds={lds} lies outside [-1, 1]"
    if lds is None and raw["status"] == "ok" and _claims_lds(raw):
        return "status ok without an LDS (a run scored on a ground truth has a finite lds, or is not ok)"
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


def _claims_lds(raw: dict) -> bool:
    """Whether the record was scored with the LDS: it names a ground truth (cost-only tasks have
    none) and lists the LDS among its metrics (records before metric plugins always computed it)."""
    if raw.get("gt_key") is None:
        return False
    metrics = raw.get("metrics")
    entry = (metrics or {}).get("lds") if metrics is not None else {"status": "ok"}
    return isinstance(entry, dict) and entry.get("status") == "ok"


def _metrics_problem(metrics: dict) -> str | None:
    for name, raw in metrics.items():
        entry = MetricEntry.from_dict(raw)
        value = entry.value
        if value is not None and not fits(value, float):
            return f"metrics.{name}.value={value!r} is not a finite number"
        problem = _interval_problem(f"metrics.{name}.ci", entry.ci, value)
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


