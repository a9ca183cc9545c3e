"""The ``tdabench`` command (Hydra).

    tdabench task=digits_mlp method=grad_dot
    tdabench -m task=digits_mlp method=random,grad_dot,exact_if
    tdabench -m                      # every registered method on the default task
    tdabench --list                  # the registered methods and tasks
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, UnsupportedPairingError
from harness.registry import METHODS, TASKS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _register_plugin_configs() -> None:
    """Give every registered method without a YAML file a default config node, so methods from
    other packages (entry points) can be chosen with ``method=NAME`` like built-in ones."""
    store = ConfigStore.instance()
    for name in METHODS.names():
        if not (CONF_DIR / "method" / f"{name}.yaml").exists():
            store.store(group="method", name=name, node={"name": name, "seed": "${seed}"})


def _precheck(argv: list[str]) -> list[str]:
    """Problems Hydra would hit before the app starts (it creates its output folder under
    ``results_dir``), and unknown ``task=`` / ``method=`` choices, as error lines."""
    from harness.config import check_writable

    problems = []
    for arg in argv:
        if arg.startswith("results_dir="):
            problem = check_writable(arg.split("=", 1)[1])
            if problem:
                problems.append(f"results_dir: {problem}")
        for group, registry in (("task", TASKS), ("method", METHODS)):
            if arg.startswith(f"{group}="):
                names = registry.names()
                for choice in arg.split("=", 1)[1].split(","):
                    if choice and choice not in names:
                        problems.append(f"unknown {group} {choice!r}; registered {group}s: {', '.join(names)}")
    return problems


def compose(overrides: list[str]) -> dict:
    """The resolved config for command-line ``overrides``, composed as ``tdabench`` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    _register_plugin_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def _group(cfg: dict) -> str:
    from harness.tracking import sweep_group

    return sweep_group(cfg["results_dir"], cfg.get("sweep_name"))


def shard_overrides(argv: list[str]) -> list[str]:
    """A ground-truth shard job (``gt.shard=...``) computes the same shard whatever the method, so
    a sweep of shards without ``method=`` gets one method (the default, grad_dot) instead of the
    sweep's whole method list (which would launch every shard once per method)."""
    if any(a.startswith("gt.shard=") for a in argv) and not any(
            a.startswith(("method=", "+method=", "++method=")) for a in argv):
        return [*argv, "method=grad_dot"]
    return argv


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from harness.run import execute, record_unsupported

    resolved = OmegaConf.to_container(cfg, resolve=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    group = _group(resolved)
    try:
        record = execute(resolved, group=group)
    except UnsupportedPairingError as exc:
        if not multirun:
            for line in exc.problems:
                print(f"tdabench: error: {line}", file=sys.stderr)
            sys.exit(2)
        record_unsupported(resolved, exc, group)  # the sweep goes on with the next pairing
        return
    except ConfigError as exc:
        for line in exc.problems:
            print(f"tdabench: error: {line}", file=sys.stderr)
        sys.exit(2)
    if record is not None and record["status"] != "ok" and not multirun:
        sys.exit(1)


def main() -> None:
    if "--list" in sys.argv[1:]:
        from harness.listing import print_listing

        print_listing()
        return
    sys.argv[1:] = shard_overrides(sys.argv[1:])
    problems = _precheck(sys.argv[1:])
    if problems:
        for line in problems:
            print(f"tdabench: error: {line}", file=sys.stderr)
        sys.exit(2)
    _register_plugin_configs()
    _app()


if __name__ == "__main__":
    main()
