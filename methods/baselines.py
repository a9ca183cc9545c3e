"""Baselines: random scores and gradient similarity (the exact influence function is in
``methods.exact_if``)."""

from __future__ import annotations

import torch

from harness.registry import METHODS
from methods.base import Method
from methods.gradients import query_grads, train_grads


@METHODS.register("random")
class RandomScores(Method):
    """Independent standard Gaussian scores: the LDS of a method that knows nothing (about 0)."""

    def trainings(self, task) -> int:
        return 0

    def score(self, task, model) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(task.n_query, task.n_train, generator=g)


@METHODS.register("grad_dot")
class GradDot(Method):
    """Minus the dot product of query-observable and training-loss gradients at w*.

    First-order effect of one gradient step on example i on phi_q (up to the learning rate).
    """

    def __init__(self, seed: int = 0, batch_size: int = 256):
        super().__init__(seed)
        self.batch_size = batch_size

    def _grads(self, task, model):
        return (query_grads(task, model, self.batch_size), train_grads(task, model, self.batch_size))

    def score(self, task, model) -> torch.Tensor:
        gq, gt = self._grads(task, model)
        return -gq @ gt.T


@METHODS.register("grad_cos")
class GradCos(GradDot):
    """Minus the cosine similarity of query and training gradients."""

    def score(self, task, model) -> torch.Tensor:
        gq, gt = self._grads(task, model)
        gq = gq / gq.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gt = gt / gt.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return -gq @ gt.T
