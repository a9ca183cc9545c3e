"""The task interface: data, model, training recipe, per-example loss and observable.

A task owns the learning problem and nothing about attribution. Methods see it through:

- ``train``, ``query`` and ``test`` splits (:class:`Split`: ``inputs`` and ``targets`` tensors
  whose first dimension indexes examples);
- ``per_example_loss(model, inputs, targets) -> [B]`` (the training loss l_i) and
  ``observable(model, inputs, targets) -> [B]`` (the query observable phi_q; per-example loss by
  default). ``model`` is anything callable on ``inputs`` (an ``nn.Module`` or a functional
  wrapper), so methods can use ``torch.func``;
- ``checkpoint()`` (the reference model w*), ``trajectory()`` (snapshots along the reference run)
  and ``ensemble(k)`` (independently trained models), all cached on disk;
- ``fit_model(idx, seed)``: the training recipe on a subset, used by the ground truth;
- ``replay(seed)``: that training on the whole training split as a step-by-step differentiable
  :class:`~tasks.training.Replay` (tasks with the capability ``replayable``).

Two views of a task serve metrics: :meth:`Task.train_as_queries` (the training examples as the
queries, their training loss as the observable: the diagonal of its scores is each example's
self-influence) and :meth:`Task.mislabeled` (a seeded share of the training labels flipped, for
classification tasks, capability ``classification``).
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.harness.engine.training import (
    Recipe,
    Replay,
    Snapshot,
    TrainResult,
    recipe_problems,
    train,
    train_stacked,
)

_log = logging.getLogger(__name__)

__all__ = ["Split", "Task", "margin"]


@dataclass
class Split:
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.inputs)

    def to(self, device) -> "Split":
        return Split(self.inputs.to(device), self.targets.to(device))


def margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Correct-class margin log p(y) - log(1 - p(y)) of each row of ``logits`` [B, C]: [B]."""
    correct = logits.gather(1, targets[:, None])[:, 0]
    # a comparison, not F.one_hot, so that torch.func.vmap can batch it (per-example gradients)
    is_target = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
    others = logits.masked_fill(is_target, float("-inf"))
    return correct - torch.logsumexp(others, dim=1)


class Task(ABC):
    """Base class of every task. A task is registered by an entry point in the group
    ``tdabench.tasks``; the registry sets :attr:`name` to the entry point's name."""

    name: ClassVar[str] = "task"
    #: what the task can provide to methods (see Method.requires); language-model tasks add
    #: ``per_token``; tasks whose training is :func:`tasks.training.train` unchanged add
    #: ``replayable`` (``replay(seed)`` reproduces ``fit_model`` bit for bit); tasks whose
    #: targets are class labels of a cross-entropy add ``classification`` (:meth:`mislabeled`)
    capabilities: ClassVar[frozenset[str]] = frozenset({"checkpoint", "trajectory", "ensemble"})
    #: whether many models can train at once with torch.func (no batch-norm running statistics,
    #: no augmentation); see tasks.training.train_stacked
    vectorizable: ClassVar[bool] = False
    #: False for tasks that measure cost only (no retraining ground truth, no LDS)
    measures_lds: ClassVar[bool] = True
    #: the task's config node (n_train, n_query, recipe, ...) for a task without a YAML file in
    #: conf/task/ (a plugin task); ``name`` is added by the harness
    default_config: ClassVar[dict] = {}

    def __init__(self, cfg: dict, seed: int = 0, cache_dir: str | Path = ".cache",
                 device: str = "cpu", log=None):
        self.cfg = dict(cfg)
        self.seed = int(seed)
        self.cache_dir = Path(cache_dir)
        self.device = torch.device(device)
        self.log = log or _log.info
        self.n_train = int(self.cfg["n_train"])
        self.n_query = int(self.cfg["n_query"])
        self.observable_kind = self.cfg.get("observable", "loss")
        self._splits: tuple[Split, Split, Split] | None = None
        self._reference: dict | None = None
        #: whether the queries are the training examples (:meth:`train_as_queries`)
        self.queries_are_train = False

    # ----- what a subclass provides -------------------------------------------------------
    @classmethod
    def validate(cls, cfg: dict) -> list[str]:
        """Cheap checks of the task config, before any work; one message per problem."""
        problems = []
        for key in ("n_train", "n_query"):
            v = cfg.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"task.{key}={v!r} must be a positive integer")
        if cfg.get("observable", "loss") not in ("loss", "margin"):
            problems.append(f"task.observable={cfg.get('observable')!r}: use loss or margin")
        snapshots = cfg.get("trajectory_checkpoints", 5)
        if not isinstance(snapshots, int) or isinstance(snapshots, bool) or snapshots < 1:
            problems.append(f"task.trajectory_checkpoints={snapshots!r} must be a positive integer")
        problems += recipe_problems(cfg.get("recipe"))
        return problems

    @staticmethod
    def positive_int_problems(cfg: dict, keys: dict[str, str]) -> list[str]:
        """``task.<key>`` must be a positive integer, for each ``key: meaning`` of ``keys``."""
        return [f"task.{k}={cfg.get(k)!r} must be a positive integer ({meaning})" for k, meaning in keys.items()
                if not isinstance(cfg.get(k), int) or isinstance(cfg.get(k), bool) or cfg.get(k) < 1]

    @abstractmethod
    def load_splits(self) -> tuple[Split, Split, Split]:
        """Return (train, query, test) splits, on CPU."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialized model (the caller seeds torch's generator)."""

    def recipe(self) -> Recipe:
        fields = Recipe.__dataclass_fields__
        return Recipe(**{k: v for k, v in self.cfg.get("recipe", {}).items() if k in fields})

    def per_example_loss(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each example: [B]."""
        return F.cross_entropy(model(inputs), targets, reduction="none")

    def observable(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The query observable phi: per-example loss (default) or correct-class margin. [B]"""
        if self.observable_kind == "margin":
            return margin(model(inputs), targets)
        return self.per_example_loss(model, inputs, targets)

    def token_observables(self, model, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token observables [B, T] for language-model tasks (capability ``per_token``); the
        sequence observable is their mean."""
        raise NotImplementedError(f"task {self.name} has no per-token observable")

    @torch.no_grad()
    def sample_targets(self, model, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Targets drawn from the model's predictive distribution at ``inputs`` (for the true
        Fisher): one class per output row of softmax(model(inputs)), so logits [B, C] give [B]
        and [B, T, C] give [B, T] (long). ``generator`` lives on the inputs' device. Tasks whose
        training loss is not a cross-entropy over the last output dimension override this."""
        probs = torch.softmax(model(inputs).float(), dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    def augment(self, inputs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training-time augmentation of a minibatch; identity by default."""
        return inputs

    # ----- data -----------------------------------------------------------------------------
    def _load(self) -> tuple[Split, Split, Split]:
        if self._splits is None:
            self._splits = tuple(s.to(self.device) for s in self.load_splits())
        return self._splits

    @property
    def train_split(self) -> Split:
        return self._load()[0]

    @property
    def query_split(self) -> Split:
        return self._load()[1]

    @property
    def test_split(self) -> Split:
        return self._load()[2]

    def fingerprint(self) -> dict:
        """Everything that determines the task's data, models and outcomes (for cache keys)."""
        cfg = {k: v for k, v in self.cfg.items() if k not in ("method_defaults",)}
        fp = {"task": self.name, "cfg": cfg, "seed": self.seed}
        if self.queries_are_train:
            fp["queries"] = "train"
        return fp

    def train_as_queries(self) -> "Task":
        """This task with the training examples as its queries (``n_query = n_train``) and their
        training loss as the observable, so that a method's scores ``[n_train, n_train]`` hold
        d l_i / d beta_j and their diagonal each example's self-influence. Models and their caches
        are the task's own (the queries never change a model); the fingerprint names the view, so
        caches of query-dependent work stay apart."""
        view = copy.copy(self)
        train, _, test = self._load()
        view._splits = (train, train, test)
        view.n_query = self.n_train
        view.observable_kind = "loss"
        view.queries_are_train = True
        return view

    def mislabeled(self, fraction: float, seed: int) -> tuple["Task", torch.Tensor]:
        """This task with the labels of ``round(fraction * n_train)`` training examples (drawn
        with ``seed``) each flipped to another class drawn uniformly, and bool [n_train] marking
        them. Its reference model, trajectory and ensemble train on the flipped labels and are
        cached under their own key (``mislabel`` in the task's config). Capability
        ``classification``: the number of classes is that of the model's output."""
        if "classification" not in self.capabilities:
            raise NotImplementedError(f"task {self.name} has no class labels to flip")
        train, query, test = self._load()
        n_flip = int(round(fraction * self.n_train))
        classes = int(self.new_model(self.seed)(train.inputs[:1]).shape[-1])
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=g)[:n_flip]
        shift = torch.randint(1, classes, (n_flip,), generator=g)
        targets = train.targets.clone()
        targets[idx.to(targets.device)] = (targets[idx.to(targets.device)] + shift.to(targets.device)) % classes
        flipped = torch.zeros(self.n_train, dtype=torch.bool)
        flipped[idx] = True
        variant = copy.copy(self)
        variant.cfg = {**self.cfg, "mislabel": {"fraction": fraction, "seed": seed}}
        variant._splits = (Split(train.inputs, targets), query, test)
        variant._reference = None
        return variant, flipped

    # ----- models ---------------------------------------------------------------------------
    def new_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self.build_model()
        return model.to(self.device)

    def initial_state(self) -> dict | None:
        """The state every training run starts from, or None for a fresh model (the seed's)."""
        return None

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

    def fit_many(self, idx: torch.Tensor, seeds: list[int], init_state: dict | None = None,
                 recipe: Recipe | None = None, vectorize: bool = True,
                 weights: torch.Tensor | None = None) -> list[nn.Module]:
        """Train one model per row of ``idx`` ([N, s] subsets of equal size) with ``seeds[j]``
        and per-example weights ``weights[j]`` ([N, n_train], optional); equivalent to N calls of
        :meth:`fit_model`, trained at once when the task allows it."""
        if not (vectorize and self.vectorizable):
            return [self.fit_model(row, seed, init_state, recipe=recipe,
                                   weights=None if weights is None else weights[j]).model
                    for j, (row, seed) in enumerate(zip(idx, seeds))]
        init_state = self.initial_state() if init_state is None else init_state
        states = [init_state if init_state is not None else self.new_model(s).state_dict() for s in seeds]
        template = self.new_model(self.seed)
        split = self.train_split
        stacked = train_stacked(template, states, self.per_example_loss, split.inputs, split.targets,
                                idx.to(self.device), recipe or self.recipe(), seeds,
                                weights=None if weights is None else weights.to(self.device))
        models = []
        for j in range(len(seeds)):
            model = self.new_model(self.seed)
            model.load_state_dict({k: v[j] for k, v in stacked.items()}, strict=False)
            models.append(model.eval())
        return models

    def replay(self, seed: int) -> Replay:
        """The training run of ``fit_model(all examples, seed)`` as a step-by-step differentiable
        :class:`~tasks.training.Replay` (capability ``replayable``). Its minibatch weights beta
        index the examples of step t's batch (``replay.batch(t)[0]``, indices into train_split)."""
        if "replayable" not in self.capabilities:
            raise NotImplementedError(f"task {self.name} cannot replay its training")
        model = self.new_model(seed)
        init = self.initial_state()
        if init is not None:
            model.load_state_dict(init)
        split = self.train_split
        return Replay(model, model.state_dict(), self.per_example_loss, split.inputs, split.targets,
                      torch.arange(self.n_train, device=self.device), self.recipe(), seed,
                      self.augment)

    def _cache_path(self, kind: str, extra: dict | None = None) -> Path:
        fp = {k: v for k, v in self.fingerprint().items() if k != "queries"}  # models never depend on them
        key = content_hash({"fp": fp, "kind": kind, **(extra or {})})
        return self.cache_dir / "models" / f"{self.name}-{kind}-{key}.pt"

    def _reference_run(self) -> dict:
        if self._reference is None:
            snapshots = int(self.cfg.get("trajectory_checkpoints", 5))

            def compute():
                self.log(f"training the reference {self.name} model")
                res = self.fit_model(torch.arange(self.n_train), self.seed, snapshots=snapshots)
                return {"state": res.model.state_dict(), "losses": res.losses,
                        "trajectory": [asdict(s) for s in res.trajectory]}

            self._reference = load_or_compute(
                self._cache_path("reference", {"snapshots": snapshots}), compute,
                "reference checkpoint", self.log)
        return self._reference

    def _model_from_state(self, state: dict) -> nn.Module:
        model = self.new_model(self.seed)
        model.load_state_dict(state)
        model.eval()
        return model

    def snapshot_model(self, snap: Snapshot) -> nn.Module:
        """The model with the parameters of trajectory snapshot ``snap``, in eval mode."""
        return self._model_from_state(snap.state)

    def decode_tokens(self, ids) -> list[str]:
        """One printable string per token id of ``ids`` [T] (views of per-token scores); tasks with
        a vocabulary override this, the default shows the ids."""
        return [f"<{int(i)}>" for i in ids]

    def checkpoint(self) -> nn.Module:
        """The reference model w*: trained on the whole training split with ``self.seed``."""
        return self._model_from_state(self._reference_run()["state"])

    def trajectory(self) -> list[Snapshot]:
        """Snapshots along the reference run (``task.trajectory_checkpoints`` segments), each with
        its segment's mean learning rate and step count; the last equals the checkpoint."""
        return [Snapshot(**s) for s in self._reference_run()["trajectory"]]

    def ensemble(self, k: int, mode: str = "full") -> list[nn.Module]:
        """``k`` independently trained models; member 0 is the reference checkpoint. With
        ``mode='half'`` members after the first train on seeded random halves of the data."""
        return list(self._trained_members(k, mode))

    def ensemble_members(self, k: int, mode: str = "full") -> Iterator[nn.Module]:
        """The members of :meth:`ensemble` one at a time (each trained, or read from the cache,
        when it is reached), so that a caller that drops a member holds one model at a time. A
        task that overrides :meth:`ensemble` gets its members from there."""
        if type(self).ensemble is not Task.ensemble:
            yield from self.ensemble(k, mode)
        else:
            yield from self._trained_members(k, mode)

    def _trained_members(self, k: int, mode: str) -> Iterator[nn.Module]:
        if mode not in ("full", "half"):
            raise ValueError(f"ensemble mode {mode!r}: use full or half")
        yield self.checkpoint()
        for m in range(1, k):
            seed = self.seed + 7919 * m

            def compute(seed=seed):
                self.log(f"training ensemble member {m} of {self.name}")
                idx = torch.arange(self.n_train)
                if mode == "half":
                    g = torch.Generator().manual_seed(seed)
                    idx = torch.randperm(self.n_train, generator=g)[: self.n_train // 2].sort().values
                return self.fit_model(idx, seed).model.state_dict()

            state = load_or_compute(self._cache_path("ensemble", {"member": m, "mode": mode}),
                                    compute, f"ensemble member {m}", self.log)
            model = self._model_from_state(state)
            del state
            yield model
            del model

    # ----- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def batched(self, fn, model, split: Split, batch_size: int = 1024) -> torch.Tensor:
        """Apply ``fn(model, inputs, targets)`` over ``split`` in batches; concatenate on dim 0."""
        outs = [fn(model, split.inputs[i:i + batch_size], split.targets[i:i + batch_size])
                for i in range(0, len(split), batch_size)]
        return torch.cat(outs)

    def query_observables(self, model) -> torch.Tensor:
        """phi_q for every query under ``model``: [n_query]."""
        model.eval()
        return self.batched(self.observable, model, self.query_split)

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        """Quality of ``model`` on the held-out test split: accuracy and mean loss (nats), with
        what chance gives for scale: ``chance_acc`` (always the most frequent test class) and
        ``uniform_loss`` (log of the number of classes); ``n_test`` examples."""
        model.eval()
        test = self.test_split
        logits = torch.cat([model(test.inputs[i:i + 1024]) for i in range(0, len(test), 1024)])
        counts = torch.bincount(test.targets, minlength=logits.shape[-1])
        return {"test_acc": float((logits.argmax(-1) == test.targets).float().mean()),
                "test_loss": float(F.cross_entropy(logits, test.targets)),
                "chance_acc": float(counts.max()) / len(test),
                "uniform_loss": math.log(logits.shape[-1]), "n_test": len(test)}
