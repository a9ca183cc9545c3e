"""The ``tdabench`` command (Hydra).

    tdabench task=digits_mlp method=grad_dot
    tdabench -m task=digits_mlp method=random,grad_dot,exact_if
    tdabench -m method=grad_dot,ekfac metric=lds,loo,mislabel_auc   # three metrics in every run
    tdabench -m                      # every registered method (plugins included), default task
    tdabench --list                  # the registered methods and tasks
    tdabench -q ...  /  tdabench -v ...   # warnings only / debugging detail

The ``method`` config group is generated from the registry: each method's node holds every
parameter of its constructor, with the value ``${tdabench.default:METHOD,KEY}``, which resolves to
the task's ``method_defaults.METHOD.KEY`` when the task sets one (or, for the keys a method
declares in ``shared_task_defaults``, another method's), else to the constructor's default
(or the run setting the method's ``follows`` names: ``seed`` follows the run's ``seed``).
So ``method.KEY=VALUE`` works for any registered
method, an unknown key is refused with the valid keys listed, and the record holds every value.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from tdabench.harness.core.logs import RESULT, setup_worker, take_verbosity_flags
from tdabench.harness.core.logs import setup as setup_logging
from tdabench.harness.core.registry import CONF_DIR, METHODS, TASKS, UnknownNameError
from tdabench.harness.core.settings import settings_of
from tdabench.harness.engine import sweep_jobs
from tdabench.harness.engine.compose import compose, register_configs, resolve
from tdabench.harness.engine.config import ConfigError, UnsupportedPairingError, folder_problem
from tdabench.harness.engine.ladder import LevelBeyondLadder, conflicts, level_problem
from tdabench.harness.engine.launchers import slurm_problem, submits_elsewhere
from tdabench.harness.plugin.method import missing_extra
from tdabench.harness.plugin.metric import unknown_metric
from tdabench.harness.read.record import FAILED, STATUSES
from tdabench.harness.read.results import read_records

log = logging.getLogger("tdabench")


def _choices(overrides, key: str, default: list[str]) -> list[str]:
    for o in overrides:
        if o.key_or_group == key and o.value() is not None:
            return [str(v) for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
    return default


#: Hydra's flags that take a value (the value is not an override)
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}


#: launchers of the slurm extra (hydra-submitit-launcher)
_SUBMITIT = {"slurm", "submitit_local", "submitit_slurm"}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _override_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            if "=" not in a:
                continue
        if a.startswith("-"):
            skip = a in _VALUE_FLAGS
            continue
        out.append(a)
    return out


def _quote_hint(args: list[str]) -> str:
    """A hint for an override the shell split at a space (``results_dir=/my`` ``dir``), or for a
    value with a space Hydra could not parse: quote it for Hydra inside the shell's quotes."""
    split = [i for i, a in enumerate(args) if i and "=" not in a and "=" in args[i - 1]]
    if split:
        key, _, value = args[split[0] - 1].partition("=")
        value = f"{value} {args[split[0]]}"
    else:
        spaced = [a for a in args if any(c.isspace() for c in a)]
        if not spaced:
            return ""
        key, _, value = spaced[0].partition("=")
    return f"; a value with a space must be quoted, e.g. '{key}=\"{value}\"'"


def precheck(argv: list[str]) -> list[str]:
    """Problems found from the command line alone, before Hydra starts (it would create its output
    folder under ``results_dir``): unwritable folders, unknown ``task=`` / ``method=`` choices and
    keys that do not exist (also when added with ``+``), each listing the valid ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = _override_args(argv)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException as exc:
        return [str(exc).splitlines()[0] + _quote_hint(args)]
    multirun = any(a in ("-m", "--multirun") for a in argv)
    sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
    if sweeps and not multirun:
        return [f"{sweeps[0]}: a comma list is a sweep (one run per value); add -m "
                f"(tdabench -m {' '.join(args)})"]
    problems = []
    for o in overrides:
        if o.key_or_group == "hydra/launcher" and str(o.value()) in _SUBMITIT and not _importable(
                "hydra_plugins.hydra_submitit_launcher"):
            problems.append(missing_extra(f"hydra/launcher={o.value()}", "hydra-submitit-launcher", "slurm"))
        elif o.key_or_group == "hydra/launcher" and slurm_problem(str(o.value())):
            problems.append(slurm_problem(str(o.value())))
        if o.key_or_group in ("results_dir", "cache_dir") and not o.is_sweep_override():
            value = o.value()
            problem = folder_problem(o.key_or_group, "" if value in (None, "null") else str(value))
            if problem:
                problems.append(problem)
    for group, registry in (("task", TASKS), ("method", METHODS)):
        for choice in _choices(overrides, group, []):
            try:
                registry.get(choice)
            except UnknownNameError as exc:
                problems.append(str(exc))
    problems += _metric_problems(overrides)
    if problems:
        return problems
    methods = _choices(overrides, "method", METHODS.names() if multirun else ["grad_dot"])
    keyed = [o for o in overrides if "." in o.key_or_group and not o.key_or_group.startswith("hydra")
             and not o.is_delete()]
    for o in [o for o in keyed if o.key_or_group.startswith("method.")]:
        key = o.key_or_group.split(".", 1)[1]
        for name in methods:
            allowed = METHODS.get(name).parameters()
            if key not in allowed:
                problems.append(f"method.{key}: method {name} has no parameter {key!r}; its parameters: "
                                f"{', '.join(allowed)}")
    problems += _level_problems(overrides, keyed, methods)
    others = [o for o in keyed if not o.key_or_group.startswith("method.")]
    if others:
        problems += _unknown_keys(overrides, others)
    return problems or _settings_check(overrides, device_here=not submits_elsewhere(overrides))


#: the config sections :mod:`harness.core.settings` types (a sweep over their keys is checked per value)
_TYPED = ("seed", "threads", "force", "metric", "gt", "lds", "limits", "cost", "tune", "loo", "mislabel", "wandb")


def _settings_check(overrides, device_here: bool = True) -> list[str]:
    """Every problem of the config the command line composes (:func:`harness.engine.run.config_problems`:
    typed settings, folders, task and method parameters), for each method of a sweep and each swept
    value of a typed setting, before Hydra or the run creates anything (``device_here`` False: a
    launcher submits the runs to other machines, which check the device)."""
    from tdabench.harness.engine.run import config_problems

    base = [o.input_line for o in overrides if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    heads = [[*base, f"method={m}"] for m in _choices([o for o in overrides if o.is_sweep_override()], "method", [])]
    heads = heads or [base]
    sweeps = [(o.key_or_group, [str(v) for v in o.sweep_string_iterator()]) for o in overrides
              if o.is_sweep_override() and o.key_or_group.split(".")[0] in _TYPED]
    problems: list[str] = []
    for variant in heads + [[*heads[0], f"{key}={v}"] for key, values in sweeps for v in values]:
        try:
            problems += config_problems(compose(variant), device_here)[2]
        except LevelBeyondLadder:
            continue  # a sweep skips that level without a record
        except ConfigError as exc:
            problems += exc.problems
        except Exception as exc:  # the composition itself fails: Hydra's first line says why
            problems.append(str(exc).splitlines()[0])
    return list(dict.fromkeys(problems))


def _level_problems(overrides, keyed, methods: list[str]) -> list[str]:
    """Bad ``frontier.level`` values, and ``method.KEY=`` values that a chosen rung of a swept
    method's cost ladder would also set (see :mod:`harness.engine.ladder`)."""
    levels = []
    for choice in _choices(overrides, "frontier.level", []):
        try:
            level = None if choice in ("null", "None") else int(choice)
        except ValueError:
            level = choice
        problem = level_problem(level)
        if problem:
            return [problem]
        levels.append(level)
    explicit = [o for o in keyed if o.key_or_group.startswith("method.")]
    keys = [o.key_or_group.split(".", 1)[1] for o in explicit]
    values = {k: o.value() for k, o in zip(keys, explicit) if not o.is_sweep_override()}
    problems = []
    for name in methods:
        for level in [lv for lv in levels if lv is not None]:
            problems += conflicts(METHODS.get(name), level, keys, values)
    return list(dict.fromkeys(problems))


def _unknown_keys(overrides, keyed) -> list[str]:
    """Dotted keys that no composed config holds (for every ``task=`` choice of a sweep)."""
    from omegaconf import DictConfig

    base = [o.input_line for o in overrides  # as written: keeps the + of an added group (+sweep=...)
            if "." not in o.key_or_group and not o.is_sweep_override() and o.value() is not None
            and o.key_or_group not in ("task", "method", "results_dir", "cache_dir")]
    problems = []
    for task in _choices(overrides, "task", [None]):
        try:
            cfg = OmegaConf.create(compose(base + ([f"task={task}"] if task else [])))
        except Exception as exc:  # the composition itself fails: Hydra's first line says why
            return [str(exc).splitlines()[0]]
        for o in keyed:
            parent, _, leaf = o.key_or_group.rpartition(".")
            node = OmegaConf.select(cfg, parent, default=None)
            if isinstance(node, DictConfig) and leaf in node:
                continue
            if not isinstance(node, DictConfig):
                problems.append(f"{o.key_or_group}: no such setting ({parent} is not a group of settings)")
            else:
                problems.append(f"{o.key_or_group}: no such setting{f' for task {task}' if task else ''}; "
                                f"the keys of {parent}: {', '.join(sorted(map(str, node.keys())))}")
    return sorted(set(problems))


def _group(cfg: dict) -> str:
    from tdabench.harness.read.tracking import sweep_group

    s = settings_of(cfg)
    return sweep_group(s.results_dir, s.sweep_name)


def shard_overrides(argv: list[str]) -> list[str]:
    """A ground-truth shard job (``gt.shard=...``) computes the same shard whatever the method, so
    a sweep of shards without ``method=`` gets one method (the default, grad_dot) instead of the
    sweep's whole method list (which would launch every shard once per method)."""
    if any(a.startswith("gt.shard=") for a in argv) and not any(
            a.startswith(("method=", "+method=", "++method=")) for a in argv):
        return [*argv, "method=grad_dot"]
    return argv


def metric_overrides(argv: list[str]) -> list[str]:
    """``metric=a,b`` means "compute metrics a and b in every run", never "sweep over them": the
    metrics judge the same scores, so a run computes them all. The comma list becomes Hydra's list
    ``metric=[a,b]`` (which a ``-m`` sweep does not split into jobs); ``metric=[a,b]`` works too."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key.lstrip("+") == "metric" and "," in value and not value.startswith("["):
            a = f"{key}=[{value}]"
        out.append(a)
    return out


def resolved_cfg_flags(argv: list[str]) -> list[str]:
    """``--cfg job`` prints the values a run would use: the method's parameters are interpolations
    (``${tdabench.default:METHOD,KEY}``), so Hydra is asked to resolve them (``--resolve``)."""
    if {"--cfg", "-c"} & set(argv) and "--resolve" not in argv:
        return [*argv, "--resolve"]
    return argv


def _metric_problems(overrides) -> list[str]:
    """Unknown names in ``metric=``, each listing the registered metrics."""
    names = [str(n) for o in overrides if o.key_or_group == "metric" and o.value() is not None
             for n in (o.value() if isinstance(o.value(), list) else [o.value()])]
    return [p for p in map(unknown_metric, names) if p]


def _share_machine(hydra_cfg, threads, device: str) -> None:
    """Give this launcher job its share of the cores unless ``threads`` is set, and its GPU
    (:mod:`harness.engine.sharing`); the config's ``threads`` and ``device`` stay as given, so
    the run's config hash does not depend on the machine."""
    import torch

    from tdabench.harness.engine.sharing import cores, job_gpu, job_threads

    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
    gpu = job_gpu(launcher, hydra_cfg.job.get("num", 0), device, torch.cuda.device_count() if device == "cuda" else 0)
    if gpu is not None:  # "cuda" is then this GPU everywhere in the job; the config is unchanged
        torch.cuda.set_device(gpu)
    if threads is not None:
        return
    share = job_threads(launcher)
    if share is not None:
        torch.set_num_threads(share)
        if hydra_cfg.job.get("num", 0) == 0:
            log.info(f"{share} torch thread(s) per job: this launcher's share of {cores()} cores (threads=N sets it)")


def _count_sweep_jobs(argv: list[str]) -> None:
    """Hand the sweep's number of jobs on to launcher workers (submitit_local runs them all at once)."""

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tdabench.harness.engine.sharing import SWEEP_JOBS_ENV, sweep_jobs

    overrides = OverridesParser.create().parse_overrides(_override_args(argv))
    os.environ[SWEEP_JOBS_ENV] = str(sweep_jobs(overrides, len(METHODS.names())))


def _app(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tdabench.harness.engine.run import execute, record_unsupported

    setup_worker()  # in a launcher's worker process (joblib, submitit, SLURM) nothing else sets up the console
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        resolved = resolve(cfg)
    except LevelBeyondLadder as exc:
        if not multirun:
            print(f"tdabench: error: {exc.problems[0]}", file=sys.stderr)
            sys.exit(2)
        log.log(RESULT, f"{cfg.task.name} / {cfg.method.name}: skipped, {exc.problems[0]}")  # no record
        return
    except ConfigError as exc:
        for line in exc.problems:
            print(f"tdabench: error: {line}", file=sys.stderr)
        sys.exit(2)
    if multirun:
        _share_machine(HydraConfig.get(), resolved.get("threads"), str(resolved.get("device", "cpu")))
    group = _group(resolved)
    try:
        record = execute(resolved, group=group)
    except UnsupportedPairingError as exc:
        if not multirun:
            for line in exc.problems:
                print(f"tdabench: error: {line}", file=sys.stderr)
            sys.exit(2)
        sweep_jobs.note(resolved["results_dir"], record_unsupported(resolved, exc, group)["run_id"])
        return  # the sweep goes on with the next pairing
    except ConfigError as exc:
        for line in exc.problems:
            print(f"tdabench: error: {line}", file=sys.stderr)
        sys.exit(2)
    if multirun and record is not None:
        sweep_jobs.note(resolved["results_dir"], record["run_id"])
    if record is not None and (record["status"] != "ok" or record.get("write_error")) and not multirun:
        sys.exit(1)


def _plain_overrides(argv: list[str]) -> list[str]:
    """The overrides of ``argv`` that are no sweeps and set no method or Hydra key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(_override_args(argv))
    return [o.input_line for o in overrides if not o.is_sweep_override()
            and not o.key_or_group.startswith(("method", "hydra"))]


def sweep_summary(results_dir: Path, before: set[str], ours: set[str]) -> int:
    """Print the statuses of the runs a sweep recorded in ``results_dir`` (those its jobs noted,
    ``ours``, whose run id is not in ``before``: a pairing finished before is no new run) as its
    last line; return the exit status: 1 when a run failed (error, oom,
    timeout, degenerate_model), else 0. Unsupported and skipped pairings are no failures."""
    statuses = Counter(r.status for r in read_records(results_dir) if r.run_id in ours and r.run_id not in before)
    order = [s for s in STATUSES if statuses[s]]
    text = (", ".join(f"{statuses[s]} {s}" for s in order)
            or "no new runs (every pairing was finished before, or ground-truth shards only)")
    failed = sum(statuses[s] for s in FAILED)
    print(f"[tdabench] sweep: {text}" + (f"; {failed} failed, see {results_dir / 'runs.jsonl'}" if failed else ""),
          file=sys.stderr, flush=True)
    return 1 if failed else 0


def main() -> None:
    import hydra

    if "--list" in sys.argv[1:]:
        from tdabench.harness.engine.listing import print_listing

        print_listing()
        return
    if "--version" in sys.argv[1:]:
        from tdabench.harness.core.version import version_line

        print(version_line())
        return
    if {"-m", "--multirun"} & set(sys.argv[1:]) and {"--cfg", "-c"} & set(sys.argv[1:]):
        print("tdabench: error: --cfg prints the config of one run and cannot be combined with -m; drop -m "
              "and give one value per key (tdabench --cfg job task=digits_mlp method=ekfac)", file=sys.stderr)
        sys.exit(2)
    try:
        verbosity, argv = take_verbosity_flags(sys.argv[1:])
        argv = resolved_cfg_flags(metric_overrides(shard_overrides(argv)))
        sys.argv = [sys.argv[0], *argv]
        setup_logging(verbosity)
        problems = precheck(argv)
        if problems:
            for line in problems:
                print(f"tdabench: error: {line}", file=sys.stderr)
            sys.exit(2)
        register_configs()
        multirun = any(a in ("-m", "--multirun") for a in argv)
        if multirun:
            _count_sweep_jobs(argv)
        results_dir = Path(compose(_plain_overrides(argv))["results_dir"]) if multirun else None
        before = {r.run_id for r in read_records(results_dir)} if multirun else set()
        token = sweep_jobs.start() if multirun else None
        hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_app)()
        if multirun:
            sys.exit(sweep_summary(results_dir, before, sweep_jobs.finish(results_dir, token)))
    except KeyboardInterrupt:
        print("\ntdabench: interrupted (KeyboardInterrupt); finished pairings, checkpoints and "
              "ground-truth retrainings are kept: rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:  # outside a run's own error handling: Hydra's output folder, for example
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tdabench: error: {where}{exc.strerror or exc}; check the folder's permissions and free space",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
