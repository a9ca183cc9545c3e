"""Baselines: random scores and gradient similarity (the exact influence function is in
``methods.exact_if``)."""

from __future__ import annotations

import torch

from tdabench.harness.plugin.method import Method
from tdabench.methods.gradients import gives_token_scores, query_grads, train_grad_dots


class RandomScores(Method):
    """Independent standard Gaussian scores: the LDS of a method that knows nothing (about 0)."""

    def trainings(self, task) -> int:
        return 0

    def score(self, task, model) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(task.n_query, task.n_train, generator=g)


class GradDot(Method):
    """Minus the dot product of query-observable and training-loss gradients at w*.

    First-order effect of one gradient step on example i on phi_q (up to the learning rate).
    On tasks with per-token observables each query token is scored (``[n_query, T, n_train]``,
    whose mean over tokens is the sequence score).
    """

    def __init__(self, seed: int = 0, batch_size: int = 256):
        super().__init__(seed)
        self.batch_size = batch_size

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task``."""
        return gives_token_scores(task)

    def score(self, task, model) -> torch.Tensor:
        """``[n_query, (T,) n_train]``; training gradients are streamed against the query gradients."""
        gq = query_grads(task, model, self.batch_size, per_token=self.token_scores(task))
        out = train_grad_dots(task, model, gq.flatten(0, -2), self.batch_size).neg_()
        return out.view(*gq.shape[:-1], -1)


class GradCos(GradDot):
    """Minus the cosine similarity of query and training gradients."""

    def token_scores(self, task) -> bool:
        return False  # a mean of per-token cosines is not the sequence's cosine

    def score(self, task, model) -> torch.Tensor:
        gq = query_grads(task, model, self.batch_size)
        gq = gq / gq.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return train_grad_dots(task, model, gq, self.batch_size, normalize=True).neg_()
