"""CIFAR tasks on real images from ../shared/data (skipped without them)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tdabench.harness.engine.compose import CONF_DIR, register_configs
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import prepare
from tdabench.methods.gradients import per_example_grads
from tdabench.tasks.cifar import CIFAR10_CLASSES, Cifar2ResNet9, CifarResNet9, resnet9
from tdabench.tasks.data import shared_file, unpack_once

ARCHIVE = shared_file("cifar10-jpeg.tar.gz")
needs_data = pytest.mark.skipif(ARCHIVE is None, reason="../shared/data/cifar10-jpeg.tar.gz is absent")

RECIPE = {"epochs": 12, "batch_size": 64, "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4,
          "schedule": "onecycle", "warmup": 0.25}


def cifar_cfg(**over) -> dict:
    cfg = {"name": "cifar10_resnet9", "data_dir": None, "classes": None, "n_train": 500,
           "n_query": 20, "n_test": 500, "width": 8, "observable": "loss", "label_smoothing": 0.1,
           "flip": True, "translate": 0, "trajectory_checkpoints": 2, "recipe": dict(RECIPE)}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cifar-cache")


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """An image folder with the first 50 training and 60 test images of every class, copied out
    of the shared archive (unpacking all 60,000 files is left to the slow test)."""
    root = tmp_path_factory.mktemp("cifar-folder")
    keep = {"train": 50, "test": 60}
    with tarfile.open(ARCHIVE) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 3 and int(Path(parts[-1]).stem) < keep[parts[-3]]:
                out = root.joinpath(*parts[-3:])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
    return root


@pytest.fixture(scope="module")
def cifar10(cifar_folder, cache):
    return CifarResNet9(cifar_cfg(data_dir=str(cifar_folder)), seed=0, cache_dir=cache,
                        log=lambda m: None)


@needs_data
def test_cifar10_loads_balanced_images(cifar10):
    train, query, test = cifar10.train_split, cifar10.query_split, cifar10.test_split
    assert train.inputs.shape == (500, 3, 32, 32) and train.inputs.dtype == torch.float32
    assert query.inputs.shape == (20, 3, 32, 32) and test.inputs.shape == (500, 3, 32, 32)
    assert torch.bincount(train.targets, minlength=10).tolist() == [50] * 10
    assert torch.bincount(query.targets, minlength=10).tolist() == [2] * 10
    assert int(test.targets.min()) >= 0 and int(test.targets.max()) <= 9
    # normalized pixels: roughly zero mean, unit spread per channel
    mean = train.inputs.mean(dim=(0, 2, 3))
    assert mean.abs().max() < 0.3 and (train.inputs.std(dim=(0, 2, 3)) - 1).abs().max() < 0.3
    # queries are test images none of which is in the test-accuracy split
    q = query.inputs.flatten(1)
    assert torch.cdist(q, test.inputs.flatten(1)).min() > 0


@needs_data
def test_cifar10_decoded_images_are_cached(cifar10, cache):
    logs = []
    first = cifar10.train_split.inputs  # splits load on first use: this decodes and caches
    again = CifarResNet9(cifar10.cfg, seed=0, cache_dir=cache, log=logs.append)
    assert torch.equal(again.train_split.inputs, first) and not logs
    other_seed = CifarResNet9(cifar10.cfg, seed=1, cache_dir=cache, log=logs.append)
    assert not torch.equal(other_seed.query_split.inputs, cifar10.query_split.inputs)
    assert len(logs) == 1 and "decoding" in logs[0]


@needs_data
def test_cifar2_is_cat_vs_dog(cifar_folder, cache):
    task = Cifar2ResNet9(cifar_cfg(name="cifar2_resnet9", classes=None, n_train=100, n_query=10,
                                   n_test=50, data_dir=str(cifar_folder)), seed=0, cache_dir=cache,
                         log=lambda m: None)
    assert task.classes == ("cat", "dog")
    assert torch.bincount(task.train_split.targets).tolist() == [50, 50]
    assert task.new_model(0)(task.query_split.inputs).shape == (10, 2)


@needs_data
def test_resnet9_width8_trains_above_chance(cifar10):
    model = cifar10.fit_model(torch.arange(cifar10.n_train), seed=0).model
    quality = cifar10.evaluate(model)
    print(f"width-8 ResNet-9 on 500 CIFAR-10 images: {quality}")
    assert quality["test_acc"] > 0.25, quality  # chance is 0.10


def test_resnet9_shapes_and_per_example_grads():
    torch.manual_seed(0)
    model = resnet9(width=4, num_classes=10).eval()
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    assert model(x).shape == (3, 10)
    def loss(m, a, b):
        return torch.nn.functional.cross_entropy(m(a), b, reduction="none")
    g = per_example_grads(loss, model, x, y)
    model.zero_grad()
    loss(model, x[1:2], y[1:2]).sum().backward()
    ref = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(g[1], ref, atol=1e-5)


def test_label_smoothing_only_in_training_loss(tmp_path):
    task = CifarResNet9(cifar_cfg(label_smoothing=0.2), cache_dir=tmp_path)
    model = resnet9(width=4).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    plain = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(task.observable(model, x, y), plain)
    assert not torch.allclose(task.per_example_loss(model, x, y), plain)


def test_augment_flips_and_translates_reproducibly(tmp_path):
    task = CifarResNet9(cifar_cfg(translate=2), cache_dir=tmp_path)
    x = torch.randn(16, 3, 32, 32)
    a = task.augment(x, torch.Generator().manual_seed(0))
    b = task.augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    only_flip = CifarResNet9(cifar_cfg(translate=0), cache_dir=tmp_path)
    f = only_flip.augment(x, torch.Generator().manual_seed(0))
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(2)) for i in range(16))


def test_augmenting_many_minibatches_at_once_draws_as_one_at_a_time(tmp_path):
    task = CifarResNet9(cifar_cfg(translate=2), cache_dir=tmp_path)
    x = torch.randn(3, 8, 3, 32, 32)
    together = task.augment_many(x, [torch.Generator().manual_seed(s) for s in range(3)])
    for j in range(3):
        assert torch.equal(together[j], task.augment(x[j], torch.Generator().manual_seed(j)))


def test_missing_data_folder_is_one_clear_error(tmp_path):
    problems = CifarResNet9.validate(cifar_cfg(data_dir=str(tmp_path / "nowhere")))
    assert len(problems) == 1 and "does not exist" in problems[0]


def test_folder_with_a_missing_class_is_rejected_before_training(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in CIFAR10_CLASSES[:-1]:  # no truck
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / split / c / "0.jpg")
    register_configs()  # the method group, as the CLI registers it (the test may run alone)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "task=cifar10_resnet9", f"task.data_dir={tmp_path}", f"results_dir={tmp_path / 'r'}",
            f"cache_dir={tmp_path / 'c'}"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert len(err.value.problems) == 2 and all("truck" in p for p in err.value.problems)
    # a two-class task on the same folder is fine
    assert CifarResNet9.validate(cifar_cfg(data_dir=str(tmp_path), classes=["cat", "dog"],
                                           n_train=2, n_query=1, n_test=1)) == []


@pytest.mark.slow
@needs_data
def test_default_source_unpacks_the_shared_archive_once(tmp_path):
    logs = []
    task = CifarResNet9(cifar_cfg(n_train=1000, n_query=50, n_test=None), seed=0,
                        cache_dir=tmp_path, log=logs.append)
    assert torch.bincount(task.train_split.targets).tolist() == [100] * 10
    assert len(task.test_split) == 10_000 - 50
    dest = tmp_path / "data" / "cifar10-jpeg"
    assert sorted(p.name for p in (dest / "test").iterdir()) == list(CIFAR10_CLASSES)
    assert sum("unpacking" in m for m in logs) == 1
    assert unpack_once(ARCHIVE, dest, log=logs.append) == dest
    assert sum("unpacking" in m for m in logs) == 1


def test_resnet9_trains_stacked_with_batch_norm_and_augmentation_as_one_at_a_time(tmp_path):
    """train_stacked gives every model the minibatches, augmentation draws and batch-norm running
    statistics that train() gives it alone."""
    from tdabench.harness.plugin.training import Recipe, train, train_stacked

    task = CifarResNet9(cifar_cfg(translate=2), cache_dir=tmp_path)
    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,))
    idx = torch.stack([torch.arange(0, 16), torch.arange(8, 24)])
    recipe = Recipe(epochs=2, batch_size=8, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True,
                    schedule="onecycle", warmup=0.25)
    states = []
    for s in (1, 2):
        torch.manual_seed(s)
        states.append({k: v.clone() for k, v in resnet9(width=4).state_dict().items()})
    stacked = train_stacked(resnet9(width=4), states, task.per_example_loss, x, y, idx, recipe, [5, 6],
                            augment=task.augment_many)
    assert set(stacked) == set(states[0])  # parameters and buffers
    for j, seed in enumerate((5, 6)):
        model = resnet9(width=4)
        model.load_state_dict(states[j])
        alone = train(model, task.per_example_loss, x, y, idx[j], recipe, seed, augment=task.augment)
        for k, v in alone.model.state_dict().items():
            torch.testing.assert_close(stacked[k][j], v, rtol=1e-4, atol=1e-5, msg=f"model {j} {k}")
    moved = stacked["0.1.running_mean"]
    assert not torch.equal(moved[0], moved[1]) and moved.abs().sum() > 0
    assert stacked["0.1.num_batches_tracked"].tolist() == [4, 4]


def test_resnet9_trains_together_only_on_a_gpu(tmp_path):
    assert CifarResNet9(cifar_cfg(), cache_dir=tmp_path, device="cuda").vectorizable  # nothing runs on it here
    assert not CifarResNet9(cifar_cfg(), cache_dir=tmp_path).vectorizable  # slower on a CPU
    assert not CifarResNet9(cifar_cfg(arch="dattri_resnet9"), cache_dir=tmp_path).vectorizable


@needs_data
def test_ground_truth_models_trained_together_keep_their_batch_norm_statistics(cifar10, monkeypatch):
    monkeypatch.setattr(CifarResNet9, "vectorizable", True)
    recipe = cifar10.recipe()
    recipe.epochs = 1
    idx = torch.stack([torch.arange(0, 64), torch.arange(64, 128)])
    together = cifar10.fit_many(idx, [3, 4], recipe=recipe)
    alone = cifar10.fit_many(idx, [3, 4], recipe=recipe, vectorize=False)
    for a, b in zip(together, alone):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(v, w, rtol=1e-3, atol=1e-4, msg=k)
        assert not a.training
    q = cifar10.query_split
    torch.testing.assert_close(cifar10.observable(together[0], q.inputs, q.targets),
                               cifar10.observable(alone[0], q.inputs, q.targets), rtol=1e-3, atol=1e-3)


def test_stacked_training_under_bf16_autocast_keeps_float32_states(tmp_path):
    from tdabench.harness.plugin.training import Recipe, train_stacked

    task = CifarResNet9(cifar_cfg(), cache_dir=tmp_path)
    model = resnet9(width=4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    states = [resnet9(width=4).state_dict() for _ in range(2)]
    out = train_stacked(model, states, task.per_example_loss, x, y, torch.stack([torch.arange(16)] * 2),
                        Recipe(epochs=1, batch_size=8, precision="bf16"), [1, 2], augment=task.augment_many)
    assert out["0.0.weight"].dtype == torch.float32 and torch.isfinite(out["0.0.weight"]).all()
    assert not torch.equal(out["0.0.weight"][0], states[0]["0.0.weight"])
    assert all(not m._forward_pre_hooks for m in model.modules())  # the batch-norm casts are removed
