"""The service that trains and caches a task's models, apart from what the task is.

A :class:`~tdabench.harness.plugin.task.Task` says what the learning problem is (data, model
constructor, recipe, loss and observable). :class:`ModelCache` runs that recipe: training on a
subset (one model, or many at once with ``torch.func`` where the task is vectorizable), the
reference run with its trajectory snapshots, ensemble members, the step-by-step replay, and the
files all of it is cached in. It owns the cache folder and the task's fingerprint (everything that
determines its data, models and outcomes), so that the files of methods, the ground truth and the
models are all keyed the same way. Each task holds one as ``task.models``; the task's public
methods (``checkpoint``, ``trajectory``, ``ensemble``, ``fit_model``, ``fit_many``, ``replay``,
``cache_path``) hand on to it. Models leave here as state dicts; the task turns them into modules.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.harness.plugin.training import Recipe, Replay, TrainResult, train, train_stacked

__all__ = ["ModelCache", "ENSEMBLE_SEED_STRIDE"]

#: ensemble member m trains with seed ``task.seed + ENSEMBLE_SEED_STRIDE * m``
ENSEMBLE_SEED_STRIDE = 7919


class ModelCache:
    """Trains ``task``'s models with its recipe and caches them under ``cache_dir``. ``task`` is the
    :class:`~tdabench.harness.plugin.task.Task` that holds this service (its recipe, data and
    model constructor; its overrides of ``fit_model`` are honoured)."""

    def __init__(self, task, cache_dir: str | Path):
        self.task = task
        self.dir = Path(cache_dir)
        self._reference: dict | None = None

    # ----- keys and files ---------------------------------------------------------------------
    def fingerprint(self) -> dict:
        """Everything that determines the task's data, models and outcomes (for cache keys): its
        name, its config (without the methods' per-task defaults) and its seed. Keys are made from
        ``task.fingerprint()``, which is this unless the task overrides it."""
        cfg = {k: v for k, v in self.task.cfg.items() if k not in ("method_defaults",)}
        return {"task": self.task.name, "cfg": cfg, "seed": self.task.seed}

    def cache_path(self, folder: str, label: str, key: dict, fingerprint: dict | None = None) -> Path:
        """``<cache_dir>/<folder>/<task name>-<label>-<hash>.pt``, the hash of the task's
        fingerprint (``fingerprint``: that of the view asking, e.g. the validation queries' view;
        default the task's) and ``key`` (JSON-serializable: what else determines the file's
        content). The folder is not created;
        :func:`~tdabench.harness.core.storage.load_or_compute` does that."""
        fp = self.task.fingerprint() if fingerprint is None else fingerprint
        digest = content_hash({"task": fp, **key})
        return self.dir / folder / f"{self.task.name}-{label}-{digest}.pt"

    def scratch_dir(self) -> Path:
        """``<cache_dir>/tmp``, created: a folder for temporary files on the cache's disk (a caller
        makes its own temporary folder inside and removes it)."""
        path = self.dir / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _model_path(self, kind: str, extra: dict | None = None) -> Path:
        # models do not depend on the queries: a validation view shares the test view's models
        fp = {k: v for k, v in self.task.fingerprint().items() if k != "queries"}
        key = content_hash({"fp": fp, "kind": kind, **(extra or {})})
        return self.dir / "models" / f"{self.task.name}-{kind}-{key}.pt"

    # ----- training -----------------------------------------------------------------------------
    def fit_model(self, idx: torch.Tensor, seed: int, init_state: dict | None = None,
                  snapshots: int = 0, recipe: Recipe | None = None,
                  weights: torch.Tensor | None = None) -> TrainResult:
        """See :meth:`Task.fit_model <tdabench.harness.plugin.task.Task.fit_model>`."""
        task = self.task
        model = task.new_model(seed)
        init_state = task.initial_state() if init_state is None else init_state
        if init_state is not None:
            model.load_state_dict(init_state)
        split = task.train_split
        return train(model, task.per_example_loss, split.inputs, split.targets, idx.to(task.device),
                     recipe or task.recipe(), seed, snapshots=snapshots, augment=task.augment,
                     weights=None if weights is None else weights.to(task.device))

    def fit_many(self, idx: torch.Tensor, seeds: list[int], init_state: dict | None = None,
                 recipe: Recipe | None = None, vectorize: bool = True,
                 weights: torch.Tensor | None = None) -> list[nn.Module]:
        """See :meth:`Task.fit_many <tdabench.harness.plugin.task.Task.fit_many>`."""
        task = self.task
        if not (vectorize and task.vectorizable):
            return [task.fit_model(row, seed, init_state, recipe=recipe,
                                   weights=None if weights is None else weights[j]).model
                    for j, (row, seed) in enumerate(zip(idx, seeds))]
        init_state = task.initial_state() if init_state is None else init_state
        states = [init_state if init_state is not None else task.new_model(s).state_dict() for s in seeds]
        template = task.new_model(task.seed)
        split = task.train_split
        stacked = train_stacked(template, states, task.per_example_loss, split.inputs, split.targets,
                                idx.to(task.device), recipe or task.recipe(), seeds,
                                weights=None if weights is None else weights.to(task.device))
        models = []
        for j in range(len(seeds)):
            model = task.new_model(task.seed)
            model.load_state_dict({k: v[j] for k, v in stacked.items()}, strict=False)
            models.append(model.eval())
        return models

    def replay(self, seed: int) -> Replay:
        """See :meth:`Task.replay <tdabench.harness.plugin.task.Task.replay>`."""
        task = self.task
        model = task.new_model(seed)
        init = task.initial_state()
        if init is not None:
            model.load_state_dict(init)
        split = task.train_split
        return Replay(model, model.state_dict(), task.per_example_loss, split.inputs, split.targets,
                      torch.arange(task.n_train, device=task.device), task.recipe(), seed, task.augment)

    # ----- cached models ------------------------------------------------------------------------
    def reference_run(self) -> dict:
        """The reference run (all training examples, the task's seed), trained once and cached:
        ``{"state": state dict, "losses": [...], "trajectory": [Snapshot fields, ...]}``."""
        if self._reference is None:
            task = self.task
            snapshots = task.trajectory_checkpoints

            def compute():
                task.log(f"training the reference {task.name} model")
                res = task.fit_model(torch.arange(task.n_train), task.seed, snapshots=snapshots)
                return {"state": res.model.state_dict(), "losses": res.losses,
                        "trajectory": [asdict(s) for s in res.trajectory]}

            self._reference = load_or_compute(self.reference_path(), compute, "reference checkpoint", task.log)
        return self._reference

    def reference_path(self) -> Path:
        """The cache file of :meth:`reference_run`."""
        return self._model_path("reference", {"snapshots": self.task.trajectory_checkpoints})

    def member_states(self, k: int, mode: str) -> Iterator[dict]:
        """State dicts of ensemble members 1 .. k-1 (member 0 is the reference run), each trained
        or read from the cache when it is reached. ``mode='half'``: each trains on a seeded random
        half of the training split."""
        task = self.task
        for m in range(1, k):
            seed = task.seed + ENSEMBLE_SEED_STRIDE * m

            def compute(seed=seed):
                task.log(f"training ensemble member {m} of {task.name}")
                idx = torch.arange(task.n_train)
                if mode == "half":
                    g = torch.Generator().manual_seed(seed)
                    idx = torch.randperm(task.n_train, generator=g)[: task.n_train // 2].sort().values
                return task.fit_model(idx, seed).model.state_dict()

            yield load_or_compute(self._model_path("ensemble", {"member": m, "mode": mode}),
                                  compute, f"ensemble member {m}", task.log)
