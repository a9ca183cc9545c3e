"""What an attribution method may ask of a task: the :class:`AttributionTask` protocol.

A method's ``check``, ``trainings``, ``fit`` and ``score`` receive an object with exactly these
members (every :class:`~tdabench.harness.plugin.task.Task` is one). A method never reads a task's
config, cache folder or fingerprint: what it needs from the config is a member here, and a file it
caches gets its path from :meth:`AttributionTask.cache_path`, which the harness keys by the task's
data, models and seed. tests/test_layers.py checks that methods/ uses no other member of a task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

from tdabench.harness.plugin.training import Recipe, Replay, Snapshot

__all__ = ["AttributionTask"]


@runtime_checkable
class AttributionTask(Protocol):
    """The task as a method sees it. Shapes: ``B`` examples of a batch, ``T`` tokens of a sequence.

    Identity and size:
        ``name`` (the task's registry name), ``seed`` (the run's data seed, also the reference
        model's), ``n_train`` and ``n_query`` (examples), ``device`` (where splits and models
        live), ``capabilities`` (``checkpoint``, ``trajectory``, ``ensemble``, ``per_token``,
        ``replayable``), ``observable_kind`` (``loss`` or ``margin``), ``trajectory_checkpoints``
        (snapshots in :meth:`trajectory`), ``log`` (a one-argument progress logger).
    Data:
        ``train_split`` and ``query_split`` (``inputs`` and ``targets`` tensors, first dimension
        the examples).
    The learning problem:
        ``per_example_loss(model, inputs, targets) -> [B]`` (training loss l_i),
        ``observable(model, inputs, targets) -> [B]`` (query observable phi_q),
        ``token_observables(model, inputs, targets) -> [B, T]`` (capability ``per_token``),
        ``sample_targets(model, inputs, generator)`` (targets from the model's predictive
        distribution, for the true Fisher), ``new_model(seed)`` (a fresh model), ``recipe()`` (the
        training recipe: optimizer, schedule, epochs, batch size), ``batched(fn, model, split)``
        (``fn`` over a split in batches, concatenated on dim 0).
    Trained models (trained once and cached by the harness):
        ``checkpoint()`` (the reference model w*), ``trajectory()`` (snapshots along its run) and
        ``snapshot_model(snapshot)``, ``ensemble(k, mode)`` and ``ensemble_members(k, mode)``
        (``k`` independently trained models, all at once or one at a time), ``replay(seed)`` (the
        training run as a differentiable step-by-step :class:`Replay`; capability ``replayable``).
    Caches:
        ``cache_path(folder, label, key)`` (where to keep a file the method computed; the path is
        unique to the task and ``key``) and ``scratch_dir()`` (a folder for temporary files).
    """

    name: str
    seed: int
    n_train: int
    n_query: int
    device: torch.device
    capabilities: frozenset[str]
    observable_kind: str
    log: Callable[[str], None]

    @property
    def trajectory_checkpoints(self) -> int: ...

    @property
    def train_split(self): ...

    @property
    def query_split(self): ...

    def per_example_loss(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def observable(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def token_observables(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def sample_targets(self, model, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def new_model(self, seed: int) -> nn.Module: ...

    def recipe(self) -> Recipe: ...

    def batched(self, fn, model, split, batch_size: int = 1024) -> torch.Tensor: ...

    def checkpoint(self) -> nn.Module: ...

    def trajectory(self) -> list[Snapshot]: ...

    def snapshot_model(self, snap: Snapshot) -> nn.Module: ...

    def ensemble(self, k: int, mode: str = "full") -> list[nn.Module]: ...

    def ensemble_members(self, k: int, mode: str = "full") -> Iterator[nn.Module]: ...

    def replay(self, seed: int) -> Replay: ...

    def cache_path(self, folder: str, label: str, key: dict) -> Path: ...

    def scratch_dir(self) -> Path: ...
