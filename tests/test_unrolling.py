"""TracIn and SOURCE: trajectory handling, limits that pin the formulas down, sign, refusal."""

from __future__ import annotations

import pytest
import torch

from tdabench.harness.engine.config import validate_pairing
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import lds
from tdabench.methods.baselines import GradDot
from tdabench.methods.ekfac import EKFAC
from tdabench.methods.source import SOURCE
from tdabench.methods.tracin import TracIn
from tdabench.methods.trajectory import split_segments
from tdabench.tasks.digits import DigitsMLP
from tests.conftest import SMALL_DIGITS
from tests.test_trak import SMALL_GT


def test_split_segments():
    assert [len(g) for g in split_segments(list(range(5)), 3)] == [2, 2, 1]
    assert [len(g) for g in split_segments(list(range(5)), 5)] == [1] * 5
    assert split_segments(list(range(3)), 1) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="3 trajectory snapshots into 4 segments"):
        split_segments(list(range(3)), 4)


def test_trajectory_ends_at_the_checkpoint(small_digits):
    snaps = small_digits.trajectory()
    assert len(snaps) == SMALL_DIGITS["trajectory_checkpoints"]
    last, ref = small_digits.snapshot_model(snaps[-1]), small_digits.checkpoint()
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), ref.state_dict().values()))


def test_tracin_is_the_step_weighted_sum_of_gradient_dot_products(small_digits):
    model = small_digits.checkpoint()
    scores = TracIn().score(small_digits, model)
    momentum = small_digits.recipe().momentum
    expected = sum(GradDot().score(small_digits, small_digits.snapshot_model(s)).double()
                   * s.lr * s.steps / (1 - momentum) / small_digits.n_train
                   for s in small_digits.trajectory())
    assert torch.allclose(scores.double(), expected, rtol=1e-4, atol=1e-9)


def test_source_with_a_long_segment_at_one_point_is_the_ekfac_influence_function(digits_cache):
    """One segment holding one snapshot (the checkpoint), with eta K (lambda + damping) >> 1:
    (1 - exp(-eta K H)) H^-1 -> H^-1, the classical influence function with the same curvature."""
    task = DigitsMLP(dict(SMALL_DIGITS, trajectory_checkpoints=1), seed=0, cache_dir=digits_cache,
                     log=lambda m: None)
    model = task.checkpoint()
    damping = 0.1  # absolute; eta K = 105 here, so exp(-eta K damping) ~ 3e-5
    source = SOURCE(segments=1, damping=damping, damping_kind="absolute", empirical_fisher=True)
    source.fit(task, model)
    ekfac = EKFAC(damping=damping + task.recipe().weight_decay, damping_kind="absolute",
                  empirical_fisher=True)
    ekfac.fit(task, model)
    a, b = source.score(task, model), ekfac.score(task, model)
    assert torch.allclose(a, b, rtol=1e-2, atol=1e-3 * b.abs().max().item())


def test_unrolling_sign_same_class_examples_help(small_digits):
    model = small_digits.checkpoint()
    same = small_digits.query_split.targets[:, None] == small_digits.train_split.targets[None, :]
    for method in (TracIn(), SOURCE()):
        assert method.check(small_digits) == []
        method.fit(small_digits, model)
        s = method.score(small_digits, model)
        assert s.shape == (20, 200) and torch.isfinite(s).all()
        assert s[same].mean() < 0 and s[same].mean() < s[~same].mean(), method.name


def test_source_checks_its_parameters(small_digits):
    problems = SOURCE(segments=4).check(small_digits)
    assert len(problems) == 1 and "trajectory_checkpoints=3" in problems[0]
    assert "method.damping" in SOURCE(damping=-1.0).check(small_digits)[0]
    assert "strategy='diag'" in " ".join(SOURCE(strategy="diag").check(small_digits))
    assert SOURCE().trainings(small_digits) == TracIn().trainings(small_digits) == 1


class CheckpointOnlyDigits(DigitsMLP):
    capabilities = frozenset({"checkpoint"})


def test_trajectory_methods_refused_before_work_on_a_task_without_trajectories(tmp_path):
    task = CheckpointOnlyDigits(dict(SMALL_DIGITS), seed=0, cache_dir=tmp_path, log=lambda m: None)
    for method in (TracIn(), SOURCE()):
        problems = validate_pairing(task, method)
        assert len(problems) == 1 and "needs trajectory" in problems[0], method.name
    assert not any(tmp_path.rglob("*.pt"))  # nothing was trained


def test_source_beats_gradient_dot_product_on_lds(small_digits, digits_cache):
    gt = GroundTruthBuilder(small_digits, SMALL_GT, digits_cache, lambda m: None).build()
    model = small_digits.checkpoint()
    values = {}
    for method in (GradDot(), TracIn(), SOURCE()):
        method.fit(small_digits, model)
        values[method.name] = lds(method.score(small_digits, model), gt.masks, gt.mean_outcomes, 10).lds
    assert values["source"] > values["grad_dot"] + 0.05, values
    assert values["tracin"] > 0.1, values


def test_lanczos_probe_finds_the_extreme_eigenvalues_of_an_indefinite_matrix():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hessian_spectrum.py"
    spec = importlib.util.spec_from_file_location("hessian_spectrum", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.tensor([-0.5]), torch.linspace(0.01, 2.0, 59, dtype=torch.float64)])
    h = q @ torch.diag(eig) @ q.T
    ritz, k = mod.lanczos_extremes(lambda v: v @ h, 60, 40)
    assert k == 40 and abs(ritz[0] + 0.5) < 1e-6 and abs(ritz[-1] - 2.0) < 1e-6
