"""text_neox: a tiny GPT-NeoX on tiny Shakespeare from ../shared/data (skipped without it)."""

from __future__ import annotations

import math

import pytest
import torch

from tdabench.methods.gradients import per_example_grads
from tdabench.tasks.data import shared_file
from tdabench.tasks.text import TextNeoX

CORPUS = shared_file("tinyshakespeare.txt")
needs_corpus = pytest.mark.skipif(CORPUS is None, reason="../shared/data/tinyshakespeare.txt is absent")

RECIPE = {"epochs": 6, "batch_size": 32, "lr": 0.5, "momentum": 0.9, "weight_decay": 0.0,
          "schedule": "onecycle", "warmup": 0.2}


def text_cfg(**over) -> dict:
    cfg = {"name": "text_neox", "text_path": None, "tokens": "char", "seq_len": 32,
           "heldout_fraction": 0.1, "n_train": 200, "n_query": 8, "n_test": 64, "layers": 1,
           "width": 32, "heads": 2, "observable": "loss", "trajectory_checkpoints": 2,
           "regime": "scratch", "base_examples": 400, "base_recipe": dict(RECIPE, epochs=3),
           "recipe": dict(RECIPE)}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    return TextNeoX(text_cfg(), seed=0, cache_dir=tmp_path_factory.mktemp("text"), log=lambda m: None)


@needs_corpus
def test_chunks_are_next_token_pairs_from_disjoint_regions(text_task):
    train, query, test = text_task.train_split, text_task.query_split, text_task.test_split
    assert train.inputs.shape == train.targets.shape == (200, 32)
    assert query.inputs.shape == (8, 32) and test.inputs.shape == (64, 32)
    assert torch.equal(train.inputs[:, 1:], train.targets[:, :-1])
    assert text_task.vocab_size() == 65  # tiny Shakespeare's characters
    train_rows = {tuple(r) for r in train.inputs.tolist()}
    assert not train_rows & {tuple(r) for r in query.inputs.tolist() + test.inputs.tolist()}


@needs_corpus
def test_tiny_neox_learns_well_below_uniform_loss(text_task):
    model = text_task.checkpoint()
    quality = text_task.evaluate(model)
    assert quality["uniform_loss"] == pytest.approx(math.log(65))
    assert quality["test_loss"] < quality["uniform_loss"] - 1.0, quality


@needs_corpus
def test_observables_per_token_and_gradients(text_task):
    model = text_task.checkpoint()
    q = text_task.query_split
    per_token = text_task.token_observables(model, q.inputs, q.targets)
    assert per_token.shape == (8, 32) and (per_token > 0).all()
    assert torch.allclose(per_token.mean(1), text_task.observable(model, q.inputs, q.targets), atol=1e-6)
    assert "per_token" in text_task.capabilities
    # torch.func works through the wrapper: per-example gradients match a plain backward pass
    g = per_example_grads(text_task.per_example_loss, model, q.inputs[:2], q.targets[:2])
    model.zero_grad()
    text_task.per_example_loss(model, q.inputs[1:2], q.targets[1:2]).sum().backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(g[1], ref, atol=1e-5)
    # next tokens drawn from the model (true Fisher): one per position
    drawn = text_task.sample_targets(model, q.inputs, torch.Generator().manual_seed(0))
    assert drawn.shape == q.inputs.shape and 0 <= int(drawn.min()) and int(drawn.max()) < 65


@needs_corpus
def test_finetune_regime_starts_from_a_cached_base(tmp_path):
    logs = []
    task = TextNeoX(text_cfg(regime="finetune", recipe=dict(RECIPE, epochs=1)), seed=0,
                    cache_dir=tmp_path, log=logs.append)
    base = task._model_from_state(task.base_state())
    tuned = task.checkpoint()
    base_loss, tuned_loss = task.evaluate(base)["test_loss"], task.evaluate(tuned)["test_loss"]
    assert base_loss < math.log(65) - 0.8 and tuned_loss < base_loss + 0.05
    task.base_state()
    assert sum("base checkpoint on" in m for m in logs) == 1  # trained once, then cached


def test_text_shorter_than_the_chunks_is_rejected(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be: that is the question.\n" * 20)
    problems = TextNeoX.validate(text_cfg(text_path=str(short)))
    assert len(problems) == 1 and "too short" in problems[0]
    missing = TextNeoX.validate(text_cfg(text_path=str(tmp_path / "none.txt")))
    assert len(missing) == 1 and "is not a file" in missing[0]


def test_byte_tokens_any_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(bytes(range(256)) * 40)
    task = TextNeoX(text_cfg(text_path=str(path), tokens="byte", n_train=20, n_query=2, n_test=2,
                             seq_len=16), seed=0, cache_dir=tmp_path, log=lambda m: None)
    assert task.vocab_size() == 256
    assert task.new_model(0)(task.query_split.inputs).shape == (2, 16, 256)


@needs_corpus
def test_finetune_replay_starts_from_the_base_and_reproduces_the_checkpoint(tmp_path):
    task = TextNeoX(text_cfg(regime="finetune", n_train=40, base_examples=40,
                             base_recipe=dict(RECIPE, epochs=1), recipe=dict(RECIPE, epochs=1)),
                    seed=0, cache_dir=tmp_path, log=lambda m: None)
    assert "replayable" in task.capabilities
    replay = task.replay(task.seed)
    start, _, _ = replay.initial()
    base = task.base_state()
    assert all(torch.equal(start[k], base[k]) for k in start)
    params, _, _ = replay.run()
    stored = task.checkpoint().state_dict()
    assert all(torch.equal(params[k], stored[k]) for k in params)
