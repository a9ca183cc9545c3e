"""The method interface.

A method owns one attribution algorithm and nothing about a task's internals. The harness calls
``check(task)`` before any expensive work, then ``fit(task, model)`` (precompute) and
``score(task, model)`` (queries x training examples), profiled separately. ``task`` is an
:class:`~tdabench.harness.plugin.attribution_task.AttributionTask`: a method uses only its
members (never the task's config, cache folder or fingerprint; a file it caches gets its path from
``task.cache_path``).

Sign convention: ``scores[q, i]`` estimates d observable_q / d beta_i, the first-order change of
query q's observable when training example i gets more weight. With loss as the observable,
helpful examples score negative. Shapes: ``[n_query, n_train]``, or ``[n_query, query_len,
n_train]`` for per-token scores.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any, ClassVar, Literal, Union

import torch

from tdabench.harness.core.typecheck import fits
from tdabench.harness.plugin.attribution_task import AttributionTask


class MethodDivergedError(FloatingPointError):
    """A method's numerics diverged on this model (for example an SGLD chain blew up); views that
    run a method at many checkpoints skip those where it is raised."""


class Method:
    name: ClassVar[str] = "method"
    #: task capabilities this method needs: checkpoint, trajectory, ensemble, per_token
    requires: ClassVar[frozenset[str]] = frozenset({"checkpoint"})
    #: the pip extra that provides this method's dependencies, if any, and the module it must import
    extra: ClassVar[str | None] = None
    needs_module: ClassVar[str | None] = None
    #: the distribution that provides ``needs_module`` where its name differs (traker provides trak)
    needs_distribution: ClassVar[str | None] = None

    #: parameters that take another method's per-task defaults when the task sets none of its own,
    #: e.g. ``{"bif": ("chains", "draws")}`` for a reference implementation of the BIF
    shared_task_defaults: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: parameters whose default is another setting of the run (a config key), e.g. the method's
    #: ``seed`` follows the run's ``seed``; a task default or a command-line value still wins
    follows: ClassVar[dict[str, str]] = {"seed": "seed"}
    #: the method's cost knobs as an ordered ladder of settings, cheapest first: rung i is a
    #: ``{parameter: value}`` dict that ``frontier.level=i`` applies over the task's and the
    #: class's defaults (the cost-quality frontier, ``+sweep=frontier``); () when the method has
    #: no knob that trades cost for quality
    cost_ladder: ClassVar[tuple[dict[str, Any], ...]] = ()
    #: what the method offers views beyond its scores. ``training_loss_draws``: the method samples
    #: models around the checkpoint (``chains`` x ``draws`` of them, both constructor parameters)
    #: and :meth:`training_loss_draws` returns every training loss it saw at each draw (the BIF
    #: kernel and stagewise views of ``tdabench-insight`` find such a method by this capability)
    offers: ClassVar[frozenset[str]] = frozenset()
    #: the parameters ``tune.trials`` searches, ``{parameter: Float | Int | Categorical}`` (see
    #: :mod:`tdabench.harness.plugin.space`): settings that change what the method computes, not
    #: how much it spends (those are the cost ladder's); every range contains the default; {} when
    #: the method has nothing to tune
    search_space: ClassVar[dict[str, Any]] = {}
    #: the search space of studies run before :attr:`search_space` last changed (None: unchanged),
    #: searched with ``tune.sampler=tpe`` so those studies rerun as they ran
    earlier_search_space: ClassVar[dict[str, Any] | None] = None
    #: whether :meth:`self_influence` can be computed: True for a method that scores any queries
    #: the task gives it (the generic path); a method that cannot sets it False and says why in
    #: :attr:`no_self_influence` (the ``mislabel_auc`` metric is then unsupported for it)
    gives_self_influence: ClassVar[bool] = True
    no_self_influence: ClassVar[str] = ""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def keep_parameters(self, values: dict[str, Any]) -> None:
        """Store each entry of ``values`` (``locals()`` at the start of a constructor: its
        parameters) but ``self``, ``seed`` and ``__class__`` as the attribute of its name, for
        constructors with many settings."""
        for name, value in values.items():
            if name not in ("self", "seed", "__class__"):
                setattr(self, name, value)

    @classmethod
    def parameters(cls) -> list[str]:
        """The method's parameter names, in the order of its constructor."""
        return list(cls.defaults())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{parameter: default}`` from the constructor's signature, the one place a method's
        parameters and their defaults are defined (the config node and the record derive from it).
        Raises TypeError for a parameter without a default or a ``*args`` / ``**kwargs`` one."""
        out = {}
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty:
                raise TypeError(f"method {cls.name}: constructor parameter {p.name!r} needs a default "
                                "value (and no *args / **kwargs), so that it can be configured")
            out[p.name] = p.default
        return out

    @classmethod
    def parameter_problems(cls, params: dict) -> list[str]:
        """One line per value of ``params`` that does not fit the constructor's type annotation
        (int, float, bool, str, Literal[...], X | None), and per seed outside [0, 2**63)."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # unresolvable annotations: nothing to check against
            hints = {}
        problems = []
        for key, value in params.items():
            hint = hints.get(key)
            if hint is not None and not fits(value, hint, unknown=True):
                problems.append(f"method.{key}={value!r} must be {_describe(hint)} "
                                f"(method {cls.name}, default {cls.defaults().get(key)!r})")
            elif key == "seed" and isinstance(value, int) and not 0 <= value < 2**63:
                problems.append(f"method.seed={value} must be an integer in [0, 2**63)")
        return problems

    @classmethod
    def available(cls) -> str | None:
        """None when the method can run here, else a message naming the missing distribution and
        the command that installs it."""
        if cls.needs_module is None:
            return None
        try:
            importlib.import_module(cls.needs_module)
        except ImportError:
            return missing_extra(f"method {cls.name}", cls.needs_distribution or cls.needs_module.split(".")[0],
                                 cls.extra)
        return None

    def check(self, task: AttributionTask) -> list[str]:
        """Problems with running on ``task`` (cheap; called before any expensive work)."""
        return []

    def trainings(self, task: AttributionTask) -> int:
        """How many full model trainings the method consumes (cost accounting)."""
        return 1

    def fit(self, task: AttributionTask, model) -> None:
        """Precompute what scoring needs (curvature, features, samples)."""

    def score(self, task: AttributionTask, model) -> torch.Tensor:
        raise NotImplementedError

    def training_loss_draws(self, task: AttributionTask, model, idx: torch.Tensor) -> torch.Tensor:
        """Capability ``training_loss_draws`` (see :attr:`offers`): fit at ``model`` and return the
        training losses of examples ``idx`` ([k] indices into the training split) at every draw
        of the method's sampler: ``[draws, k]`` float (nats). :meth:`score` afterwards gives the
        scores of the same draws."""
        raise NotImplementedError(f"method {self.name} does not offer training_loss_draws")
    def self_influence(self, task, model) -> torch.Tensor:
        """Each training example's influence on its own training loss, d l_i / d beta_i: float
        [n_train] (negative where upweighting an example lowers its own loss, the usual case).
        The generic path fits this (unfitted) method on :meth:`Task.train_as_queries` and takes
        the diagonal of its scores [n_train, n_train]; a method with a cheaper exact diagonal
        overrides it."""
        view = task.train_as_queries()
        self.fit(view, model)
        scores = self.score(view, model)
        return torch.diagonal(scores.mean(dim=1) if scores.dim() == 3 else scores).detach().cpu()


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        values = typing.get_args(hint)
        return repr(values[0]) if len(values) == 1 else "one of " + ", ".join(map(repr, values))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def missing_extra(needer: str, distribution: str, extra: str | None) -> str:
    """The one-line message for something (``method bif_devinterp``, ``hydra/launcher=slurm``) whose
    library is not installed: the distribution, and the pip command for an installed tdabench and
    for a source checkout."""
    how = (f"pip install 'tdabench[{extra}]' (from a source checkout: pip install -e '.[{extra}]')" if extra
           else f"pip install {distribution}")
    return f"{needer} needs the {distribution} package, which is not installed: {how}"
