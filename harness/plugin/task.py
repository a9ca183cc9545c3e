"""The task interface: what a learning problem is (data, model, training recipe, per-example loss
and observable), written by a task's author.

A subclass provides ``load_splits()`` (train, query and test :class:`Split`: ``inputs`` and
``targets`` tensors whose first dimension indexes examples) and ``build_model()``; it may override
``validate``, ``recipe``, ``per_example_loss(model, inputs, targets) -> [B]`` (the training loss
l_i), ``observable(model, inputs, targets) -> [B]`` (the query observable phi_q; per-example loss
by default), ``token_observables``, ``sample_targets``, ``augment``, ``initial_state``,
``decode_tokens`` and ``evaluate``. ``model`` is anything callable on ``inputs`` (an
``nn.Module`` or a functional wrapper), so methods can use ``torch.func``.

Training and caching models is the service :class:`~tdabench.harness.plugin.models.TrainedModels`
that every task inherits, its files in the store :class:`~tdabench.harness.plugin.models.ModelCache`
(``task.models``, owning the cache folder; it holds no task): ``fit_model`` and
``fit_many`` (the recipe on subsets, for the ground truth), ``checkpoint()`` (the reference model
w*), ``trajectory()`` (snapshots along the reference run), ``ensemble(k)`` (independently trained
models), ``replay(seed)`` (the training as a step-by-step differentiable
:class:`~tdabench.harness.plugin.training.Replay`, capability ``replayable``) and
``cache_path``. Methods see a task only through
:class:`~tdabench.harness.plugin.attribution_task.AttributionTask`.

Query sets: the queries every record is scored on are the *test* queries. For tuning, a task
also gives *validation* queries (:meth:`Task.validation_view`): ``n_query`` examples drawn,
seeded, from the held-out test split, so they are disjoint from the training set and from the
test queries, and the test queries stay what they were. Both are named by their indices into the
task's held-out pool (:meth:`Task.query_ids`), so anyone can check that they are disjoint.

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
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tdabench.harness.plugin.models import ModelCache, TrainedModels
from tdabench.harness.plugin.training import Recipe, Snapshot, recipe_problems

_log = logging.getLogger(__name__)

__all__ = ["Split", "Task", "TaskSettings", "COMMON_TASK_KEYS", "margin"]

#: the task config keys every task has (checked by :meth:`Task.validate`); the rest are a task's own
COMMON_TASK_KEYS = ("name", "n_train", "n_query", "observable", "trajectory_checkpoints", "recipe",
                    "method_defaults")


@dataclass(frozen=True)
class TaskSettings:
    """Base of a task's own settings: a frozen dataclass whose fields are the config keys the task
    reads beyond :data:`COMMON_TASK_KEYS`, each with its default (the one place it is written;
    conf/task/NAME.yaml may state it again, and tests/test_config_defaults.py checks that the two
    agree). A task names it as :attr:`Task.settings_class` and reads ``self.settings.KEY``."""

    @classmethod
    def of(cls, cfg: dict) -> "TaskSettings":
        """The settings of a task config node (a key it lacks at its default)."""
        def default(f):
            return f.default_factory() if f.default is MISSING else f.default
        return cls(**{f.name: cfg[f.name] if f.name in cfg else default(f) for f in fields(cls)})


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


class Task(TrainedModels, ABC):
    """Base class of every task. A task is registered by an entry point in the group
    ``tdabench.tasks``; the registry sets :attr:`name` to the entry point's name."""

    name: ClassVar[str] = "task"
    #: what the task can provide to methods (see Method.requires); language-model tasks add
    #: ``per_token``; tasks whose training is :func:`~tdabench.harness.plugin.training.train`
    #: unchanged add ``replayable`` (``replay(seed)`` reproduces ``fit_model`` bit for bit); tasks
    #: whose targets are class labels of a cross-entropy add ``classification`` (:meth:`mislabeled`)
    capabilities: ClassVar[frozenset[str]] = frozenset({"checkpoint", "trajectory", "ensemble"})
    #: set by the run when one of its metrics reads per-token scores (``lds_token``): grad_dot,
    #: TracIn, SOURCE and TRAK then score each query token, which costs about T times more
    token_scores_wanted: bool = False
    #: whether the ground truth trains many models at once with torch.func (not for models that
    #: draw random numbers in their forward pass); see
    #: :func:`~tdabench.harness.plugin.training.train_stacked`. A task may decide per device.
    vectorizable: ClassVar[bool] = False
    #: False for tasks that measure cost only (no retraining ground truth, no LDS)
    measures_lds: ClassVar[bool] = True
    #: the task's config node (n_train, n_query, recipe, ...) for a task without a YAML file in
    #: conf/task/ (a plugin task); ``name`` is added by the harness
    default_config: ClassVar[dict] = {}
    #: the dataclass of the task's own settings (a :class:`TaskSettings`), read as :attr:`settings`
    settings_class: ClassVar[type[TaskSettings]] = TaskSettings
    #: search-space dimensions the task redeclares per method, ``{method: {parameter: dimension}}``,
    #: where good settings lie elsewhere than the method's own space is centred (tuning searches
    #: the method's space with these replacing its dimensions: ``space.space_for``)
    search_spaces: ClassVar[dict[str, dict]] = {}

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
        #: the store of this task's models and methods' files under ``cache_dir``
        self.models = ModelCache(self.cache_dir)
        #: which queries ``query_split`` holds: ``test`` (what records are scored on) or
        #: ``validation`` (for tuning; see :meth:`validation_view`) or ``train`` (:meth:`train_as_queries`)
        self.queries = "test"

    @property
    def settings(self):
        """The task's own settings (:attr:`settings_class`) from its config."""
        return self.settings_class.of(self.cfg)

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

    def augment_many(self, inputs: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """:meth:`augment` of N models' minibatches ([N, B, ...]), model j's with ``gens[j]``, for
        models trained together; a task may do it in one pass (same draws)."""
        if type(self).augment is Task.augment:
            return inputs
        return torch.stack([self.augment(x, g) for x, g in zip(inputs, gens)])

    # ----- data -----------------------------------------------------------------------------
    def _load(self) -> tuple[Split, Split, Split]:
        if self._splits is None:
            train, query, test = self.load_splits()
            if self.queries == "validation":
                pick = self._validation_positions(len(test))
                query = Split(test.inputs[pick], test.targets[pick])
            self._splits = tuple(s.to(self.device) for s in (train, query, test))
        return self._splits

    def heldout_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the test queries [n_query] and of the test split's examples [n_test] in the
        task's held-out pool, in split order. By default the pool is the query split followed by
        the test split (positions 0..n_query-1, then n_query onwards); a task whose splits come
        from one numbered source overrides this with the source's indices."""
        n_test = len(self.load_splits()[2]) if self._splits is None else len(self._splits[2])
        return torch.arange(self.n_query), self.n_query + torch.arange(n_test)

    def _validation_positions(self, n_test: int) -> torch.Tensor:
        """Positions in the test split of the validation queries: ``n_query`` of them (all of the
        test split when it is smaller), drawn with a generator seeded from the task's seed, sorted."""
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0]))
        return torch.randperm(n_test, generator=g)[: self.n_query].sort().values

    def query_ids(self) -> list[int]:
        """Indices into the held-out pool (:meth:`heldout_ids`) of the queries ``query_split``
        holds (test or validation, after :attr:`queries`)."""
        query, test = self.heldout_ids()
        if self.queries == "validation":
            return test[self._validation_positions(len(test))].tolist()
        return query.tolist()

    def validation_view(self) -> "Task":
        """This task with the validation queries as its query split (``queries = 'validation'``):
        same training set, models and test split; its :meth:`fingerprint` differs, so ground
        truths and query-dependent caches keyed by it are its own. It has ``n_query``
        validation queries, or the whole test split where that is smaller (digits at 1597
        training images keeps 100 test images). The test split also measures model quality
        (:meth:`evaluate`), which informs no choice, so sharing it is harmless."""
        n_test = len(self.test_split)
        if n_test < 2:
            raise ValueError(f"task {self.name}: the test split has {n_test} examples, too few for "
                             "validation queries; lower task.n_train or task.n_query")
        view = copy.copy(self)
        view.queries = "validation"
        view.n_query = min(self.n_query, n_test)
        view._splits = None
        return view

    @property
    def train_split(self) -> Split:
        return self._load()[0]

    @property
    def query_split(self) -> Split:
        return self._load()[1]

    @property
    def test_split(self) -> Split:
        return self._load()[2]

    @property
    def trajectory_checkpoints(self) -> int:
        """How many snapshots :meth:`trajectory` holds (``task.trajectory_checkpoints``, 5 by default)."""
        return int(self.cfg.get("trajectory_checkpoints", 5))

    def fingerprint(self) -> dict:
        """Everything that determines the task's data, models and outcomes (for cache keys): its
        name, its config (without the methods' per-task defaults), its seed and which queries it
        holds (the test queries unnamed)."""
        cfg = {k: v for k, v in self.cfg.items() if k not in ("method_defaults",)}
        fp = {"task": self.name, "cfg": cfg, "seed": self.seed}
        return fp if self.queries == "test" else {**fp, "queries": self.queries}

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
        view.queries = "train"
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
        variant.models = ModelCache(self.cache_dir)  # its own models, trained and cached
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
