"""The resolved configuration of a run, composed as the ``tdabench`` command composes it.

The ``method`` config group is generated from the registry: each method's node holds every
parameter of its constructor, with the value ``${tdabench.default:METHOD,KEY}``, which resolves to
the task's ``method_defaults.METHOD.KEY`` when the task sets one (or, for the keys a method
declares in ``shared_task_defaults``, another method's), else to the constructor's default
(or the run setting the method's ``follows`` names: ``seed`` follows the run's ``seed``).
So ``method.KEY=VALUE`` works for any registered method, an unknown key is refused with the
valid keys listed, and the record holds every value.
"""

from __future__ import annotations

import logging
import os
import tempfile

from omegaconf import OmegaConf

from tdabench.harness.core.registry import CONF_DIR, METHODS, TASKS
from tdabench.harness.engine.ladder import apply_level, explicit_keys
from tdabench.harness.engine.usage import USAGE

log = logging.getLogger("tdabench")
_MISSING = object()


def _method_default(method: str, key: str, _root_):
    """Resolver ``tdabench.default``: the task's default for ``method.key``, else the method's."""
    cls = METHODS.get(method)
    sources = [method] + [other for other, keys in cls.shared_task_defaults.items() if key in keys]
    for source in sources:
        value = OmegaConf.select(_root_, f"task.method_defaults.{source}.{key}", default=_MISSING)
        if value is not _MISSING:
            return value
    if key in cls.follows:
        return OmegaConf.select(_root_, cls.follows[key])
    return cls.defaults()[key]


def _all_methods() -> str:
    """Resolver ``tdabench.methods``: every registered method, as a sweep's comma list."""
    return ",".join(METHODS.names())


def gpus(device) -> int:
    """Resolver ``tdabench.gpus``: the GPUs a job of ``device`` needs (1 for ``cuda`` or
    ``cuda:N``, else 0); ``conf/hydra/launcher/slurm.yaml`` asks SLURM for that many per job."""
    return 1 if str(device).startswith("cuda") else 0


def register_resolvers() -> None:
    """The ``tdabench.*`` resolvers of the config tree; idempotent. Called when this module is
    imported, so a launcher's job process (which unpickles the command's task function and
    imports this module with it) resolves them too."""
    OmegaConf.register_new_resolver("tdabench.default", _method_default, replace=True)
    OmegaConf.register_new_resolver("tdabench.methods", _all_methods, replace=True)
    OmegaConf.register_new_resolver("tdabench.usage", lambda: USAGE, replace=True)
    OmegaConf.register_new_resolver("tdabench.gpus", gpus, replace=True)


register_resolvers()


def register_configs() -> None:
    """Resolvers, one ``method`` config node per registered method, and a ``task`` node for each
    registered task without a YAML file in conf/task/ (from its ``default_config``); idempotent."""
    from hydra.core.config_store import ConfigStore

    register_resolvers()
    store = ConfigStore.instance()
    for name in METHODS.names():
        try:
            params = METHODS.get(name).defaults()
        except TypeError as exc:
            log.warning("%s; it is skipped", exc)
            continue
        store.store(group="method", name=name,
                    node={"name": name, **{k: f"${{tdabench.default:{name},{k}}}" for k in params}})
    for name in TASKS.names():
        if not (CONF_DIR / "task" / f"{name}.yaml").exists():
            store.store(group="task", name=name, node={**TASKS.get(name).default_config, "name": name})


def compose(overrides: list[str]) -> dict:
    """The resolved config for command-line ``overrides``, composed as ``tdabench`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return resolve(cfg)


def pairing_config(task: str, method: str, params: dict | None = None, overrides: list[str] = (),
                   cache_dir: str | None = None) -> dict:
    """The resolved config of one pairing for a script (a benchmark, a notebook): what
    ``tdabench task=<task> method=<method> *overrides`` composes, with the method parameters
    ``params`` set over the task's and the class's defaults, ``cache_dir`` (default: the config's)
    made absolute (relative to the working directory) and ``results_dir`` the system's temporary
    folder (a script writes its own outputs)."""
    cfg = compose([f"task={task}", f"method={method}", *overrides])
    cfg["cache_dir"] = os.path.abspath(cache_dir or cfg["cache_dir"])
    cfg["results_dir"] = tempfile.gettempdir()
    cfg["method"].update(params or {})
    return cfg


def resolve(cfg) -> dict:
    """The composed config ``cfg`` (an OmegaConf node) resolved, with the rung of the method's cost
    ladder that ``frontier.level`` selects applied (:mod:`harness.engine.ladder`; parameters set
    explicitly are told apart from defaults before resolution). Raises ConfigError for a bad level
    or a conflict, LevelBeyondLadder past the ladder's end."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    raw = OmegaConf.to_container(cfg.method, resolve=False) if "method" in cfg else {}
    return apply_level(resolved, explicit_keys(raw))
