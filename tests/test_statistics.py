"""The noise-ceiling estimator and the paired comparison, on synthetic data with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from tdabench.harness.read.lds import columnwise_spearman
from tdabench.harness.read.statistics import noise_ceiling, paired_comparison, seed_splits, tied_with_best


def synthetic_outcomes(rng, subsets=200, seeds=4, queries=60, noise=1.0):
    """Outcomes = a per-(subset, query) signal + independent retraining noise per seed."""
    signal = rng.normal(size=(subsets, queries))
    outcomes = signal[:, None, :] + noise * rng.normal(size=(subsets, seeds, queries))
    return signal, outcomes


@pytest.mark.parametrize("seeds,noise", [(2, 0.5), (3, 1.0), (4, 1.0), (4, 2.0), (6, 3.0)])
def test_ceiling_recovers_the_oracle_correlation(seeds, noise):
    """The ceiling equals what a perfect predictor (the true signal) reaches against the
    seed-averaged ground truth, within the estimator's interval."""
    rng = np.random.default_rng(seeds * 10 + int(noise * 10))
    signal, outcomes = synthetic_outcomes(rng, seeds=seeds, noise=noise)
    oracle = np.nanmean(columnwise_spearman(signal, outcomes.mean(1)))
    c = noise_ceiling(outcomes, n_boot=500)
    lo, hi = c.ceiling_ci
    assert lo - 0.02 <= oracle <= hi + 0.02, (oracle, c.ceiling, c.ceiling_ci)
    true_r = 1 / (1 + noise**2 / seeds)  # Pearson reliability of the K-seed mean
    assert c.reliability == pytest.approx(true_r, abs=0.06)


def test_ceiling_unknown_with_one_seed():
    c = noise_ceiling(np.zeros((10, 1, 3)))
    assert c.ceiling is None and "gt.seeds=2" in c.message


def test_seed_splits_are_balanced():
    assert seed_splits(2) == [([0], [1])]
    assert all(len(a) == 1 and len(b) == 2 for a, b in seed_splits(3))
    assert all(len(a) == 2 == len(b) for a, b in seed_splits(4)) and len(seed_splits(4)) == 3


def test_paired_test_finds_a_planted_difference():
    rng = np.random.default_rng(0)
    base = rng.normal(0.4, 0.15, size=100)
    better = base + 0.03 + rng.normal(0, 0.05, size=100)
    p = paired_comparison(better, base, "better", "base")
    assert p.p_value < 0.01 and p.ci[0] > 0 and p.mean_diff == pytest.approx(0.03, abs=0.015)
    assert tied_with_best({"better": better, "base": base}) == {"better": True, "base": False}


def test_paired_test_keeps_its_error_rate_when_there_is_no_difference():
    rng = np.random.default_rng(1)
    rejections = 0
    repeats = 300
    for _ in range(repeats):
        base = rng.normal(0.4, 0.15, size=100)
        a = base + rng.normal(0, 0.05, size=100)
        b = base + rng.normal(0, 0.05, size=100)
        rejections += paired_comparison(a, b).p_value < 0.05
    assert rejections / repeats < 0.08  # nominal 5%
