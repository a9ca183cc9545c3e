"""The run configuration, typed: one dataclass per section of ``conf/config.yaml`` whose field types
and ranges are the checks of every setting, each problem one line naming the key, the value and
what it must be.

:func:`settings_problems` checks a resolved config (a dict) against :class:`RunSettings`: types
(``gt.vectorize=abc`` is no boolean, ``gt.models_per_batch=abc`` no integer), ranges, finiteness
(NaN and infinity are refused for every number) and consistency across keys (``gt.num_shards``
at most ``gt.subsets``, ``gt.shard`` below ``gt.num_shards``). It needs no task or method object
and touches no file, so the command line runs it before Hydra creates any folder.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_type_hints

from tdabench.harness.core.typecheck import fits

MAX_SEED = 2**63  # seeds must fit a signed 64-bit integer (torch and numpy generators)
COUNT_MODES = ("separate", "inline", "off")
WANDB_MODES = ("offline", "online", "disabled")


def setting(default: Any, must: str, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False, choices: tuple | None = None):
    """A field of a settings section: its default, the text of its problem (``KEY=VALUE must ...``),
    and its range (``low``/``high``, inclusive unless ``open_*``) or allowed ``choices``."""
    return field(default=default, metadata={"must": must, "low": low, "high": high, "open_low": open_low,
                                            "open_high": open_high, "choices": choices})


@dataclass
class GroundTruthSettings:
    subsets: int = setting(100, "must be an integer >= 2 (LDS correlates over subsets; default 100)", 2)
    alpha: float = setting(0.5, "must be a fraction strictly between 0 and 1 (default 0.5)", 0, 1, True, True)
    seeds: int = setting(3, "must be a positive integer (retraining seeds per subset; default 3)", 1)
    same_seed: bool = setting(False, "must be true or false (true: retrain every subset with the reference "
                              "run's seed and data order)")
    from_checkpoint: bool = setting(False, "must be true or false")
    finetune_epochs: int = setting(5, "must be a positive integer", 1)
    vectorize: bool = setting(True, "must be true or false (true: train many models at once where the task allows)")
    models_per_batch: int = setting(64, "must be a positive integer (models trained together; default 64)", 1)
    shard: int | None = setting(None, "must be null or an integer in [0, gt.num_shards)", 0)
    num_shards: int = setting(1, "must be a positive integer, at most gt.subsets", 1)


@dataclass
class LdsSettings:
    bootstrap: int = setting(1000, "must be a positive integer", 1)
    min_ceiling: float = setting(0.5, "must be a non-negative number", 0)
    max_ceiling_ci_width: float = setting(0.2, "must be a non-negative number", 0)


@dataclass
class LimitSettings:
    max_seconds: float | None = setting(None, "must be null or a positive, finite number of seconds", 0,
                                        open_low=True)


@dataclass
class CostSettings:
    count: str = setting("separate", ": use separate (FLOPs and tensor memory counted in an untimed replay of "
                         "fit and score), inline (counted during the timed phases) or off (no FLOPs; "
                         "resident-set peak memory only)", choices=COUNT_MODES)


@dataclass
class TuneSettings:
    trials: int = setting(0, "must be a non-negative integer (0: no tuning)", 0)
    val_subsets: int = setting(50, "must be an integer >= 2", 2)
    val_seeds: int = setting(2, "must be a positive integer", 1)
    max_cpu_s: float | None = setting(None, "must be null or a positive, finite number of CPU seconds", 0,
                                      open_low=True)
    storage: str | None = setting(None, "must be null or a path (an .journal file for Optuna's journal)")


@dataclass
class LooSettings:
    samples: int = setting(100, "must be a positive integer (training examples left out)", 1)
    seeds: int = setting(2, "must be a positive integer (retraining seeds per left-out example)", 1)


@dataclass
class MislabelSettings:
    fraction: float = setting(0.1, "must be a fraction strictly between 0 and 1 (default 0.1)", 0, 1, True, True)


@dataclass
class WandbSettings:
    mode: str = setting("offline", f": use one of {', '.join(WANDB_MODES)}", choices=WANDB_MODES)
    project: str = setting("tdabench", "must be a wandb project name")
    entity: str | None = setting(None, "must be null or a wandb entity name")
    artifacts: bool = setting(False, "must be true or false (true: log the ground truth and the scores as artifacts)")


@dataclass
class RunSettings:
    """The checked settings of a run (the task, method, folders and device are checked elsewhere)."""

    seed: int = setting(0, "must be an integer with 0 <= seed < 2**63 (default 0)", 0, MAX_SEED, open_high=True)
    threads: int | None = setting(None, "must be null or a positive integer", 1)
    force: bool = setting(False, "must be true or false")
    metric: str | list[str] = setting("lds", "must be a metric name or a list of names (default lds)")
    gt: GroundTruthSettings = field(default_factory=GroundTruthSettings)
    lds: LdsSettings = field(default_factory=LdsSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    loo: LooSettings = field(default_factory=LooSettings)
    mislabel: MislabelSettings = field(default_factory=MislabelSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)


def _in_range(value, meta: dict) -> bool:
    if meta["choices"] is not None:
        return value in meta["choices"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    lo, hi = meta["low"], meta["high"]
    return ((lo is None or (value > lo if meta["open_low"] else value >= lo))
            and (hi is None or (value < hi if meta["open_high"] else value <= hi)))


def _section(cls, values: dict, prefix: str) -> tuple[Any, list[str]]:
    """``cls`` built from ``values`` (missing keys at their defaults), and the problems found."""
    problems, kwargs = [], {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("must") is None:  # a nested section
            sub_values = values.get(f.name) or {}
            if not isinstance(sub_values, dict):
                problems.append(f"{prefix}{f.name}={sub_values!r} must be a group of settings "
                                f"({prefix}{f.name}.KEY=...)")
                continue
            sub, more = _section(hints[f.name], sub_values, f"{prefix}{f.name}.")
            kwargs[f.name], problems = sub, problems + more
            continue
        value = values.get(f.name, f.default if f.default is not MISSING else None)
        if fits(value, hints[f.name]) and value != [] and _in_range(value, f.metadata):
            kwargs[f.name] = value
        else:
            must = f.metadata["must"]
            problems.append(f"{prefix}{f.name}={value!r}{'' if must.startswith(':') else ' '}{must}")
    return (cls(**kwargs) if not problems else None), problems


def typed_settings(cfg: dict) -> tuple[RunSettings | None, list[str]]:
    """The :class:`RunSettings` of the resolved config ``cfg``, or None with one line per problem."""
    settings, problems = _section(RunSettings, cfg, "")
    if settings is not None:
        gt = settings.gt
        if gt.num_shards > gt.subsets:
            problems.append(f"gt.num_shards={gt.num_shards} must be at most gt.subsets={gt.subsets} "
                            "(each shard retrains at least one subset)")
        if gt.shard is not None and gt.shard >= gt.num_shards:
            problems.append(f"gt.shard={gt.shard} must be null or an integer in [0, gt.num_shards={gt.num_shards})")
    return (settings if not problems else None), problems


def settings_problems(cfg: dict) -> list[str]:
    """One line per problem of the settings of ``cfg`` (see :func:`typed_settings`)."""
    return typed_settings(cfg)[1]
