"""Each method parameter's default is defined once: in the method's constructor signature. The
config node is generated from it, and a task's method_defaults only hold values that differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import CONF_DIR, compose

TASK_FILES = sorted((CONF_DIR / "task").glob("*.yaml"))


def test_no_config_file_repeats_method_parameters():
    assert not (CONF_DIR / "method").exists(), "method parameters live in the constructors only"


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_method_defaults_are_parameters_that_differ_from_the_method_default(path: Path):
    for name, values in (yaml.safe_load(path.read_text()).get("method_defaults") or {}).items():
        defaults = METHODS.get(name).defaults()
        for key, value in values.items():
            assert key in defaults, f"{path.name}: {name} has no parameter {key}"
            assert value != defaults[key], (f"{path.name}: method_defaults.{name}.{key}={value!r} repeats "
                                            "the method's own default; remove it")


@pytest.mark.parametrize("name", METHODS.names())
def test_generated_method_node_holds_every_parameter_with_its_default(name):
    cfg = compose([f"method={name}", "task=text_neox", "seed=7"])  # text_neox sets no method defaults
    cls = METHODS.get(name)
    run = OmegaConf.create(cfg)
    expected = {**cls.defaults(), **{k: OmegaConf.select(run, path) for k, path in cls.follows.items()}}
    assert expected["seed"] == 7
    got = {k: v for k, v in cfg["method"].items() if k != "name"}
    assert got == {k: (list(v) if isinstance(v, tuple) else v) for k, v in expected.items()}


def test_task_default_and_command_line_override_in_that_order():
    assert compose(["method=bif"])["method"]["draws"] == 400            # digits_mlp's own default
    assert compose(["method=bif", "method.draws=7"])["method"]["draws"] == 7
    assert compose(["method=bif_devinterp"])["method"]["draws"] == 400  # shares the BIF's task defaults
    assert compose(["method=ekfac_kronfluence", "task=pythia_scaling"])["method"]["exclude"] == ["lm.lm_head"]
