"""The ``tdabench`` command (Hydra).

    tdabench task=digits_mlp method=grad_dot
    tdabench -m task=digits_mlp method=random,grad_dot,exact_if
    tdabench -m                      # every registered method on the default task
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
    from harness.config import folder_problem

    problems = []
    for arg in argv:
        if arg.startswith("results_dir="):
            value = arg.split("=", 1)[1]
            problem = folder_problem("results_dir", "" if value in ("null", "''", '""') else value)
            if problem:
                problems.append(problem)
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


def _group() -> str:
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"sweep-{Path(hc.sweep.dir).name}"
    return f"run-{Path(hc.run.dir).name}"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from harness.run import execute, record_unsupported

    resolved = OmegaConf.to_container(cfg, resolve=True)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = execute(resolved, group=_group())
    except UnsupportedPairingError as exc:
        if not multirun:
            for line in exc.problems:
                print(f"tdabench: error: {line}", file=sys.stderr)
            sys.exit(2)
        record_unsupported(resolved, exc, _group())  # the sweep goes on with the next pairing
        return
    except ConfigError as exc:
        for line in exc.problems:
            print(f"tdabench: error: {line}", file=sys.stderr)
        sys.exit(2)
    if record is not None and (record["status"] != "ok" or record.get("write_error")) and not multirun:
        sys.exit(1)


def main() -> None:
    """The command: bad settings are refused before any work (exit 2), a failed run exits 1, and
    Ctrl-C stops the run or sweep with one line and exit 130 (finished work stays cached)."""
    try:
        problems = _precheck(sys.argv[1:])
        if problems:
            for line in problems:
                print(f"tdabench: error: {line}", file=sys.stderr)
            sys.exit(2)
        _register_plugin_configs()
        _app()
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
