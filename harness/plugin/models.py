"""Trained models and their files: a task's training service and the store it caches in.

A :class:`~tdabench.harness.plugin.task.Task` says what the learning problem is (data, model
constructor, recipe, loss and observable). Two parts here turn that into trained models:

- :class:`ModelCache`, the store: the cache folder, the file name of each piece of work (keyed
  by a fingerprint the caller gives) and the reading, computing and keeping of its content. It
  holds no task and calls none; every task holds one as ``task.models``.
- :class:`TrainedModels`, the training service every task inherits: training on a subset (one
  model, or many at once with ``torch.func`` where the task is vectorizable), the reference run
  with its trajectory snapshots, ensemble members and the step-by-step replay, each cached in
  ``task.models``. It reads the task's own parts (``new_model``, ``initial_state``,
  ``train_split``, ``per_example_loss``, ``recipe``, ``augment``), so a task's override of
  ``fit_model`` is honoured everywhere. Models leave the store as state dicts; the task turns
  them into modules.

Calls go one way: task to store.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.harness.plugin.training import Recipe, Replay, Snapshot, TrainResult, train, train_stacked

__all__ = ["ModelCache", "TrainedModels", "ENSEMBLE_SEED_STRIDE"]

#: ensemble member m trains with seed ``task.seed + ENSEMBLE_SEED_STRIDE * m``
ENSEMBLE_SEED_STRIDE = 7919
#: fingerprint keys that name a view of a task (validation or training queries, a snapshot), not its models
VIEW_KEYS = ("queries", "snapshot")


class ModelCache:
    """The files of one task's work under ``cache_dir``: names keyed by content hashes, content
    read or computed through :func:`~tdabench.harness.core.storage.load_or_compute`, and kept in
    memory where asked (the reference run, read by every view of the task)."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self._kept: dict[Path, Any] = {}

    def cache_path(self, name: str, folder: str, label: str, key: dict, fingerprint: dict) -> Path:
        """``<cache_dir>/<folder>/<name>-<label>-<hash>.pt``, the hash of ``fingerprint`` (the
        task view's) and ``key`` (JSON-serializable: what else determines the file's content).
        The folder is not created; ``load_or_compute`` does that."""
        digest = content_hash({"task": fingerprint, **key})
        return self.dir / folder / f"{name}-{label}-{digest}.pt"

    def model_path(self, name: str, fingerprint: dict, kind: str, extra: dict | None = None) -> Path:
        """``<cache_dir>/models/<name>-<kind>-<hash>.pt``: models do not depend on which view of a
        task asks (its queries, or the trajectory snapshot a metric stops at), so the
        fingerprint's :data:`VIEW_KEYS` are left out and every view shares the task's models."""
        fp = {k: v for k, v in fingerprint.items() if k not in VIEW_KEYS}
        key = content_hash({"fp": fp, "kind": kind, **(extra or {})})
        return self.dir / "models" / f"{name}-{kind}-{key}.pt"

    def scratch_dir(self) -> Path:
        """``<cache_dir>/tmp``, created: a folder for temporary files on the cache's disk (a caller
        makes its own temporary folder inside and removes it)."""
        path = self.dir / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def load(self, path: Path, compute: Callable[[], Any], what: str, log, keep: bool = False) -> Any:
        """The content of ``path``, read or computed (and written); with ``keep`` held in memory
        for the next call."""
        if keep and path in self._kept:
            return self._kept[path]
        content = load_or_compute(path, compute, what, log)
        if keep:
            self._kept[path] = content
        return content


class TrainedModels:
    """The training service of :class:`~tdabench.harness.plugin.task.Task` (a base class of it):
    the task's recipe run on subsets, the reference run, ensembles and the replay, cached in the
    task's :class:`ModelCache` ``self.models``."""

    models: ModelCache

    # ----- training -----------------------------------------------------------------------------
    def fit_model(self, idx: torch.Tensor, seed: int, init_state: dict | None = None,
                  snapshots: int = 0, recipe: Recipe | None = None,
                  weights: torch.Tensor | None = None) -> TrainResult:
        """Train on ``train_split[idx]`` with the task's recipe, from a fresh model initialized
        with ``seed`` or from ``init_state`` (default :meth:`initial_state`). ``weights``
        ([n_train] floats) weigh each example's loss in its minibatch (0 removes it from the same
        batches); None is plain training."""
        model = self.new_model(seed)
        init_state = self.initial_state() if init_state is None else init_state
        if init_state is not None:
            model.load_state_dict(init_state)
        split = self.train_split
        return train(model, self.per_example_loss, split.inputs, split.targets, idx.to(self.device),
                     recipe or self.recipe(), seed, snapshots=snapshots, augment=self.augment,
                     weights=None if weights is None else weights.to(self.device))

    #: at most this many models train together (set when more ran out of memory); None: no limit
    together_limit: int | None = None

    def fit_many(self, idx: torch.Tensor, seeds: list[int], init_state: dict | None = None,
                 recipe: Recipe | None = None, vectorize: bool = True,
                 weights: torch.Tensor | None = None) -> list[nn.Module]:
        """Train one model per row of ``idx`` ([N, s] subsets of equal size) with ``seeds[j]``
        and per-example weights ``weights[j]`` ([N, n_train], optional); equivalent to N calls of
        :meth:`fit_model`, trained at once when the task allows it (where that runs out of
        memory, in halves from then on, halved again if needed)."""
        if not (vectorize and self.vectorizable):
            return [self.fit_model(row, seed, init_state, recipe=recipe,
                                   weights=None if weights is None else weights[j]).model
                    for j, (row, seed) in enumerate(zip(idx, seeds))]
        limit = self.together_limit or len(seeds)
        if len(seeds) > limit:  # an earlier batch ran out of memory with more
            return [m for at in range(0, len(seeds), limit)
                    for m in self.fit_many(idx[at:at + limit], seeds[at:at + limit], init_state, recipe, vectorize,
                                           None if weights is None else weights[at:at + limit])]
        init_state = self.initial_state() if init_state is None else init_state
        states = [init_state if init_state is not None else self.new_model(s).state_dict() for s in seeds]
        split = self.train_split
        stacked = None
        try:
            stacked = train_stacked(self.new_model(self.seed), states, self.per_example_loss, split.inputs,
                                    split.targets, idx.to(self.device), recipe or self.recipe(), seeds,
                                    weights=None if weights is None else weights.to(self.device),
                                    augment=self.augment_many)
        except torch.OutOfMemoryError:
            if len(seeds) == 1:
                raise
        if stacked is None:  # retried here, once the failed attempt's tensors are gone with its traceback
            del states
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.together_limit = len(seeds) // 2
            self.log(f"{len(seeds)} models trained together ran out of memory: {self.together_limit} at a time "
                     f"from now on (gt.models_per_batch={self.together_limit} sets it from the start)")
            return self.fit_many(idx, seeds, init_state, recipe, vectorize, weights)
        models = []
        for j in range(len(seeds)):
            model = self.new_model(self.seed)
            model.load_state_dict({k: v[j] for k, v in stacked.items()})
            models.append(model.eval())
        return models

    def replay(self, seed: int) -> Replay:
        """The training run of ``fit_model(all examples, seed)`` as a step-by-step differentiable
        :class:`~tdabench.harness.plugin.training.Replay` (capability ``replayable``). Its
        minibatch weights beta index the examples of step t's batch (``replay.batch(t)[0]``,
        indices into train_split)."""
        if "replayable" not in self.capabilities:
            raise NotImplementedError(f"task {self.name} cannot replay its training")
        model = self.new_model(seed)
        init = self.initial_state()
        if init is not None:
            model.load_state_dict(init)
        split = self.train_split
        return Replay(model, model.state_dict(), self.per_example_loss, split.inputs, split.targets,
                      torch.arange(self.n_train, device=self.device), self.recipe(), seed, self.augment)

    # ----- cached models ------------------------------------------------------------------------
    def reference_path(self) -> Path:
        """The cache file of :meth:`reference_run`."""
        return self.models.model_path(self.name, self.fingerprint(), "reference",
                                      {"snapshots": self.trajectory_checkpoints})

    def reference_run(self) -> dict:
        """The reference run (all training examples, the task's seed), trained once and cached:
        ``{"state": state dict, "losses": [...], "trajectory": [Snapshot fields, ...]}``."""
        def compute():
            self.log(f"training the reference {self.name} model")
            res = self.fit_model(torch.arange(self.n_train), self.seed, snapshots=self.trajectory_checkpoints)
            return {"state": res.model.state_dict(), "losses": res.losses,
                    "trajectory": [asdict(s) for s in res.trajectory]}

        return self.models.load(self.reference_path(), compute, "reference checkpoint", self.log, keep=True)

    def checkpoint(self) -> nn.Module:
        """The reference model w*: trained on the whole training split with ``self.seed``."""
        return self._model_from_state(self.reference_run()["state"])

    def trajectory(self) -> list[Snapshot]:
        """Snapshots along the reference run (``task.trajectory_checkpoints`` segments), each with
        its segment's mean learning rate and step count; the last equals the checkpoint."""
        return [Snapshot(**s) for s in self.reference_run()["trajectory"]]

    def ensemble(self, k: int, mode: str = "full") -> list[nn.Module]:
        """``k`` independently trained models; member 0 is the reference checkpoint. With
        ``mode='half'`` members after the first train on seeded random halves of the data."""
        return list(self._trained_members(k, mode))

    def ensemble_members(self, k: int, mode: str = "full") -> Iterator[nn.Module]:
        """The members of :meth:`ensemble` one at a time (each trained, or read from the cache,
        when it is reached), so that a caller that drops a member holds one model at a time. A
        task that overrides :meth:`ensemble` gets its members from there."""
        if type(self).ensemble is not TrainedModels.ensemble:
            yield from self.ensemble(k, mode)
        else:
            yield from self._trained_members(k, mode)

    def _trained_members(self, k: int, mode: str) -> Iterator[nn.Module]:
        if mode not in ("full", "half"):
            raise ValueError(f"ensemble mode {mode!r}: use full or half")
        yield self.checkpoint()
        for m in range(1, k):
            state = self._member_state(m, mode)
            model = self._model_from_state(state)
            del state
            yield model
            del model

    def _member_state(self, m: int, mode: str) -> dict:
        """State dict of ensemble member ``m`` >= 1, trained or read from the cache. ``mode='half'``:
        it trains on a seeded random half of the training split."""
        seed = self.seed + ENSEMBLE_SEED_STRIDE * m

        def compute():
            self.log(f"training ensemble member {m} of {self.name}")
            idx = torch.arange(self.n_train)
            if mode == "half":
                g = torch.Generator().manual_seed(seed)
                idx = torch.randperm(self.n_train, generator=g)[: self.n_train // 2].sort().values
            return self.fit_model(idx, seed).model.state_dict()

        path = self.models.model_path(self.name, self.fingerprint(), "ensemble", {"member": m, "mode": mode})
        return self.models.load(path, compute, f"ensemble member {m}", self.log)

    # ----- files of methods ---------------------------------------------------------------------
    def cache_path(self, folder: str, label: str, key: dict) -> Path:
        """Where a method keeps a file it computed for this task: ``<cache_dir>/<folder>/<task
        name>-<label>-<hash>.pt``, the hash covering the task's fingerprint and ``key``."""
        return self.models.cache_path(self.name, folder, label, key, self.fingerprint())

    def scratch_dir(self) -> Path:
        """A folder for a method's temporary files, on the cache's disk (created)."""
        return self.models.scratch_dir()
