"""The ``dattri`` task on a miniature of dattri's benchmark download, made here without a network:
MNIST's files written from scikit-learn's digits, the checkpoints trained by dattri's own
``train_mnist_mlp`` and ``retrain_lds``, the ground truth computed by its own
``calculate_lds_ground_truth`` with its own ``loss_mnist_mlp``."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import execute

pytestmark = pytest.mark.reference
pytest.importorskip("dattri")

N_TRAIN, N_QUERY, N_TEST, SUBSETS = 300, 20, 80, 6


def _idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) in the idx format MNIST's files use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def _mnist_from_digits(raw: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images, np.ones((3, 3))) * 255 / 16  # 8x8 -> 24x24, then padded to 28x28
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).round()
    n = N_TRAIN + N_TEST
    _idx(raw / "train-images-idx3-ubyte", images[:N_TRAIN])
    _idx(raw / "train-labels-idx1-ubyte", d.target[:N_TRAIN])
    _idx(raw / "t10k-images-idx3-ubyte", images[N_TRAIN:n])
    _idx(raw / "t10k-labels-idx1-ubyte", d.target[N_TRAIN:n])


@pytest.fixture(scope="module")
def download(tmp_path_factory) -> Path:
    """``<root>/dataset/MNIST/raw`` and ``<root>/benchmark/mnist_mlp/{models_full,models_half,lds}``."""
    from dattri.benchmark.datasets.mnist import create_mnist_dataset, loss_mnist_mlp, train_mnist_mlp
    from dattri.metric import calculate_lds_ground_truth
    from dattri.model_util.retrain import retrain_lds
    from torch.utils.data import DataLoader, Subset

    root = tmp_path_factory.mktemp("dattri_download")
    _mnist_from_digits(root / "dataset" / "MNIST" / "raw")
    train_set, test_set = create_mnist_dataset(str(root / "dataset"))
    folder = root / "benchmark" / "mnist_mlp"
    train = DataLoader(Subset(train_set, range(N_TRAIN)), batch_size=64, shuffle=True)
    full = folder / "models_full" / "0" / "model_weights_0.pt"
    full.parent.mkdir(parents=True)
    torch.save(train_mnist_mlp(train, seed=0, epoch_num=20).state_dict(), full)
    retrain_lds(train_mnist_mlp, train, str(folder / "models_half"), num_subsets=SUBSETS, seed=0, epoch_num=20)
    queries = DataLoader(Subset(test_set, range(N_QUERY)), batch_size=64)
    targets, indices = calculate_lds_ground_truth(loss_mnist_mlp, str(folder / "models_half"), queries)
    (folder / "lds").mkdir()
    torch.save(indices, folder / "lds" / "indices_lds.pt")
    torch.save(targets, folder / "lds" / "target_values_lds.pt")
    return root


def overrides(root: Path, tmp: Path) -> list[str]:
    return ["task=dattri", f"task.root={root}", f"task.n_train={N_TRAIN}", f"task.n_query={N_QUERY}",
            f"gt.from=dattri:{root / 'benchmark' / 'mnist_mlp'}", "method=grad_dot", "threads=1",
            "wandb.mode=disabled", "cost.count=off", "lds.bootstrap=50", f"cache_dir={tmp / 'c'}",
            f"results_dir={tmp / 'r'}"]


def test_dattri_task_runs_against_dattris_checkpoints_and_ground_truth(download, tmp_path):
    from dattri.metric import lds

    record = execute(compose(overrides(download, tmp_path)))
    assert record["status"] == "ok", record.get("message")
    src = record["gt_source"]
    assert src["rows_checked_against_models_half"] == SUBSETS and src["models_full_0"] == "matches"
    assert record["gt_subsets"] == SUBSETS and record["gt_seeds"] == 1 and record["config"]["gt"]["alpha"] == 0.5
    assert record["model_quality"]["test_acc"] > 0.5 and record["n_train"] == N_TRAIN
    folder = download / "benchmark" / "mnist_mlp" / "lds"
    targets = torch.load(folder / "target_values_lds.pt", weights_only=True)
    indices = torch.load(folder / "indices_lds.pt", weights_only=True)
    scores = torch.load(tmp_path / "r" / record["scores_file"], weights_only=True)
    scores = scores["scores"] if isinstance(scores, dict) else scores
    assert record["lds"] == pytest.approx(float(torch.nanmean(lds(-scores.T, (targets, indices))[0])), abs=1e-6)


def test_methods_that_unroll_training_are_refused(download, tmp_path):
    with pytest.raises(Exception, match="trajectory"):
        execute(compose([*overrides(download, tmp_path), "method=tracin"]))


def test_a_missing_download_is_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match="task.root"):
        execute(compose([*overrides(tmp_path / "nowhere", tmp_path)]))
