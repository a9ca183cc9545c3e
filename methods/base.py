"""The method interface.

A method owns one attribution algorithm and nothing about a task's internals. The harness calls
``check(task)`` before any expensive work, then ``fit(task, model)`` (precompute) and
``score(task, model)`` (queries x training examples), profiled separately.

Sign convention: ``scores[q, i]`` estimates d observable_q / d beta_i, the first-order change of
query q's observable when training example i gets more weight. With loss as the observable,
helpful examples score negative. Shapes: ``[n_query, n_train]``, or ``[n_query, query_len,
n_train]`` for per-token scores.
"""

from __future__ import annotations

import importlib
import inspect
from typing import ClassVar

import torch


class Method:
    name: ClassVar[str] = "method"
    #: task capabilities this method needs: checkpoint, trajectory, ensemble, per_token
    requires: ClassVar[frozenset[str]] = frozenset({"checkpoint"})
    #: the pip extra that provides this method's dependencies, if any, and the module it must import
    extra: ClassVar[str | None] = None
    needs_module: ClassVar[str | None] = None

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    @classmethod
    def parameters(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    @classmethod
    def available(cls) -> str | None:
        """None when the method can run here, else a message saying what to install."""
        if cls.needs_module is None:
            return None
        try:
            importlib.import_module(cls.needs_module)
        except ImportError:
            return (f"method {cls.name} needs {cls.needs_module.split('.')[0]}, which is not "
                    f"installed: pip install -e '.[{cls.extra}]'")
        return None

    def check(self, task) -> list[str]:
        """Problems with running on ``task`` (cheap; called before any expensive work)."""
        return []

    def trainings(self, task) -> int:
        """How many full model trainings the method consumes (cost accounting)."""
        return 1

    def fit(self, task, model) -> None:
        """Precompute what scoring needs (curvature, features, samples)."""

    def score(self, task, model) -> torch.Tensor:
        raise NotImplementedError
