"""Recipe settings of the training loop: Nesterov momentum, bf16 autocast, channels-last layout,
and the recipe presets of conf/recipe/."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tdabench.harness.engine.compose import compose
from tdabench.harness.plugin.training import Recipe, recipe_problems, train, train_stacked
from tests.test_magic import TINY, TinyTask


def tiny(tmp_path, **recipe) -> TinyTask:
    cfg = dict(TINY, conv=True, double=False)
    cfg["recipe"] = {**TINY["recipe"], **recipe}
    return TinyTask(cfg, seed=3, cache_dir=tmp_path, log=lambda m: None)


@pytest.mark.parametrize("recipe", [{"nesterov": True}, {"nesterov": True, "channels_last": True},
                                    {"precision": "bf16"}, {"min_steps_per_epoch": 50}])
def test_replay_reproduces_training_with_each_setting(tmp_path, recipe):
    task = tiny(tmp_path, **recipe)
    params, _, buffers = task.replay(task.seed).run()
    stored = task.checkpoint().state_dict()
    for k, v in {**params, **buffers}.items():
        assert torch.equal(v, stored[k]), k


def test_settings_change_training_and_the_model_comes_back_in_the_default_layout(tmp_path):
    plain = tiny(tmp_path / "a").checkpoint().state_dict()
    nesterov = tiny(tmp_path / "b", nesterov=True, channels_last=True).checkpoint().state_dict()
    assert not torch.equal(plain["0.weight"], nesterov["0.weight"])
    assert all(v.is_contiguous() for v in nesterov.values())


def test_nesterov_matches_torch_sgd_in_the_vectorized_trainer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    recipe = Recipe(epochs=2, batch_size=5, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss(m, a, b):
        return nn.functional.cross_entropy(m(a), b, reduction="none")

    stacked = train_stacked(model, [state], loss, x, y, torch.arange(20)[None], recipe, [7])
    single = train(model, loss, x, y, torch.arange(20), recipe, 7).model.state_dict()
    for k, v in single.items():
        torch.testing.assert_close(stacked[k][0], v, rtol=1e-5, atol=1e-6)


def test_recipe_settings_are_checked():
    problems = recipe_problems({"precision": "fp8", "nesterov": "yes", "channels_last": 1})
    assert len(problems) == 3
    assert "task.recipe.precision='fp8' must be one of float32, bf16" in problems[0]


def test_fast_preset_is_merged_into_the_task_and_the_default_is_unchanged():
    fast = compose(["task=cifar2_resnet9", "recipe=fast", "task.recipe.epochs=1"])["task"]
    plain = compose(["task=cifar2_resnet9"])["task"]
    assert fast["recipe"]["nesterov"] and fast["recipe"]["epochs"] == 1 and fast["translate"] == 2
    assert "nesterov" not in plain["recipe"] and plain["recipe"]["epochs"] == 20


def test_dattri_architecture_has_its_published_size_and_trains_reproducibly(tmp_path):
    from tdabench.harness.plugin.task import Split
    from tdabench.tasks.cifar import Cifar2ResNet9, dattri_resnet9

    assert sum(p.numel() for p in dattri_resnet9(64, 2).parameters()) == 4_825_154
    cfg = compose(["task=cifar2_resnet9", "recipe=dattri", "task.width=4", "task.n_train=16",
                   "task.recipe.epochs=1", "task.recipe.batch_size=8"])["task"]
    assert not Cifar2ResNet9.validate(cfg) and cfg["arch"] == "dattri_resnet9"
    assert Cifar2ResNet9.validate({**cfg, "arch": "vgg"})[0].startswith("task.arch='vgg'")
    task = Cifar2ResNet9(cfg, cache_dir=tmp_path, log=lambda m: None)
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 2, (16,), generator=g))
    task._splits = (split, split, split)
    torch.manual_seed(1)
    a = task.fit_model(torch.arange(16), seed=5).model.state_dict()
    torch.manual_seed(2)  # the global generator's state does not matter: dropout draws are seeded
    b = task.fit_model(torch.arange(16), seed=5).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_min_steps_per_epoch_shrinks_the_batch_of_a_small_run_only():
    from tdabench.harness.plugin.training import minibatches, total_steps

    r = Recipe(epochs=2, batch_size=32, min_steps_per_epoch=8)
    assert [r.batch_for(n) for n in (60, 30, 250, 500)] == [8, 4, 32, 32]  # 250 and 500: unchanged
    assert Recipe(batch_size=32).batch_for(60) == 32
    batches = [b for _, b, *_ in minibatches(torch.arange(60), r, torch.Generator().manual_seed(0),
                                             torch.zeros(60, 1), torch.zeros(60))]
    assert len(batches) == total_steps(60, r) == 16 and max(len(b) for b in batches) == 8
    assert recipe_problems({"min_steps_per_epoch": 0}) == [
        "task.recipe.min_steps_per_epoch=0 must be a positive integer"]
