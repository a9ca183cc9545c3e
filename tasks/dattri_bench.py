"""``dattri``: dattri's published MNIST benchmark settings (dattri 0.3.0), built from dattri's own
data and model functions, with dattri's full-data checkpoints as the reference models.

A dattri benchmark download (``dattri.benchmark.load.load_benchmark``) is a folder ``task.root``
holding ``dataset/MNIST`` (MNIST as ``torchvision`` stores it) and ``benchmark/<setting>/``
(``models_full``, ``models_half``, ``lds/``, ``loo/``). This task takes the training set and the
queries as dattri's samplers do (the first 5,000 training images, the first 500 test images; the
rest of the test set measures accuracy), the model from dattri's ``create_mlp_model`` or
``create_lr_model``, the cross-entropy of dattri's loss functions, and
``models_full/<i>/model_weights_0.pt`` as its checkpoint (``i = 0``) and ensemble members. Run it
against dattri's ground truth with ``gt.from=dattri:<root>/benchmark/<setting>``: every row of that
ground truth is checked against its ``models_half`` model before use.

Settings: ``mnist_mlp`` and ``mnist_lr``. dattri's CIFAR-2 data comes from CIFAR-10's python
batches, which are pickles (reading them can run code), and dattri 0.3.0 has no model or loss
function for ``shakespeare_nanogpt``; neither is offered. The task has no training trajectory (dattri
publishes final checkpoints only), so methods that unroll training are refused. Its recipe is
dattri's (SGD, lr 0.01, momentum 0.9 for the MLP, 50 epochs; 20 epochs without momentum for
logistic regression) and is used only where a metric retrains.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tdabench.harness.plugin.task import Split, Task, TaskSettings

SETTINGS = ("mnist_mlp", "mnist_lr")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # dattri's create_mnist_dataset normalization


@dataclass(frozen=True)
class DattriSettings(TaskSettings):
    setting: str = "mnist_mlp"   # one of SETTINGS
    root: str | None = None      # a dattri download folder (dataset/MNIST and benchmark/<setting>)


class DattriBenchmark(Task):
    """dattri's published MNIST settings (MLP, logistic regression) with dattri's data, models and checkpoints."""

    capabilities = frozenset({"checkpoint", "ensemble", "classification"})
    settings_class = DattriSettings

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        own = cls.settings_class.of(cfg)
        if importlib.util.find_spec("dattri") is None:
            problems.append("task dattri needs the dattri package: pip install 'tdabench[reference]'")
        if own.setting not in SETTINGS:
            problems.append(f"task.setting={own.setting!r}: use one of {', '.join(SETTINGS)}")
        root = own.root
        if not root or not (Path(str(root)).expanduser() / "benchmark" / str(own.setting)).is_dir():
            problems.append(f"task.root={root!r} must be a dattri download folder holding benchmark/"
                            f"{own.setting}/ and dataset/ (dattri.benchmark.load.load_benchmark writes one)")
        return problems

    @property
    def folder(self) -> Path:
        """``<root>/benchmark/<setting>``: the checkpoints and ground truths of the setting."""
        return Path(str(self.settings.root)).expanduser() / "benchmark" / self.settings.setting

    def load_splits(self) -> tuple[Split, Split, Split]:
        from dattri.benchmark.datasets.mnist import create_mnist_dataset

        root = self.settings.root
        train_set, test_set = create_mnist_dataset(str(Path(str(root)).expanduser() / "dataset"))
        train, test = _tensors(train_set), _tensors(test_set)
        if len(train) < self.n_train or len(test) <= self.n_query:
            raise ValueError(f"task dattri: MNIST under {root} has {len(train)} training and "
                             f"{len(test)} test images; task.n_train={self.n_train} and task.n_query="
                             f"{self.n_query} need more")
        n, q = self.n_train, self.n_query
        return (Split(train.inputs[:n], train.targets[:n]), Split(test.inputs[:q], test.targets[:q]),
                Split(test.inputs[q:], test.targets[q:]))

    def build_model(self) -> nn.Module:
        if self.settings.setting == "mnist_lr":
            from dattri.benchmark.models.logistic_regression import create_lr_model

            return create_lr_model("mnist")
        from dattri.benchmark.models.mlp import create_mlp_model

        return create_mlp_model("mnist")

    def _published(self, kind: str, i: int) -> nn.Module:
        path = self.folder / kind / str(i) / "model_weights_0.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the dattri download holds fewer {kind} checkpoints")
        return self._model_from_state(torch.load(path, map_location="cpu", weights_only=True))

    def checkpoint(self) -> nn.Module:
        """dattri's ``models_full/0`` checkpoint."""
        return self._published("models_full", 0).to(self.device)

    def ensemble(self, k: int, mode: str = "full") -> list[nn.Module]:
        """dattri's ``models_full/0..k-1`` (``mode='half'``: ``models_half/0..k-1``)."""
        return [self._published("models_full" if mode == "full" else "models_half", i).to(self.device)
                for i in range(k)]


def _tensors(dataset) -> Split:
    """A torchvision MNIST dataset as tensors, through the arithmetic of dattri's transform
    (ToTensor, then Normalize with MNIST's mean and std), checked on its first image."""
    x = ((dataset.data.float().div(255)[:, None] - MNIST_MEAN) / MNIST_STD).contiguous()
    if len(dataset) and not torch.equal(x[0], dataset[0][0]):
        raise ValueError("MNIST images differ from dattri's transform of them; the dataset is not dattri's")
    return Split(x, dataset.targets.long())
