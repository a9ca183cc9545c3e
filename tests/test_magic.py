"""Exact unrolling (magic), the replay it differentiates, the same-seed ground truth, and the
matrix-free exact IF."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tdabench.harness.engine.config import validate_pairing
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder, gt_key
from tdabench.harness.plugin.task import Split, Task
from tdabench.harness.plugin.training import train
from tdabench.harness.read.lds import lds
from tdabench.methods.exact_if import ExactIF
from tdabench.methods.magic import Magic
from tests.conftest import SMALL_DIGITS


class TinyTask(Task):
    """Random float64 data with a small tanh MLP (or a conv net with batch norm), random sign
    flips as augmentation: every ingredient of replay, small enough for finite differences."""

    name = "tiny"
    capabilities = Task.capabilities | {"replayable"}

    def load_splits(self):
        g = torch.Generator().manual_seed(self.seed)
        dtype = torch.float64 if self.cfg.get("double", True) else torch.float32
        shape = (3, 6, 6) if self.cfg.get("conv") else (5,)
        w = torch.randn(shape, generator=g, dtype=dtype).flatten()

        def split(n):
            x = torch.randn(n, *shape, generator=g, dtype=dtype)
            y = ((x.flatten(1) @ w) > 0).long() + (x.flatten(1)[:, 0] > 1).long()
            return Split(x, y)

        return split(self.n_train), split(self.n_query), split(30)

    def build_model(self):
        if self.cfg.get("conv"):
            model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(64, 3))
        else:
            model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        return model.double() if self.cfg.get("double", True) else model

    def augment(self, inputs, gen):
        sign = (torch.rand(len(inputs), generator=gen) < 0.5).to(inputs.dtype) * 2 - 1
        return inputs * sign.view(-1, *([1] * (inputs.dim() - 1)))


TINY = {"n_train": 16, "n_query": 3, "recipe": {"epochs": 3, "batch_size": 5, "lr": 0.2,
                                                "momentum": 0.9, "weight_decay": 0.01,
                                                "schedule": "onecycle", "warmup": 0.3}}


def tiny(tmp_path, **cfg) -> TinyTask:
    return TinyTask(dict(TINY, **cfg), seed=3, cache_dir=tmp_path, log=lambda m: None)


@pytest.mark.parametrize("conv", [False, True])
def test_replay_reproduces_the_stored_checkpoint_bit_for_bit(tmp_path, conv):
    task = tiny(tmp_path, conv=conv, double=False)
    params, _, buffers = task.replay(task.seed).run()
    stored = task.checkpoint().state_dict()
    assert set(params) | set(buffers) == set(stored)
    for k, v in {**params, **buffers}.items():
        assert torch.equal(v, stored[k]), k


def test_replay_of_digits_reproduces_the_checkpoint(small_digits):
    params, _, _ = small_digits.replay(small_digits.seed).run()
    stored = small_digits.checkpoint().state_dict()
    assert all(torch.equal(params[k], stored[k]) for k in params)


def observables_after_training(task, weights):
    model = task.new_model(task.seed)
    split = task.train_split
    train(model, task.per_example_loss, split.inputs, split.targets, torch.arange(task.n_train),
          task.recipe(), task.seed, augment=task.augment, weights=weights)
    return task.query_observables(model)


@pytest.mark.parametrize("segment", [None, 1, 4])
def test_magic_equals_finite_differences_of_weighted_retraining(tmp_path, segment):
    task = tiny(tmp_path)
    scores = Magic(seeds=1, segment=segment, query_batch=2).score(task, task.checkpoint()).double()
    eps = 1e-5
    for i in (0, 7, 15):
        w = torch.ones(task.n_train, dtype=torch.float64)
        w[i] += eps
        up = observables_after_training(task, w)
        w[i] -= 2 * eps
        down = observables_after_training(task, w)
        fd = (up - down) / (2 * eps)
        rel = (fd - scores[:, i]).norm() / fd.norm()
        assert rel < 1e-3, (i, fd, scores[:, i])
    assert Magic().check(task) == [] and validate_pairing(task, Magic()) == []


def test_magic_is_refused_on_tasks_that_cannot_replay(tmp_path):
    class Fixed(TinyTask):
        capabilities = frozenset({"checkpoint"})

    problems = validate_pairing(Fixed(dict(TINY), seed=0, cache_dir=tmp_path), Magic())
    assert problems and "replayable" in problems[0]
    assert "method.seeds=0" in Magic(seeds=0).check(tiny(tmp_path))[0]


def test_same_seed_ground_truth_is_the_reference_run_with_removed_examples_at_weight_zero(tmp_path):
    task = tiny(tmp_path, double=False)
    gt = {"subsets": 4, "alpha": 0.75, "seeds": 3, "from_checkpoint": False, "finetune_epochs": 1,
          "vectorize": False, "models_per_batch": 64, "shard": None, "num_shards": 1,
          "same_seed": True}
    builder = GroundTruthBuilder(task, gt, tmp_path, log=lambda m: None)
    assert builder.mode == "same_seed" and builder.seeds == 1
    assert builder.dir.name.startswith("tiny-same_seed-")
    assert gt_key(task, gt) != gt_key(task, dict(gt, same_seed=False))
    result = builder.build()
    assert result.outcomes.shape == (4, 1, task.n_query)
    expected = observables_after_training(task, builder.masks[2].float())
    assert torch.equal(result.outcomes[2, 0], expected)
    # all weights 1: the reference checkpoint itself
    assert torch.equal(observables_after_training(task, torch.ones(task.n_train)),
                       task.query_observables(task.checkpoint()))


def test_magic_predicts_the_same_seed_ground_truth_of_small_removals(digits_cache):
    from tdabench.tasks.digits import DigitsMLP

    task = DigitsMLP(dict(SMALL_DIGITS, n_train=100, n_query=10, recipe=dict(SMALL_DIGITS["recipe"], epochs=8)),
                     seed=0, cache_dir=digits_cache, log=lambda m: None)
    gt = {"subsets": 20, "alpha": 0.95, "seeds": 1, "from_checkpoint": False, "finetune_epochs": 1,
          "vectorize": True, "models_per_batch": 64, "shard": None, "num_shards": 1, "same_seed": True}
    truth = GroundTruthBuilder(task, gt, digits_cache, log=lambda m: None).build()
    scores = Magic(same_seed=True).score(task, task.checkpoint())
    assert lds(scores, truth.masks, truth.mean_outcomes, 100, 0).lds > 0.9


def test_exact_if_cg_and_lissa_agree_with_the_dense_solve(small_digits):
    model = small_digits.checkpoint()

    def solve(**kw):
        m = ExactIF(**kw)
        m.fit(small_digits, model)
        return m.score(small_digits, model), m.diagnostics

    def rho(a, b):
        return sum(spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy())) / len(a)

    dense, _ = solve(damping=0.01)
    cg, info = solve(damping=0.01, solver="cg", max_iter=300, tol=1e-8)
    assert rho(dense, cg) > 0.99, info
    # LiSSA converges where H + damping is positive definite and well conditioned
    dense, _ = solve(damping=0.5)
    neumann, info = solve(damping=0.5, solver="lissa", max_iter=400, tol=1e-7)
    assert rho(dense, neumann) > 0.99, info
    assert "method.solver='qr'" in ExactIF(solver="qr").check(small_digits)[0]
    assert ExactIF(max_params=100, solver="cg").check(small_digits) == []


def test_interrupted_conjugate_gradient_resumes_where_it_stopped(tmp_path):
    from tdabench.methods.exact_if import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    a = a @ a.T + 0.1 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(3, 30, generator=g, dtype=torch.float64)
    full, info = conjugate_gradient(lambda v: v @ a, b, 1e-12, 25)
    calls = []

    def interrupted(v):
        calls.append(1)
        if len(calls) > 10:
            raise KeyboardInterrupt("stopped")
        return v @ a

    state = tmp_path / "cg.pt"
    with pytest.raises(KeyboardInterrupt):
        conjugate_gradient(interrupted, b, 1e-12, 25, state, save_every_s=0.0)
    assert state.exists()
    resumed, rinfo = conjugate_gradient(lambda v: v @ a, b, 1e-12, 25, state, save_every_s=0.0)
    assert rinfo["resumed_from"] == 10 and rinfo["iterations"] == info["iterations"]
    assert torch.allclose(resumed, full, rtol=1e-10, atol=1e-12) and not state.exists()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        conjugate_gradient(interrupted, b, 1e-12, 25, state, save_every_s=0.0)
    other, oinfo = conjugate_gradient(lambda v: v @ a, 2 * b, 1e-12, 25, state)  # another b: not used
    assert oinfo["resumed_from"] == 0 and torch.allclose(other, 2 * full, rtol=1e-8, atol=1e-10)


def test_interrupted_reverse_pass_resumes_from_its_last_segment(tmp_path):
    from tdabench.methods.magic import metagradient

    task = tiny(tmp_path)
    q = slice(0, 2)
    full = metagradient(task, task.replay(task.seed), q, segment=3)
    replay = task.replay(task.seed)
    step, calls = replay.step, []

    def failing(*args, **kwargs):
        calls.append(1)
        if kwargs.get("create_graph") and sum(1 for _ in calls) > replay.steps + 8:
            raise KeyboardInterrupt("stopped")
        return step(*args, **kwargs)

    replay.step = failing
    state = tmp_path / "magic-state.pt"
    with pytest.raises(KeyboardInterrupt):
        metagradient(task, replay, q, segment=3, state_path=state)
    assert state.exists()
    diagnostics = {}
    resumed = metagradient(task, task.replay(task.seed), q, segment=3, diagnostics=diagnostics,
                           state_path=state)
    assert 0 < diagnostics["resumed_from_step"] < task.replay(task.seed).steps
    assert torch.allclose(resumed, full, rtol=1e-9, atol=1e-12) and not state.exists()
