import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tdabench.harness.plugin.ground_truth import make_masks
from tdabench.harness.read.lds import ConstantOutcomeError, bootstrap_ci, columnwise_spearman, lds


def test_columnwise_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
    b[:, 0] = a[:, 0] ** 3  # monotone: rho = 1
    a[:3, 1] = a[0, 1]  # ties
    got = columnwise_spearman(a, b)
    want = [spearmanr(a[:, q], b[:, q]).statistic for q in range(5)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] == pytest.approx(1.0)


def _linear_world(n=60, m=40, nq=5, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(nq, n, generator=g)
    masks = make_masks(n, m, 0.5, seed)
    outcomes = masks.double() @ true.double().T + noise * torch.randn(m, nq, generator=g).double()
    return true, masks, outcomes


def test_exact_linear_scores_give_lds_one_and_random_near_zero():
    true, masks, outcomes = _linear_world()
    assert lds(true, masks, outcomes).lds == pytest.approx(1.0)
    rand = torch.randn(true.shape, generator=torch.Generator().manual_seed(1))
    res = lds(rand, masks, outcomes)
    assert abs(res.lds) < 0.25
    assert res.ci[0] <= res.lds <= res.ci[1]


def test_sign_matters():
    true, masks, outcomes = _linear_world()
    assert lds(-true, masks, outcomes).lds == pytest.approx(-1.0)


def test_constant_outcome_queries_are_reported_not_dropped_silently():
    true, masks, outcomes = _linear_world()
    outcomes[:, 2] = 1.0
    res = lds(true, masks, outcomes)
    assert res.constant_outcome_queries == [2]
    assert np.isnan(res.per_query[2])
    assert res.lds == pytest.approx(1.0)


def test_all_constant_outcomes_refused():
    true, masks, outcomes = _linear_world()
    with pytest.raises(ConstantOutcomeError, match="constant"):
        lds(true, masks, torch.zeros_like(outcomes))


def test_per_token_scores_reduce_to_mean_over_tokens():
    true, masks, outcomes = _linear_world()
    per_token = true[:, None, :].repeat(1, 4, 1) + torch.randn(5, 4, 60) * 1e-3
    assert lds(per_token, masks, outcomes).lds > 0.99


def test_shape_mismatch_is_a_clear_error():
    true, masks, outcomes = _linear_world()
    with pytest.raises(ValueError, match="expected \\[n_query, n_train\\]"):
        lds(true[:, :10], masks, outcomes)


def test_masks_are_exact_fraction_and_seeded():
    m = make_masks(101, 20, 0.5, seed=3)
    assert m.shape == (20, 101) and m.dtype == torch.bool
    assert (m.sum(1) == round(0.5 * 101)).all()
    assert torch.equal(m, make_masks(101, 20, 0.5, seed=3))
    assert not torch.equal(m, make_masks(101, 20, 0.5, seed=4))


def test_bootstrap_ci_covers_mean():
    v = np.random.default_rng(0).normal(0.3, 0.1, size=200)
    lo, hi = bootstrap_ci(v)
    assert lo < 0.3 < hi and hi - lo < 0.05
