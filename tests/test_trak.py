"""TRAK: the chunked projection, agreement with traker, the sign, and the ensemble's benefit."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from tdabench.harness.engine.config import validate_pairing
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import lds
from tdabench.methods.trak import TRAK, Projector
from tdabench.tasks.digits import DigitsMLP
from tests.conftest import SMALL_DIGITS

SMALL_GT = {"subsets": 40, "alpha": 0.5, "seeds": 1, "from_checkpoint": False, "finetune_epochs": 5,
            "num_shards": 1}


def per_query_spearman(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [spearmanr(a[q].numpy(), b[q].numpy()).statistic for q in range(len(a))]


def test_projector_is_seeded_and_chunking_does_not_change_it():
    x = torch.randn(5, 1000, dtype=torch.float64)
    whole = Projector(1000, 64, seed=3, block_rows=4096, piece_bytes=2**30)(x)
    for kind in ("rademacher", "gaussian"):
        # drawn and applied in slices of 16 rows (the smallest): the same matrix as one draw
        one = Projector(1000, 64, seed=3, kind=kind, piece_bytes=2**30)
        sliced = Projector(1000, 64, seed=3, kind=kind, piece_bytes=1)
        assert torch.allclose(one(x), sliced(x), rtol=1e-12, atol=1e-12)
        # columns split into parts (per-parameter gradients) project like the whole rows
        parts = [x[:, :7], x[:, 7:500], x[:, 500:]]
        assert torch.allclose(sliced.project_parts(parts), one(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="999 columns"):
        Projector(1000, 64, seed=3).project_parts([x[:, :999]])
    small_blocks = Projector(1000, 64, seed=3, block_rows=100)
    assert small_blocks(x).shape == (5, 64)
    assert not torch.allclose(whole, Projector(1000, 64, seed=4)(x))
    # Rademacher entries scaled by 1/sqrt(k): squared norms are preserved on average
    big = Projector(1000, 4096, seed=0)(x)
    assert torch.allclose(big.square().sum(1), x.square().sum(1), rtol=0.1)
    gauss = Projector(1000, 4096, seed=0, kind="gaussian")(x)
    assert torch.allclose(gauss.square().sum(1), x.square().sum(1), rtol=0.1)


def test_a_kept_projection_is_drawn_once_and_equals_a_redrawn_one(monkeypatch):
    """On a GPU the projection is kept on the device after its first draw where it fits (here
    forced on the CPU with keep_bytes): the same values as drawing it every call, drawn once."""
    x = torch.randn(4, 300)
    redrawn = Projector(300, 32, seed=5, piece_bytes=1)
    kept = Projector(300, 32, seed=5, piece_bytes=1, keep_bytes=300 * 32 * 4)
    draws = []
    real = Projector._drawn
    monkeypatch.setattr(Projector, "_drawn", lambda self, *a: draws.append(self) or real(self, *a))
    assert torch.equal(kept(x), redrawn(x))
    assert torch.allclose(kept.project_parts([x[:, :9], x[:, 9:]]), redrawn(x), rtol=1e-5, atol=1e-5)
    assert draws.count(kept) == 1 and draws.count(redrawn) == 2
    assert not Projector(300, 32, seed=5, keep_bytes=300 * 32 * 4 - 1)._keeps("cpu", torch.float32)
    assert not Projector(300, 32, seed=5)._keeps("cpu", torch.float32)  # the CPU draws per call


@pytest.mark.reference
def test_trak_matches_traker_on_the_same_projection(small_digits):
    """traker's pipeline with the native projection draw gives the same per-query rankings."""
    pytest.importorskip("trak")
    from tdabench.methods.reference.traker import TrakTraker

    model = small_digits.checkpoint()
    for models, lam in ((1, 0.0), (2, 0.0), (1, 1.0)):
        native = TRAK(proj_dim=64, models=models, lambda_reg=lam)
        native.fit(small_digits, model)
        ours = native.score(small_digits, model)
        ref = TrakTraker(proj_dim=64, models=models, lambda_reg=lam, projector="native").score(
            small_digits, model)
        assert ref.shape == ours.shape == (20, 200)
        assert min(per_query_spearman(ours, ref)) >= 0.9, (models, lam)


@pytest.mark.reference
def test_traker_default_projector_runs_with_the_harness_sign(small_digits):
    pytest.importorskip("trak")
    from tdabench.methods.reference.traker import TrakTraker

    model = small_digits.checkpoint()
    method = TrakTraker(proj_dim=64)
    assert method.check(small_digits) == []
    _assert_same_class_helps(small_digits, method.score(small_digits, model))


def _assert_same_class_helps(task, scores):
    """Training examples of the query's own class lower its loss: negative scores on average."""
    same = task.query_split.targets[:, None] == task.train_split.targets[None, :]
    assert scores[same].mean() < 0
    assert scores[same].mean() < scores[~same].mean()


def test_trak_sign_and_margin_observable(small_digits, digits_cache):
    model = small_digits.checkpoint()
    method = TRAK(proj_dim=64)
    method.fit(small_digits, model)
    loss_scores = method.score(small_digits, model)
    _assert_same_class_helps(small_digits, loss_scores)
    # with the margin as the observable, helpful examples raise it: the sign flips
    margin_task = DigitsMLP(dict(SMALL_DIGITS, observable="margin"), seed=0, cache_dir=digits_cache,
                            log=lambda m: None)
    method.fit(margin_task, model)
    assert torch.allclose(method.score(margin_task, model), -loss_scores)
    # the loss as the model output function (what language-model tasks use) keeps the sign
    method = TRAK(proj_dim=64, output="loss")
    method.fit(small_digits, model)
    _assert_same_class_helps(small_digits, method.score(small_digits, model))


def test_trak_checks_its_parameters(small_digits):
    assert TRAK(proj_dim=64).check(small_digits) == []
    assert "Phi^T Phi is singular" in TRAK(proj_dim=512).check(small_digits)[0]
    assert TRAK(proj_dim=512, lambda_reg=1e-3).check(small_digits) == []
    assert "method.projection" in " ".join(TRAK(projection="sparse", proj_dim=64).check(small_digits))
    assert TRAK(models=1).requires == {"checkpoint"}
    assert "ensemble" in TRAK(models=5).requires
    assert TRAK(models=10).trainings(small_digits) == 10


class NoEnsembleDigits(DigitsMLP):
    capabilities = frozenset({"checkpoint"})


def test_ensemble_method_refused_before_work_on_a_task_without_ensembles(tmp_path):
    task = NoEnsembleDigits(dict(SMALL_DIGITS), seed=0, cache_dir=tmp_path, log=lambda m: None)
    problems = validate_pairing(task, TRAK(models=5, proj_dim=64))
    assert len(problems) == 1 and "needs ensemble" in problems[0] and task.name in problems[0]
    assert validate_pairing(task, TRAK(models=1, proj_dim=64)) == []
    assert not any(tmp_path.rglob("*.pt"))  # nothing was trained


@pytest.mark.slow
def test_trak_lds_rises_with_the_number_of_models(small_digits, digits_cache):
    """Ensembling over independently trained models reduces TRAK's variance (Park et al. 2023)."""
    gt = GroundTruthBuilder(small_digits, SMALL_GT, digits_cache, lambda m: None).build()
    model = small_digits.checkpoint()
    values = []
    for k in (1, 5, 10):
        method = TRAK(proj_dim=64, models=k)
        method.fit(small_digits, model)
        values.append(lds(method.score(small_digits, model), gt.masks, gt.mean_outcomes, 10).lds)
    assert values[0] < values[1] < values[2], values


def test_trak_keeps_member_features_in_memory_mapped_files(small_digits):
    """On the CPU each member's Phi lives in a file of the fitted method's own temporary folder
    (as traker keeps its features); scores equal those of features held in memory, and the folder
    goes with the method."""
    import gc
    from pathlib import Path

    model = small_digits.checkpoint()
    method = TRAK(proj_dim=32, models=3)
    method.fit(small_digits, model)
    folder = Path(method._store.name)
    assert sorted(p.name for p in folder.iterdir()) == ["phi_0.npy", "phi_1.npy", "phi_2.npy"]
    mapped = method.score(small_digits, model)
    method._train = [phi.clone() for phi in method._train]  # the same features, in memory
    assert torch.equal(method.score(small_digits, model), mapped)
    del method
    gc.collect()
    assert not folder.exists()


def test_a_copy_of_a_fitted_trak_keeps_its_features_and_a_task_ensemble_override_is_used(
        small_digits, monkeypatch):
    import copy
    import gc

    from tdabench.harness.plugin.task import Task

    model = small_digits.checkpoint()
    method = TRAK(proj_dim=16, models=2)
    method.fit(small_digits, model)
    scores = method.score(small_digits, model)
    first = method._store.name
    twin = copy.deepcopy(method)
    assert twin._store is None
    del method
    gc.collect()
    assert torch.equal(twin.score(small_digits, model), scores)  # the original's folder is gone
    twin.fit(small_digits, model)  # a refit writes a fresh folder
    assert twin._store.name != first and torch.equal(twin.score(small_digits, model), scores)
    # a task that defines its own ensemble (e.g. pythia_scaling, untrained copies) is used as is
    own = [small_digits.checkpoint(), small_digits.checkpoint()]
    monkeypatch.setattr(type(small_digits), "ensemble", lambda self, k, mode="full": own[:k])
    assert type(small_digits).ensemble is not Task.ensemble
    assert list(small_digits.ensemble_members(2)) == own
