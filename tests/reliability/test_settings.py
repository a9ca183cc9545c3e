"""Bad settings are refused before any work: one line per problem naming the key, the value and the
allowed range, no traceback, nothing trained or written to the cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import prepare
from tests.reliability.conftest import SMALL

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# settings of the task's recipe and model, seeds and subset sizes: (override, expected text)
BAD = [
    ("task.recipe.lr=abc", "task.recipe.lr='abc' must be a positive number"),
    ("task.recipe.lr=0", "task.recipe.lr=0"),
    ("task.recipe.lr=-0.1", "task.recipe.lr=-0.1"),
    ("task.recipe.batch_size=0", "task.recipe.batch_size=0 must be a positive integer"),
    ("task.recipe.batch_size=2.5", "task.recipe.batch_size=2.5"),
    ("task.recipe.epochs=0", "task.recipe.epochs=0"),
    ("task.recipe.epochs=many", "task.recipe.epochs='many'"),
    ("task.recipe.schedule=weird", "task.recipe.schedule='weird' must be one of constant, cosine, onecycle"),
    ("task.recipe.momentum=1.5", "task.recipe.momentum=1.5 must be a number in [0, 1)"),
    ("task.recipe.weight_decay=-1", "task.recipe.weight_decay=-1"),
    ("+task.recipe.warmup=2", "task.recipe.warmup=2"),
    ("+task.recipe.lr_decay=0.5", "task.recipe.lr_decay is not a recipe setting"),
    ("task.hidden=abc", "task.hidden='abc' must be a positive integer"),
    ("task.hidden=0", "task.hidden=0 must be a positive integer"),
    ("task.trajectory_checkpoints=0", "task.trajectory_checkpoints=0"),
    ("seed=-1", "seed=-1 must be an integer with 0 <= seed < 2**63"),
    ("seed=9223372036854775808", "0 <= seed < 2**63"),
    ("seed=1180591620717411303424", "0 <= seed < 2**63"),
    ("task.n_train=1", "task.n_train=1 is too small"),
    ("gt.alpha=0.9999", "the whole training set"),
    ("gt.alpha=0.001", "every ground-truth subset empty"),
    ("results_dir=", "results_dir='' is empty"),
    ("cache_dir=", "cache_dir='' is empty"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[o for o, _ in BAD])
def test_bad_setting_is_one_clear_line(tmp_path, override, expected, tried):
    tried(f"bad setting {override}")
    extra = [f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    extra = [e for e in extra if e.split("=")[0] != override.split("=")[0]]
    cfg = compose([*SMALL, "method=grad_dot", *extra, override])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert len(err.value.problems) == 1, err.value.problems
    assert expected in err.value.problems[0], err.value.problems[0]
    assert not (tmp_path / "c").exists() or not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]


def test_settings_problems_are_all_reported_together(tmp_path, tried):
    tried("several bad settings at once")
    cfg = compose([*SMALL, "method=grad_dot", f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}",
                   "task.recipe.lr=abc", "task.recipe.schedule=weird", "seed=-1"])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert len(err.value.problems) == 3


CLI_BAD = ["seed=-1", "seed=1180591620717411303424", "task.recipe.lr=abc", "task.recipe.batch_size=0",
           "task.recipe.schedule=weird", "task.hidden=abc", "task.n_train=1", "gt.alpha=0.9999"]


@pytest.mark.parametrize("override", CLI_BAD)
def test_command_refuses_before_any_work_without_traceback(tmp_path, override, tried):
    tried(f"bad setting {override} on the command line")
    out = subprocess.run([str(BIN / "tdabench"), "method=grad_dot", "threads=1", "wandb.mode=disabled",
                          f"cache_dir={tmp_path / 'c'}", f"results_dir={tmp_path / 'r'}", override],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3 and lines[0].startswith("tdabench: error:"), text
    assert not [p for p in (tmp_path / "c").rglob("*") if p.is_file()]  # nothing trained or cached


def test_empty_results_dir_on_the_command_line_is_refused(tmp_path, tried):
    tried("results_dir= (empty) on the command line")
    out = subprocess.run([str(BIN / "tdabench"), "results_dir=", f"cache_dir={tmp_path / 'c'}",
                          "wandb.mode=disabled"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "results_dir='' is empty" in out.stderr
    assert not list(tmp_path.rglob(".hydra"))  # Hydra wrote no output folder
