"""Same config and seed on the same machine: identical scores, for every registered method."""

from __future__ import annotations

import pytest
import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import prepare

SMALL = ["task.n_train=120", "task.n_query=8", "task.hidden=16", "task.recipe.epochs=10",
         "wandb.mode=disabled", "method.seed=3"]
# settings that keep the slower methods to a few seconds here (their logic is unchanged)
CHEAP = {"bif": ["method.chains=2", "method.draws=20", "method.burn_in=10"],
         "bif_devinterp": ["method.chains=2", "method.draws=20", "method.burn_in=10"],
         "trak": ["method.proj_dim=32"], "trak_traker": ["method.proj_dim=32"]}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_scores_are_reproducible(tmp_path, name):
    cfg = compose([*SMALL, f"method={name}", *CHEAP.get(name, []), f"cache_dir={tmp_path / 'c'}",
                   f"results_dir={tmp_path / 'r'}"])
    runs = []
    for _ in range(2):
        task, method = prepare(cfg)  # fresh objects: nothing carried over in memory
        model = task.checkpoint()
        method.fit(task, model)
        runs.append(method.score(task, model))
    assert torch.equal(runs[0], runs[1])
