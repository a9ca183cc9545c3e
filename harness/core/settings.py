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
from typing import Any, Callable, get_type_hints

from tdabench.harness.core.typecheck import fits

MAX_SEED = 2**63  # seeds must fit a signed 64-bit integer (torch and numpy generators)
COUNT_MODES = ("separate", "inline", "off")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """Problems of a run's config, one line each (``problems``), found before any work."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Rule:
    """What a settings field accepts: the text of its problem (``KEY=VALUE must ...``), its range
    (``low``/``high``, inclusive unless ``open_*``) or allowed ``choices``, a further ``check`` of
    a value of the right type, the config ``key`` where it differs from the field's name, and
    ``elsewhere``: the check that needs the file system, the machine or the registry (the field
    only carries the value)."""

    must: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    key: str | None = None
    elsewhere: str | None = None


def setting(default: Any, must: str, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False, choices: tuple | None = None,
            check: Callable[[Any], bool] | None = None, key: str | None = None):
    """A field of a settings section: its default and its :class:`Rule`."""
    return field(default=default, metadata={RULE: Rule(must, low, high, open_low, open_high, choices, check, key)})


def checked_elsewhere(default: Any, where: str, key: str | None = None):
    """A field whose value is checked by ``where`` (it runs with the other checks, before any work)."""
    return field(default=default, metadata={RULE: Rule(key=key, elsewhere=where)})


RULE = "rule"  # the metadata entry of a settings field that holds its Rule


def rule(f) -> Rule | None:
    """The :class:`Rule` of the dataclass field ``f``; None for a section or the raw config."""
    return f.metadata.get(RULE)


def config_key(f) -> str:
    """The config key of the dataclass field ``f``."""
    r = rule(f)
    return (r.key if r else None) or f.name


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
    source: str | None = checked_elsewhere(None, "gt_from.from_problems", key="from")


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
    select_cpu_s: float | None = setting(None, "must be null or a positive, finite number of CPU seconds", 0,
                                         open_low=True)
    storage: str | None = setting(None, ": use null (SQLite in the results folder), a path ending in .journal "
                                  "(Optuna's journal file) or a database URL such as sqlite:///studies.db",
                                  check=lambda v: v is None or v.endswith(".journal") or "://" in v)
    sampler: str = setting("quasi_tpe", ": use quasi_tpe (quasi-random start-up, then multivariate TPE) or tpe "
                           "(random start-up, then independent TPE over the earlier spaces: earlier studies)",
                           choices=("quasi_tpe", "tpe"))


@dataclass
class LooSettings:
    samples: int = setting(100, "must be a positive integer (training examples left out)", 1)
    seeds: int = setting(2, "must be a positive integer (retraining seeds per left-out example)", 1)


@dataclass
class RemovalSettings:
    fractions: tuple[float, ...] = setting(
        (0.01, 0.05, 0.1), "must be a list of fractions strictly between 0 and 1 (shares of the training set "
        "removed per query)", check=lambda v: all(0 < x < 1 for x in v))
    seeds: int = setting(2, "must be a positive integer (retraining seeds per removed set)", 1)


@dataclass
class MislabelSettings:
    fraction: float = setting(0.1, "must be a fraction strictly between 0 and 1 (default 0.1)", 0, 1, True, True)


@dataclass
class FrontierSettings:
    level: int | None = checked_elsewhere(None, "ladder.level_problem")


@dataclass
class WandbSettings:
    mode: str = setting("offline", f": use one of {', '.join(WANDB_MODES)}", choices=WANDB_MODES)
    project: str = setting("tdabench", "must be a wandb project name")
    entity: str | None = setting(None, "must be null or a wandb entity name")
    artifacts: bool = setting(False, "must be true or false (true: log the ground truth and the scores as artifacts)")


@dataclass
class RunSettings:
    """The settings of a run, one field per key of ``conf/config.yaml`` (the task's and the method's
    nodes are checked by the task class and the method's signature). Built once per run by
    :meth:`from_config`; ``config`` keeps the resolved config as recorded and hashed."""

    seed: int = setting(0, "must be an integer with 0 <= seed < 2**63 (default 0)", 0, MAX_SEED, open_high=True)
    device: str = checked_elsewhere("cpu", "config.device_problem")
    threads: int | None = setting(None, "must be null or a positive integer", 1)
    results_dir: str = checked_elsewhere("results", "config.folder_problem")
    force: bool = setting(False, "must be true or false")
    sweep_name: str | None = setting(None, "must be null or a name (the wandb group of the runs)")
    cache_dir: str = checked_elsewhere(".cache/tdabench", "config.folder_problem")
    data_root: str | None = checked_elsewhere(None, "data_paths.set_data_root")
    metric: str | list[str] = setting("lds", "must be a metric name or a list of names (default lds)")
    gt: GroundTruthSettings = field(default_factory=GroundTruthSettings)
    lds: LdsSettings = field(default_factory=LdsSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    loo: LooSettings = field(default_factory=LooSettings)
    mislabel: MislabelSettings = field(default_factory=MislabelSettings)
    removal: RemovalSettings = field(default_factory=RemovalSettings)
    frontier: FrontierSettings = field(default_factory=FrontierSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    task: dict = checked_elsewhere(None, "the task class's validate")
    method: dict = checked_elsewhere(None, "the method's signature")
    config: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg) -> RunSettings:
        """The settings of the resolved config ``cfg`` (a dict or an OmegaConf config). Raises
        ``ConfigError`` with one line per problem."""
        if not isinstance(cfg, dict):
            from omegaconf import OmegaConf

            cfg = OmegaConf.to_container(cfg, resolve=True)
        settings, problems = typed_settings(cfg)
        if problems:
            raise ConfigError(problems)
        return settings

    @property
    def metrics(self) -> list[str]:
        """The metric names, in order, without repeats."""
        return list(dict.fromkeys([self.metric] if isinstance(self.metric, str) else self.metric))

    @property
    def task_name(self) -> str | None:
        return (self.task or {}).get("name")

    @property
    def method_name(self) -> str | None:
        return (self.method or {}).get("name")

    @property
    def method_params(self) -> dict:
        """The method's parameters (its config node without the name)."""
        return {k: v for k, v in (self.method or {}).items() if k != "name"}

    def replace(self, **config_changes) -> RunSettings:
        """These settings with top-level config keys replaced (``method={...}``): built again from
        the changed config, so the typed fields and ``config`` agree."""
        return RunSettings.from_config({**self.config, **config_changes})


def _in_range(value, r: Rule) -> bool:
    if r.choices is not None:
        return value in r.choices
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return True
    lo, hi = r.low, r.high
    return ((lo is None or (value > lo if r.open_low else value >= lo))
            and (hi is None or (value < hi if r.open_high else value <= hi)))


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def _section(cls, values: dict, prefix: str) -> tuple[Any, list[str]]:
    """``cls`` built from ``values`` (missing keys, and bad values, at their defaults), and the
    problems found."""
    problems, kwargs = [], {}
    hints = get_type_hints(cls)
    for f in fields(cls):
        key, r = config_key(f), rule(f)
        if f.name == "config":  # the raw config, set by typed_settings
            continue
        if r is not None and r.elsewhere:
            kwargs[f.name] = values.get(key, f.default)
            continue
        if r is None:  # a nested section
            sub_values = values.get(f.name) or {}
            if not isinstance(sub_values, dict):
                problems.append(f"{prefix}{f.name}={sub_values!r} must be a group of settings "
                                f"({prefix}{f.name}.KEY=...)")
                sub_values = {}
            kwargs[f.name], more = _section(hints[f.name], sub_values, f"{prefix}{f.name}.")
            problems += more
            continue
        value = values.get(key, _default(f))
        if fits(value, hints[f.name]) and value != [] and _in_range(value, r) and (r.check is None or r.check(value)):
            kwargs[f.name] = value
        else:
            kwargs[f.name] = _default(f)
            must = r.must
            problems.append(f"{prefix}{key}={value!r}{'' if must.startswith(':') else ' '}{must}")
    return cls(**kwargs), problems


def typed_settings(cfg: dict) -> tuple[RunSettings, list[str]]:
    """The :class:`RunSettings` of the resolved config ``cfg`` (a bad value replaced by its
    default, so the other checks can go on) and one line per problem."""
    settings, problems = _section(RunSettings, cfg, "")
    gt = settings.gt
    if not problems and gt.num_shards > gt.subsets:
        problems.append(f"gt.num_shards={gt.num_shards} must be at most gt.subsets={gt.subsets} "
                        "(each shard retrains at least one subset)")
    if not problems and gt.shard is not None and gt.shard >= gt.num_shards:
        problems.append(f"gt.shard={gt.shard} must be null or an integer in [0, gt.num_shards={gt.num_shards})")
    settings.config = cfg
    return settings, problems


def settings_of(cfg) -> RunSettings:
    """``cfg`` itself when it is a :class:`RunSettings`, else the settings of the resolved config
    ``cfg`` (a dict or an OmegaConf config; unchecked: see :meth:`RunSettings.from_config`)."""
    if isinstance(cfg, RunSettings):
        return cfg
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    return typed_settings(cfg)[0]


def gt_settings(gt) -> GroundTruthSettings:
    """``gt`` as :class:`GroundTruthSettings` (a ``gt`` config node is read as one; unchecked)."""
    if isinstance(gt, GroundTruthSettings):
        return gt
    return GroundTruthSettings(**{f.name: gt.get(config_key(f), _default(f))
                                  for f in fields(GroundTruthSettings)})


def settings_problems(cfg: dict) -> list[str]:
    """One line per problem of the settings of ``cfg`` (see :func:`typed_settings`)."""
    return typed_settings(cfg)[1]
