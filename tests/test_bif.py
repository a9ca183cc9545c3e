"""The native BIF: covariance accumulation, batched vs looped chains, divergence guard,
per-token scores, and agreement with the exact influence function on a convex model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from tdabench.harness.plugin.task import Split, Task
from tdabench.methods.bif import BIF, CovarianceAccumulator, SGLDDivergenceError
from tdabench.methods.exact_if import ExactIF
from tdabench.tasks.digits import DigitsMLP


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and much faster on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_accumulator_matches_torch_cov():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g) + 100.0  # large mean: the shift must prevent cancellation
    y = torch.randn(50, 3, generator=g) + x[:, :3] * 0.5
    acc = CovarianceAccumulator(x[0], y[0])
    for i in range(0, 50, 8):
        acc.add(x[i:i + 8], y[i:i + 8])
    full = torch.cov(torch.cat([y, x], 1).T.double())
    torch.testing.assert_close(acc.covariance(), full[:3, 3:], rtol=1e-9, atol=1e-9)
    corr = torch.corrcoef(torch.cat([y, x], 1).T.double())
    torch.testing.assert_close(acc.correlation(), corr[:3, 3:], rtol=1e-9, atol=1e-9)


FAST = dict(chains=2, draws=30, burn_in=20, steps_between_draws=2, eps=3e-4, gamma=100.0, batch_size=32)


def test_vectorized_and_looped_chains_agree(small_digits):
    model = small_digits.checkpoint()
    a, b = BIF(**FAST), BIF(**FAST, vectorize=False)
    assert a.check(small_digits) == []
    a.fit(small_digits, model)
    b.fit(small_digits, model)
    assert a.diagnostics["vectorized"] and not b.diagnostics["vectorized"]
    sa, sb = a.score(small_digits, model), b.score(small_digits, model)
    assert sa.shape == (small_digits.n_query, small_digits.n_train)
    torch.testing.assert_close(sa, sb, rtol=1e-3, atol=1e-5 * sa.abs().max().item())
    trace = a.diagnostics["loss_trace"]
    assert len(trace) == 2 and len(trace[0]) == a.total_steps()
    assert len(a.diagnostics["draw_loss_trace"][0]) == FAST["draws"]


def test_divergence_is_caught_with_a_fix(small_digits):
    model = small_digits.checkpoint()
    m = BIF(**{**FAST, "eps": 0.5})
    with pytest.raises(SGLDDivergenceError, match="smaller method.eps.*larger method.gamma"):
        m.fit(small_digits, model)
    with pytest.raises(RuntimeError, match="before bif.fit"):
        m.score(small_digits, model)


def test_check_rejects_bad_settings(small_digits):
    problems = BIF(eps=0, normalize="spearman", batch_size=10_000).check(small_digits)
    assert any("method.eps" in p for p in problems)
    assert any("method.normalize" in p for p in problems)


def test_a_batch_larger_than_the_training_set_is_the_whole_set(small_digits):
    """batch_size above n_train runs (it is not refused) and gives what batch_size = n_train gives."""
    model = small_digits.checkpoint()
    fast = {**FAST, "chains": 1, "draws": 6, "burn_in": 4}
    big, whole = BIF(**{**fast, "batch_size": 10_000}), BIF(**{**fast, "batch_size": small_digits.n_train})
    assert big.check(small_digits) == []
    big.fit(small_digits, model)
    whole.fit(small_digits, model)
    assert torch.equal(big.score(small_digits, model), whole.score(small_digits, model))
    assert big.diagnostics["batch_size_used"] == small_digits.n_train


# ----- per-token scores on a tiny causal character model ----------------------------------------
class TinyCharLM(Task):
    """Random sequences from a fixed Markov chain over 6 symbols; a bigram model (embedding ->
    tanh -> logits, position t sees only token t, so it is causal). Inputs are tokens [N, T],
    targets the next tokens [N, T]."""

    name = "tiny_char"
    capabilities = Task.capabilities | {"per_token"}
    V, T = 6, 5

    def load_splits(self):
        g = torch.Generator().manual_seed(self.seed)
        trans = torch.softmax(3 * torch.randn(self.V, self.V, generator=g), 1)
        n = self.n_train + 2 * self.n_query
        seq = torch.empty(n, self.T + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, self.V, (n,), generator=g)
        for t in range(self.T):
            seq[:, t + 1] = torch.multinomial(trans[seq[:, t]], 1, generator=g)[:, 0]
        x, y = seq[:, :-1], seq[:, 1:]
        q = self.n_train + self.n_query
        return (Split(x[:self.n_train], y[:self.n_train]), Split(x[self.n_train:q], y[self.n_train:q]),
                Split(x[q:], y[q:]))

    def build_model(self):
        return nn.Sequential(nn.Embedding(self.V, 8), nn.Tanh(), nn.Linear(8, self.V))

    def token_observables(self, model, inputs, targets):
        logits = model(inputs)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")

    def per_example_loss(self, model, inputs, targets):
        return self.token_observables(model, inputs, targets).mean(1)


class TinyCharSequence(TinyCharLM):
    """The same task without per-token observables."""

    capabilities = Task.capabilities


TINY = {"n_train": 60, "n_query": 8, "recipe": {"epochs": 20, "batch_size": 16, "lr": 0.5}}


def test_per_token_scores_reduce_to_sequence_scores(tmp_path):
    lm = TinyCharLM(TINY, seed=0, cache_dir=tmp_path, log=lambda m: None)
    seq = TinyCharSequence(TINY, seed=0, cache_dir=tmp_path, log=lambda m: None)
    model = lm.checkpoint()
    settings = dict(chains=2, draws=40, burn_in=10, steps_between_draws=2, eps=1e-3, gamma=10.0,
                    batch_size=16)
    a, b = BIF(**settings), BIF(**settings)
    a.fit(lm, model)
    b.fit(seq, model)
    per_token = a.score(lm, model)
    assert per_token.shape == (lm.n_query, lm.T, lm.n_train)
    # the covariance is linear in the observable: the token mean of per-token scores is the
    # sequence score from the same draws
    torch.testing.assert_close(per_token.mean(1), b.score(seq, model), rtol=1e-4, atol=1e-7)


# ----- regular model: BIF vs the exact classical influence function --------------------------
class LogisticDigits(DigitsMLP):
    """Multinomial logistic regression (64 -> 10) on digits, trained with L2 (a convex model)."""

    def build_model(self):
        return nn.Linear(64, 10)


def test_bif_matches_exact_if_on_a_convex_model(tmp_path):
    cfg = {"n_train": 300, "n_query": 30, "recipe": {"epochs": 150, "batch_size": 300, "lr": 0.5,
                                                      "momentum": 0.9, "weight_decay": 1e-3}}
    task = LogisticDigits(cfg, seed=0, cache_dir=tmp_path, log=lambda m: None)
    model = task.checkpoint()
    n = task.n_train
    nbeta, gamma = 4.0 * n, 400.0
    # full-batch Langevin (no minibatch noise). The Laplace covariance is (nbeta H + gamma I)^-1,
    # so -Cov(phi_q, l_i) ~ -(1/nbeta) g_q^T (H + gamma/nbeta)^-1 g_i: (n/nbeta) times the exact
    # IF with damping gamma/nbeta (ExactIF's Hessian already holds the recipe's weight decay,
    # which the posterior lacks). nbeta > n shrinks the second-order (non-IF) part of the
    # covariance; many short parallel chains keep the Monte Carlo noise low.
    bif = BIF(chains=32, draws=400, burn_in=50, steps_between_draws=1, eps=2e-3, gamma=gamma,
              nbeta=nbeta, batch_size=n)
    bif.fit(task, model)
    exact = ExactIF(damping=gamma / nbeta - 1e-3)
    exact.fit(task, model)
    rho = spearmanr(bif.score(task, model).flatten(), exact.score(task, model).flatten())[0]
    assert rho >= 0.9, rho


# ----- the devinterp reference adapter ----------------------------------------------------------
@pytest.mark.reference
def test_devinterp_adapter_agrees_with_native(small_digits):
    pytest.importorskip("devinterp")
    from tdabench.methods.reference.devinterp import DevinterpBIF

    model = small_digits.checkpoint()
    settings = dict(chains=2, draws=150, burn_in=20, steps_between_draws=3, eps=3e-4, gamma=100.0,
                    batch_size=32)
    assert DevinterpBIF(**{**settings, "gamma": 0.0}).check(small_digits)  # devinterp is unlocalized at 0
    ref, native = DevinterpBIF(**settings), BIF(**settings)
    ref.fit(small_digits, model)
    native.fit(small_digits, model)
    a, b = ref.score(small_digits, model), native.score(small_digits, model)
    assert a.shape == b.shape == (small_digits.n_query, small_digits.n_train)
    # same estimator, independent noise: the scores agree up to Monte Carlo error, sign included
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.25


def test_a_long_fit_logs_its_progress(small_digits, monkeypatch, caplog):
    import logging

    from tdabench.harness.core.logs import Ticker
    from tdabench.methods import bif as bif_module

    monkeypatch.setattr(bif_module, "Ticker", lambda log, what, total: Ticker(log, what, total, every_s=0.0))
    method = bif_module.BIF(seed=0, chains=2, draws=3, burn_in=4, steps_between_draws=2, parallel_chains=1)
    root = logging.getLogger("tdabench")  # which may not propagate (the console's set-up)
    root.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="tdabench"):
            method.fit(small_digits, small_digits.checkpoint())
    finally:
        root.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bif: SGLD steps")]
    assert lines[0].startswith("bif: SGLD steps: 1/20 ") and lines[-1].startswith("bif: SGLD steps: 20/20 (100%")
