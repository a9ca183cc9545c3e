"""Shared fixtures: a small digits task with its own cache folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from tdabench.harness.core.logs import setup as setup_logging  # noqa: E402
from tdabench.harness.core.registry import METHODS, TASKS  # noqa: E402
from tdabench.tasks.digits import DigitsMLP  # noqa: E402

setup_logging(0)  # messages on stderr as the command-line tools show them
METHODS.names(), TASKS.names()  # load the entry points: classes carry their registered names

SMALL_DIGITS = {"name": "digits_mlp", "n_train": 200, "n_query": 20, "hidden": 16,
                "observable": "loss", "trajectory_checkpoints": 3,
                "recipe": {"epochs": 30, "batch_size": 32, "lr": 0.1, "momentum": 0.9,
                           "weight_decay": 0.001, "schedule": "cosine"}}


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def small_digits(digits_cache):
    """A 200-example digits task (16 hidden units) whose checkpoint is cached once per session."""
    return DigitsMLP(dict(SMALL_DIGITS), seed=0, cache_dir=digits_cache, log=lambda m: None)


# The models in the suite are tiny: one thread per process avoids oversubscribing the cores.
import torch  # noqa: E402

torch.set_num_threads(1)
