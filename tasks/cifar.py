"""CIFAR-10 subsample tasks with the ResNet-9 of the TDA literature (TRAK, kronfluence, dattri).

- ``cifar10_resnet9``: all ten classes.
- ``cifar2_resnet9``: cat vs dog (CIFAR-10 classes 3 and 5, relabelled 0 and 1), as in dattri's
  CIFAR-2; any other pair is a ``task.classes`` override away.

Data. ``task.data_dir`` names an image folder (``train/<class>/*.jpg``, ``test/<class>/*.jpg``,
class folders named as in CIFAR-10: airplane ... truck). When it is null the task uses
``../shared/data/cifar10-jpeg.tar.gz`` beside the project (unpacked into the cache once) if it is
there, and otherwise downloads CIFAR-10 with torchvision into the cache. ``task.n_train`` images
are a class-balanced seeded subsample of the training split; ``task.n_query`` class-balanced
queries and ``task.n_test`` test images (null: all the rest) come from disjoint parts of the test
split. The decoded images are cached as uint8 tensors; inputs are normalized per channel.

Model. ResNet-9 (conv-BN-ReLU blocks, two residual stages, max pooling, a bias-free linear head
scaled by 0.2) with channel widths (w, 2w, 4w, 2w) for ``task.width`` = w; TRAK's is w = 64.
``task.arch=dattri_resnet9`` is dattri's CIFAR-2 ResNet-9 instead (basic blocks with projection
shortcuts and dropout 0.1; 4.83M parameters at w = 64; its dropout masks are drawn from a
generator seeded per training, so the same seed gives the same model, but exact replay
(``magic``) does not reproduce them).

Training (conf/task/cifar10_resnet9.yaml). SGD with momentum 0.9, a one-cycle learning rate
(peak 0.2 a quarter of the way in), weight decay 5e-4, batch 64, 20 epochs, label smoothing 0.1
in the training loss only, random horizontal flips (translations are available and off: they did
not help at these sizes). The observable, the ground truth and ``evaluate`` use plain
cross-entropy (or the margin). Measured on one CPU core: width 16 on 1000 CIFAR-10 images reaches
about 49% test accuracy (42-45% with 15 epochs; a naive 15-epoch recipe reached 22-30%), on 500
images about 42%; CIFAR-2 (cat vs dog) width 16 on 500 images about 67%. One training costs
about 2.7 ms per image and epoch at width 16 (about 55 s for 1000 images, 20 epochs).

Recipe presets (conf/recipe/, ``recipe=NAME``) replace these settings: ``fast`` (Nesterov SGD,
short warm-up and linear decay, label smoothing 0.2, flips and 2-pixel translations, batch 128,
channels-last; its width and epochs the knee measured on cat vs dog at 5,000 images, see
docs/tasks.md) and ``dattri`` (dattri's architecture and recipe). bf16 autocast
(``task.recipe.precision=bf16``) is for GPUs and CPUs with AVX-512 BF16 or AMX: on an AVX2-only
CPU PyTorch falls back to a slow convolution and a training step is about 8x slower.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.harness.plugin.space import Float, Int
from tdabench.harness.plugin.task import Split, Task, TaskSettings, margin
from tdabench.tasks.data import balanced_sample, shared_file, unpack_once

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
TRAIN_PER_CLASS, TEST_PER_CLASS = 5000, 1000
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
ARCHIVE = "cifar10-jpeg.tar.gz"
CIFAR10_HOST = "www.cs.toronto.edu"


def reachable(host: str, port: int = 443, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout_s`` (no data is sent)."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def missing_data_message(root: Path, why: str) -> str:
    """One line: CIFAR-10 is neither in the data folder nor downloaded, where its files come from."""
    return (f"CIFAR-10 is not available: no {ARCHIVE} under data_root (the data_root setting or $TDABENCH_DATA), "
            f"no task.data_dir, nothing in {root}, and {why}. Put {ARCHIVE} (CIFAR-10 as JPEG folders "
            f"train/<class>/, test/<class>/) under data_root, or cifar-10-python.tar.gz from "
            f"https://{CIFAR10_HOST}/~kriz/cifar-10-python.tar.gz in {root}")


# ----- model ---------------------------------------------------------------------------------
def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def resnet9(width: int = 64, num_classes: int = 10) -> nn.Sequential:
    """ResNet-9 on [B, 3, 32, 32] images -> logits [B, num_classes]; TRAK's model at width 64."""
    w1, w2, w3 = width, 2 * width, 4 * width
    return nn.Sequential(
        conv_bn(3, w1),
        conv_bn(w1, w2, kernel=5, stride=2, padding=2),
        Residual(nn.Sequential(conv_bn(w2, w2), conv_bn(w2, w2))),
        conv_bn(w2, w3),
        nn.MaxPool2d(2),
        Residual(nn.Sequential(conv_bn(w3, w3), conv_bn(w3, w3))),
        conv_bn(w3, w2, padding=0),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w2, num_classes, bias=False),
        Scale(0.2),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers (ReLU between, dropout after each) plus a shortcut (a 1x1 conv-BN
    projection with dropout when the shape changes), ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Dropout(dropout))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out), nn.Dropout(dropout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def dattri_resnet9(width: int = 64, num_classes: int = 2, dropout: float = 0.1) -> nn.Sequential:
    """dattri's CIFAR-2 ResNet-9 shape: a 3x3 conv-BN-ReLU stem of w channels, basic blocks of 2w
    (stride 1), 4w and 8w channels (stride 2 each), global average pooling and a linear layer with
    bias; dropout after every conv. 4,825,154 parameters at w = 64 with two classes."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(dropout),
        BasicBlock(width, 2 * width, 1, dropout),
        BasicBlock(2 * width, 4 * width, 2, dropout),
        BasicBlock(4 * width, 8 * width, 2, dropout),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * width, num_classes))


ARCHITECTURES = {"resnet9": resnet9, "dattri_resnet9": dattri_resnet9}


# ----- data sources ------------------------------------------------------------------------------
def folder_problems(root: Path, classes: tuple[str, ...]) -> list[str]:
    """Problems with an image folder: missing split folders, or class folders missing or empty."""
    if not root.is_dir():
        return [f"task.data_dir={str(root)!r} does not exist; point it at a folder with train/<class>/ "
                "and test/<class>/ images, or set it to null (the shared archive if present, else a "
                "torchvision download)"]
    problems = []
    for split in ("train", "test"):
        missing = [c for c in classes if not (root / split / c).is_dir()
                   or not any(os.scandir(root / split / c))]
        if missing:
            problems.append(f"task.data_dir={str(root)!r}: {split}/ lacks images of class(es) "
                            f"{', '.join(missing)}; every class in task.classes needs "
                            f"{split}/<class>/*.jpg")
    return problems


class ImageSource:
    """One split of CIFAR images: labels in task class ids ([N], -1 for classes not used) and a
    decoder from indices to uint8 images [k, 3, 32, 32]."""

    def __init__(self, labels: torch.Tensor, decode):
        self.labels = labels
        self.decode = decode

    @classmethod
    def folder(cls, root: Path, classes: tuple[str, ...]) -> "ImageSource":
        import numpy as np
        from PIL import Image
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(str(root), allow_empty=True)
        ids = {name: classes.index(name) if name in classes else -1 for name in ds.classes}
        paths = [p for p, _ in ds.samples]
        labels = torch.tensor([ids[ds.classes[c]] for _, c in ds.samples], dtype=torch.long)

        def decode(idx: torch.Tensor) -> torch.Tensor:
            imgs = [np.asarray(Image.open(paths[i]).convert("RGB")) for i in idx.tolist()]
            return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

        return cls(labels, decode)

    @classmethod
    def torchvision(cls, root: Path, train: bool, classes: tuple[str, ...]) -> "ImageSource":
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(root), train=train, download=False)
        except RuntimeError:  # not downloaded yet
            if not reachable(CIFAR10_HOST):
                raise FileNotFoundError(missing_data_message(root, f"{CIFAR10_HOST} cannot be reached")) from None
            try:
                ds = CIFAR10(str(root), train=train, download=True)
            except OSError as exc:  # URLError included
                raise FileNotFoundError(missing_data_message(root, f"the download failed: {exc}")) from None
        ids = [classes.index(name) if name in classes else -1 for name in ds.classes]
        labels = torch.tensor([ids[t] for t in ds.targets], dtype=torch.long)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        return cls(labels, lambda idx: images[idx].contiguous())


# ----- the task ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CifarSettings(TaskSettings):
    """The CIFAR tasks' own settings and their defaults (conf/task/cifar*.yaml state the same
    values, checked by a test); :meth:`CifarResNet9.validate` checks them."""

    classes: tuple[str, ...] | None = None  # None: the task's default (all ten, in CIFAR-10 label order)
    data_dir: str | None = None    # image folder; None: the shared archive, else a download
    n_test: int | None = 1000      # test images for accuracy (None: all the rest)
    arch: str = "resnet9"          # resnet9 (this project's widths) or dattri_resnet9
    width: int = 16                # channels (w, 2w, 4w, 2w) of ResNet-9; TRAK's is 64
    label_smoothing: float = 0.1   # in the training loss only
    flip: bool = True              # random horizontal flips
    translate: int = 0             # random translations by up to this many pixels


@dataclass(frozen=True)
class Cifar2Settings(CifarSettings):
    classes: tuple[str, ...] | None = ("cat", "dog")  # as in dattri's CIFAR-2


class CifarResNet9(Task):
    capabilities = Task.capabilities | {"replayable", "classification"}
    settings_class = CifarSettings
    #: the BIF's good settings here are smaller steps and a narrower posterior than on digits (the
    #: tuned CIFAR-10 studies at 250 to 1,000 images chose eps 1e-4 to 3.2e-4 and nbeta 0.13 to 1 x
    #: n; eps 1e-4 at nbeta = n diverged at 5,000 images): the space is centred there
    search_spaces = {"bif": {"gamma": Float(10.0, 1000.0, log=True), "eps": Float(1e-5, 5e-4, log=True),
                             "nbeta": Float(0.05, 4.0, log=True, per_n_train=True, null=1.0),
                             "burn_in": Int(0, 400), "steps_between_draws": Int(1, 10, log=True)}}

    @classmethod
    def class_names(cls, cfg: dict) -> tuple[str, ...]:
        """The classes of ``cfg`` (null: the task's default, all ten for CIFAR-10)."""
        chosen = cls.settings_class.of(cfg).classes or cls.settings_class.of({}).classes
        return tuple(chosen or CIFAR10_CLASSES)

    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        problems = super().validate(cfg)
        classes = cls.class_names(cfg)
        unknown = [c for c in classes if c not in CIFAR10_CLASSES]
        if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
            problems.append(f"task.classes={list(classes)}: use two or more distinct CIFAR-10 classes "
                            f"({', '.join(CIFAR10_CLASSES)})")
            return problems
        c = len(classes)
        if not problems:
            if cfg["n_train"] > TRAIN_PER_CLASS * c:
                problems.append(f"task.n_train={cfg['n_train']} exceeds the {TRAIN_PER_CLASS * c} "
                                f"training images of {c} classes")
            n_test = cls.settings_class.of(cfg).n_test
            if n_test is not None and (not isinstance(n_test, int) or n_test < 1):
                problems.append(f"task.n_test={n_test!r} must be null (all the rest) or a positive integer")
            elif cfg["n_query"] + (n_test or 1) > TEST_PER_CLASS * c:
                problems.append(f"task.n_query={cfg['n_query']} plus task.n_test={n_test} exceed the "
                                f"{TEST_PER_CLASS * c} test images of {c} classes")
        own = cls.settings_class.of(cfg)
        if own.arch not in ARCHITECTURES:
            problems.append(f"task.arch={own.arch!r}: use one of {', '.join(ARCHITECTURES)}")
        if not isinstance(own.width, int) or isinstance(own.width, bool) or own.width < 1:
            problems.append(f"task.width={own.width!r} must be a positive integer (channels of the first layer)")
        ls = own.label_smoothing
        if not isinstance(ls, (int, float)) or isinstance(ls, bool) or not 0 <= ls < 1:
            problems.append(f"task.label_smoothing={ls!r} must be in [0, 1)")
        if not isinstance(own.flip, bool):
            problems.append(f"task.flip={own.flip!r} must be true or false")
        if not isinstance(own.translate, int) or isinstance(own.translate, bool) or own.translate < 0:
            problems.append(f"task.translate={own.translate!r} must be a non-negative integer (pixels)")
        if own.data_dir is not None:
            problems += folder_problems(Path(own.data_dir), classes)
        return problems

    @property
    def classes(self) -> tuple[str, ...]:
        return self.class_names(self.cfg)

    # ----- data ----------------------------------------------------------------------------
    def _sources(self) -> tuple[ImageSource, ImageSource, str]:
        """(train source, test source, description of where they come from)."""
        if self.settings.data_dir is not None:
            root = Path(self.settings.data_dir)
            problems = folder_problems(root, self.classes)
            if problems:
                raise FileNotFoundError(problems[0])
        elif (archive := shared_file(ARCHIVE)) is not None:
            root = unpack_once(archive, self.cache_dir / "data" / "cifar10-jpeg", self.log)
        else:
            root = None
        if root is not None:
            return (ImageSource.folder(root / "train", self.classes),
                    ImageSource.folder(root / "test", self.classes), f"folder:{root.resolve()}")
        dl = self.cache_dir / "data" / "torchvision"
        return (ImageSource.torchvision(dl, True, self.classes),
                ImageSource.torchvision(dl, False, self.classes), "torchvision")

    def _decoded(self) -> dict:
        """uint8 images and labels of the three splits, decoded once and cached."""
        train_src, test_src, where = self._sources()
        key = content_hash({"where": where, "classes": self.classes, "seed": self.seed,
                            "n": [self.n_train, self.n_query, self.settings.n_test]})

        def compute():
            self.log(f"decoding {self.name} images from {where}")
            g = torch.Generator().manual_seed(self.seed)
            c = len(self.classes)
            tr = balanced_sample(train_src.labels, self.n_train, c, g)
            qu = balanced_sample(test_src.labels, self.n_query, c, g)
            taken = test_src.labels < 0
            taken[qu] = True
            n_test = self.settings.n_test
            te = (balanced_sample(test_src.labels, n_test, c, g, exclude=taken) if n_test
                  else torch.nonzero(~taken)[:, 0])
            return {name: (src.decode(idx), src.labels[idx])
                    for name, src, idx in (("train", train_src, tr), ("query", test_src, qu),
                                           ("test", test_src, te))}

        return load_or_compute(self.cache_dir / "data" / f"{self.name}-{key}.pt", compute,
                               f"{self.name} images", self.log)

    def load_splits(self) -> tuple[Split, Split, Split]:
        data = self._decoded()
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return tuple(Split((x.float() / 255 - mean) / std, y)
                     for x, y in (data["train"], data["query"], data["test"]))

    # ----- model, losses, augmentation ---------------------------------------------------
    @property
    def vectorizable(self) -> bool:
        """Ground-truth models train together (``gt.models_per_batch`` at once, batch norm and
        augmentation per model) with ResNet-9 on a GPU, where one small model leaves it idle. On
        a CPU they train one at a time: stacked convolutions are slower there (a training step 1.2
        to 1.6 x slower per model at widths 4 and 16 on one core; 40 ground-truth models of the
        fast recipe 2 x slower, docs/tasks.md). dattri's architecture draws dropout
        masks in its forward pass, so it always trains one model at a time."""
        return self.settings.arch == "resnet9" and self.device.type == "cuda"

    def build_model(self) -> nn.Module:
        own = self.settings
        return ARCHITECTURES[own.arch](int(own.width), len(self.classes))

    def fit_model(self, idx, seed, init_state=None, snapshots=0, recipe=None, weights=None):
        """As the task's, with torch's global generator seeded from ``seed`` for the training of
        an architecture with dropout (its masks come from that generator), so that the same seed
        gives the same model; other architectures draw nothing from it and train unchanged."""
        if self.settings.arch == "resnet9":
            return super().fit_model(idx, seed, init_state, snapshots, recipe, weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return super().fit_model(idx, seed, init_state, snapshots, recipe, weights)

    def per_example_loss(self, model, inputs, targets):
        """The training loss l_i: cross-entropy with ``task.label_smoothing``. [B]"""
        return F.cross_entropy(model(inputs), targets, reduction="none",
                               label_smoothing=float(self.settings.label_smoothing))

    def observable(self, model, inputs, targets):
        """Plain cross-entropy (no smoothing) or the correct-class margin. [B]"""
        logits = model(inputs)
        if self.observable_kind == "margin":
            return margin(logits, targets)
        return F.cross_entropy(logits, targets, reduction="none")

    def augment(self, inputs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random horizontal flips (``task.flip``) and translations by up to ``task.translate``
        pixels with reflection padding, drawn per image from ``gen``. [B, 3, H, W] -> same."""
        return self._shifted(inputs[None], [self._draws(len(inputs), gen)])[0]

    def augment_many(self, inputs: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """:meth:`augment` of N models' minibatches at once ([N, B, 3, H, W], model j's drawn
        from ``gens[j]``): the same draws, applied in one pass on the device."""
        return self._shifted(inputs, [self._draws(inputs.shape[1], g) for g in gens])

    def _draws(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One minibatch's augmentation draws, in the order :meth:`augment` has always made them:
        flips [B] (bool), then shifts [2, B] (rows, columns; 0 .. 2 x translate)."""
        own = self.settings
        flip = torch.rand(b, generator=gen) < 0.5 if own.flip else None
        pad = int(own.translate)
        shift = torch.randint(0, 2 * pad + 1, (2, b), generator=gen) if pad else None
        return flip, shift

    def _shifted(self, inputs: torch.Tensor, draws: list) -> torch.Tensor:
        """``inputs`` [N, B, 3, H, W] with model j's ``draws[j]`` applied."""
        n, b, c, h, w = inputs.shape
        dev = inputs.device
        if self.settings.flip:
            flip = torch.stack([d[0] for d in draws]).to(dev)  # [N, B]
            inputs = torch.where(flip.view(n, b, 1, 1, 1), inputs.flip(4), inputs)
        pad = int(self.settings.translate)
        if pad:
            dy, dx = torch.stack([d[1] for d in draws], 1).to(dev).reshape(2, n * b)
            padded = F.pad(inputs.reshape(n * b, c, h, w), (pad, pad, pad, pad), mode="reflect")
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [NB, H, 1]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # [NB, 1, W]
            inputs = padded[torch.arange(n * b, device=dev)[:, None, None], :, rows, cols]  # [NB, H, W, C]
            inputs = inputs.permute(0, 3, 1, 2).reshape(n, b, c, h, w).contiguous()
        return inputs


class Cifar2ResNet9(CifarResNet9):
    settings_class = Cifar2Settings
