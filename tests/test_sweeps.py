"""The sweep configs in conf/sweep compose with the main config (`tdabench -m +sweep=NAME`)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import CONF_DIR, register_configs


def composed(name: str):
    register_configs()  # the method group is generated from the registry
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)


@pytest.mark.parametrize("name,task,swept", [("small_data", "cifar10_resnet9", "task.n_train"),
                                             ("small_data_digits", "digits_mlp", "task.n_train"),
                                             ("pythia_scaling", "pythia_scaling", "task.size")])
def test_sweep_selects_task_and_sweeps_methods(name, task, swept):
    cfg = composed(name)
    assert cfg.task.name == task
    params = cfg.hydra.sweeper.params
    assert swept in params and len(params[swept].split(",")) >= 4
    methods = params["method"].split(",")
    assert "bif" in methods and "ekfac" in methods
    # each swept method that is registered composes as a job of this sweep
    for method in set(methods) & set(METHODS.names()):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            job = compose(config_name="config", overrides=[f"+sweep={name}", f"method={method}"])
        assert job.method.name == method and job.task.name == task


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
def test_sweep_command_passes_the_command_line_check(name):
    """The checks made before Hydra starts accept `+sweep=NAME` with other settings (an added
    group keeps its `+` when the keys are checked against the composed config) and still catch
    a misspelt key beside it."""
    from tdabench.harness.engine.cli import precheck

    assert precheck(["-m", f"+sweep={name}", "gt.subsets=10", "threads=1"]) == []
    assert any("gt.subset:" in p for p in precheck(["-m", f"+sweep={name}", "gt.subset=10"]))
