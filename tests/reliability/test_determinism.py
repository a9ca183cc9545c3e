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


def test_a_gpu_run_asks_for_deterministic_kernels_and_a_cpu_run_changes_nothing(monkeypatch):
    """Same-seed retrainings and magic's replay assume kernels that reproduce themselves: on cuda
    the run turns on deterministic algorithms and turns off TF32 and cuDNN autotuning; on the CPU
    (the pinned results) no global setting moves. The flags are set without a GPU."""
    import os

    from tdabench.harness.engine.config import reproducible_device
    from tdabench.harness.read.results import provenance

    flags = lambda: (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,  # noqa: E731
                     torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32)
    before = flags()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    reproducible_device("cpu")
    assert flags() == before and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    try:
        reproducible_device("cuda:0")
        assert flags() == (True, True, False, False, False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[3], before[4]
    assert "accelerator" not in provenance("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    assert provenance("cuda:1")["accelerator"] == "Fake GPU 1"
