"""conf/config.yaml and the settings dataclasses agree on every key and default. Each method
parameter's default is defined once: in the method's constructor signature. The
config node is generated from it, and a task's method_defaults only hold values that differ."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml
from omegaconf import OmegaConf

from tdabench.harness.core.registry import METHODS
from tdabench.harness.core.settings import RunSettings, config_key
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


def _yaml_defaults() -> dict:
    """conf/config.yaml's own settings (no Hydra keys), as written."""
    raw = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    return {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}


def _dataclass_defaults(cls) -> dict:
    out = {}
    for f in fields(cls):
        if f.name in ("config", "task", "method"):
            continue
        key = config_key(f)
        out[key] = _dataclass_defaults(f.type if isinstance(f.type, type) else get_type_hints(cls)[f.name]) \
            if f.default is MISSING else (list(f.default) if isinstance(f.default, tuple) else f.default)
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_config_yaml_and_the_settings_dataclasses_hold_the_same_keys_and_defaults():
    written, declared = _flatten(_yaml_defaults()), _flatten(_dataclass_defaults(RunSettings))
    assert sorted(written) == sorted(declared), "conf/config.yaml and harness/core/settings.py name different keys"
    for key, value in written.items():
        if isinstance(value, str) and value.startswith("${"):  # an environment variable's, with a fallback
            fallback = value.rsplit(",", 1)[-1].rstrip("}")
            value = None if fallback == "null" else fallback
        assert value == declared[key], (f"{key}: conf/config.yaml says {value!r}, RunSettings says "
                                        f"{declared[key]!r}; change both")


def test_the_composed_default_config_is_valid_and_types_every_section():
    settings = RunSettings.from_config(compose([]))
    assert settings.gt.subsets == _yaml_defaults()["gt"]["subsets"]
    assert settings.tune.select_cpu_s is None and settings.metrics == ["lds"]
    assert settings.method_name == "grad_dot" and "name" not in settings.method_params


def _plain(value):
    """YAML lists and dataclass tuples compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_files_state_their_settings_defaults_and_nothing_else(path: Path):
    """Every key of conf/task/NAME.yaml beyond the common ones is a field of the task's settings
    dataclass, with the value the dataclass gives as its default."""
    from tdabench.harness.core.registry import TASKS
    from tdabench.harness.plugin.task import COMMON_TASK_KEYS

    written = yaml.safe_load(path.read_text())
    cls = TASKS.get(written["name"]).settings_class
    own = {f.name: (f.default_factory() if f.default is MISSING else f.default) for f in fields(cls)}
    for key, value in written.items():
        if key in COMMON_TASK_KEYS:
            continue
        assert key in own, (f"{path.name}: {key} is not a setting of {cls.__name__}; declare it there "
                            "(the one place its default is written)")
        assert _plain(value) == _plain(own[key]), (f"{path.name}: {key}={value!r}, {cls.__name__} says "
                                                   f"{own[key]!r}; change both")


def test_a_task_reads_its_settings_typed_and_a_missing_key_is_its_default():
    from tdabench.tasks.text import TextSettings

    own = TextSettings.of({"width": 32})
    assert own.width == 32 and own.heads == 4 and own.base_recipe["epochs"] == 4
    assert TextSettings.of({}).base_recipe is not TextSettings.of({}).base_recipe  # no shared mutable default
