"""Per-token query scores of ``ekfac``, ``kfac``, ``grad_dot``, ``tracin``, ``source`` and ``trak`` on a tiny
text_neox (skipped without the corpus)."""

from __future__ import annotations

import pytest
import torch

from tdabench.harness.read.lds import sequence_scores
from tdabench.methods.ekfac import EKFAC, KFAC
from tdabench.methods.gradients import iter_per_token_grads
from tdabench.tasks.data import shared_file
from tdabench.tasks.text import TextNeoX

CORPUS = shared_file("tinyshakespeare.txt")
needs_corpus = pytest.mark.skipif(CORPUS is None, reason="../shared/data/tinyshakespeare.txt is absent")

TINY = {"name": "text_neox", "text_path": None, "tokens": "char", "seq_len": 12,
        "heldout_fraction": 0.1, "n_train": 48, "n_query": 3, "n_test": 16, "layers": 1,
        "width": 16, "heads": 2, "observable": "loss", "trajectory_checkpoints": 2,
        "regime": "scratch", "base_examples": 64,
        "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
                   "schedule": "onecycle", "warmup": 0.2}}
TINY["base_recipe"] = dict(TINY["recipe"])


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    task = TextNeoX(dict(TINY), seed=0, cache_dir=tmp_path_factory.mktemp("tokens"), log=lambda m: None)
    yield task, task.checkpoint()
    torch.set_num_threads(before)


@needs_corpus
def test_per_token_grads_are_rows_of_the_token_jacobian(tiny_text):
    task, model = tiny_text
    q = task.query_split
    jac = torch.cat(list(iter_per_token_grads(task.token_observables, model, q.inputs[:2],
                                              q.targets[:2], chunk=1)))
    assert jac.shape[:2] == (2, TINY["seq_len"])
    for i, t in [(0, 0), (1, 7)]:
        model.zero_grad()
        task.token_observables(model, q.inputs[i:i + 1], q.targets[i:i + 1])[0, t].backward()
        ref = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert torch.allclose(jac[i, t], ref, atol=1e-5)


@needs_corpus
@pytest.mark.parametrize("cls", [EKFAC, KFAC])
def test_mean_of_token_scores_is_the_sequence_score(tiny_text, cls):
    task, model = tiny_text
    kw = {"batch_size": 16, "fisher_samples": 1}
    tokens = cls(seed=0, **kw)
    assert tokens.check(task) == []
    per_token = tokens.score(task, model)
    assert per_token.shape == (TINY["n_query"], TINY["seq_len"], TINY["n_train"])
    sequence = cls(seed=0, per_token=False, **kw).score(task, model)
    assert sequence.shape == (TINY["n_query"], TINY["n_train"])
    # the sequence observable is the mean token loss, so the harness's mean over T is exact
    assert torch.allclose(sequence_scores(per_token), sequence, rtol=1e-5, atol=1e-5 * float(sequence.abs().max()))
    assert not torch.allclose(per_token[:, 0], per_token[:, -1])  # tokens really differ
    parts = tokens.score_per_layer(task, model)
    assert torch.allclose(sum(parts.values()), per_token, atol=1e-4 * float(per_token.abs().max()))


def test_per_token_option_is_checked(small_digits):
    assert any("per_token=true" in p for p in EKFAC(per_token=True).check(small_digits))
    assert any("method.per_token='yes'" in p for p in KFAC(per_token="yes").check(small_digits))
    assert EKFAC(per_token="auto").check(small_digits) == []
    assert not EKFAC().token_scores(small_digits)


@needs_corpus
@pytest.mark.parametrize("name", ["grad_dot", "tracin", "source", "trak"])
def test_gradient_and_unrolling_methods_score_tokens(tiny_text, monkeypatch, name):
    """grad_dot, TracIn, SOURCE and TRAK score each query token on a per-token task when the run
    reads per-token scores (``task.token_scores_wanted``, set for ``lds_token``), else the
    sequence; the mean over tokens of the first is the second (the observable is the mean token
    loss)."""
    from tdabench.harness.core.registry import METHODS

    task, model = tiny_text
    cls = METHODS.get(name)
    kw = {"batch_size": 16, **{"source": {"segments": 2}, "trak": {"proj_dim": 16, "models": 2}}.get(name, {})}
    monkeypatch.setattr(task, "token_scores_wanted", True)
    tokens = cls(seed=0, **kw)
    assert tokens.check(task) == [] and tokens.token_scores(task)
    tokens.fit(task, model)
    per_token = tokens.score(task, model)
    assert per_token.shape == (TINY["n_query"], TINY["seq_len"], TINY["n_train"])
    monkeypatch.setattr(task, "token_scores_wanted", False)
    whole = cls(seed=0, **kw)
    assert not whole.token_scores(task)
    whole.fit(task, model)
    sequence = whole.score(task, model)
    assert sequence.shape == (TINY["n_query"], TINY["n_train"])
    assert torch.allclose(sequence_scores(per_token), sequence, rtol=1e-4, atol=1e-4 * float(sequence.abs().max()))
    assert not torch.allclose(per_token[:, 0], per_token[:, -1])  # tokens really differ


def test_runs_ask_for_token_scores_only_for_metrics_that_read_them():
    from tdabench.harness.plugin.metric import wants_token_scores

    assert wants_token_scores({"metric": "lds,lds_token".split(",")})
    assert not wants_token_scores({"metric": ["lds", "lds_stagewise", "removal"]})
    assert not wants_token_scores({})
