"""pytest-benchmark timings of the hot paths, native against reference on the same model and data
(``make bench`` runs them; the ratio scripts in ``benchmarks/`` print the measured ratios).

Groups: ground truth (loop against vectorized retraining), and fit + score of EK-FAC, TRAK and
the BIF against kronfluence, traker and devinterp. Every round starts from an empty cache folder
(the checkpoint is trained in the untimed setup), so cached factors or models are never timed.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.tasks.digits import DigitsMLP
from tests.conftest import SMALL_DIGITS

pytestmark = pytest.mark.slow

GT = {"subsets": 30, "alpha": 0.5, "seeds": 1, "from_checkpoint": False, "finetune_epochs": 5,
      "num_shards": 1}
SHORT_BIF = {"chains": 2, "draws": 50, "burn_in": 20, "steps_between_draws": 2, "eps": 1e-3,
             "gamma": 100.0, "batch_size": 32}
PAIRS = {
    "ekfac": ("ekfac", "ekfac_kronfluence", {}),
    "trak": ("trak", "trak_traker", {"proj_dim": 128}),
    "bif": ("bif", "bif_devinterp", SHORT_BIF),
}
ROUNDS = 2


def fresh_task(root, counter):
    """A digits task in a new cache folder, its checkpoint already trained."""
    task = DigitsMLP(dict(SMALL_DIGITS), seed=0, cache_dir=root / f"round{next(counter)}",
                     log=lambda m: None)
    return task, task.checkpoint()


@pytest.mark.benchmark(group="ground truth (digits_mlp, 30 models)")
@pytest.mark.parametrize("vectorize", [False, True], ids=["loop", "vectorized"])
def test_bench_ground_truth(benchmark, tmp_path, vectorize):
    counter = itertools.count()
    task, _ = fresh_task(tmp_path, counter)

    def setup():
        return (tmp_path / f"gt{next(counter)}",), {}

    def build(cache):
        return GroundTruthBuilder(task, dict(GT, vectorize=vectorize), cache, lambda m: None).build()

    gt = benchmark.pedantic(build, setup=setup, rounds=ROUNDS)
    benchmark.extra_info["models_per_s"] = GT["subsets"] * GT["seeds"] / benchmark.stats["mean"]
    assert gt.outcomes.shape[0] == GT["subsets"] and torch.isfinite(gt.outcomes).all()


@pytest.mark.parametrize("implementation", ["native", "reference"])
@pytest.mark.parametrize("family", sorted(PAIRS))
def test_bench_method(benchmark, tmp_path, family, implementation):
    pytest.importorskip({"ekfac": "kronfluence", "trak": "trak", "bif": "devinterp"}[family])
    native, reference, params = PAIRS[family]
    name = native if implementation == "native" else reference
    benchmark.group = f"{family}: fit + score (digits_mlp, 200 train, 20 queries)"
    counter = itertools.count()

    def setup():
        return fresh_task(tmp_path, counter), {}

    def fit_score(task, model):
        method = METHODS.get(name)(**params)
        method.fit(task, model)
        return method.score(task, model)

    scores = benchmark.pedantic(fit_score, setup=setup, rounds=ROUNDS)
    assert scores.shape == (SMALL_DIGITS["n_query"], SMALL_DIGITS["n_train"])
    assert torch.isfinite(scores).all()
