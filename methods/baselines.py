"""Baselines: random scores, gradient similarity, and the exact classical influence function."""

from __future__ import annotations

import torch
from torch.func import hessian

from tdabench.harness.method import Method
from tdabench.harness.training import num_params
from tdabench.methods.gradients import flatten, functional, query_grads, train_grad_dots, train_grads, trainable_params


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
    """

    def __init__(self, seed: int = 0, batch_size: int = 256):
        super().__init__(seed)
        self.batch_size = batch_size

    def score(self, task, model) -> torch.Tensor:
        """``[n_query, n_train]``; training gradients are streamed against the query gradients."""
        gq = query_grads(task, model, self.batch_size)
        return train_grad_dots(task, model, gq, self.batch_size).neg_()


class GradCos(GradDot):
    """Minus the cosine similarity of query and training gradients."""

    def score(self, task, model) -> torch.Tensor:
        gq = query_grads(task, model, self.batch_size)
        gq = gq / gq.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return train_grad_dots(task, model, gq, self.batch_size, normalize=True).neg_()


class ExactIF(Method):
    """Classical influence function with the explicit Hessian of the training objective.

    The objective is J(w) = (1/n) sum_i beta_i l_i(w) + (wd/2) ||w||^2 (the recipe's weight decay).
    Then d phi_q / d beta_i = -(1/n) grad phi_q^T (H + damping I)^-1 grad l_i at w*, with H the
    exact Hessian of J. Memory is P^2, so models above ``max_params`` are refused.
    """

    def __init__(self, seed: int = 0, damping: float = 1e-3, max_params: int = 20000,
                 batch_size: int = 256):
        super().__init__(seed)
        self.damping = damping
        self.max_params = max_params
        self.batch_size = batch_size
        self.h_inv_q: torch.Tensor | None = None

    def check(self, task) -> list[str]:
        p = num_params(task.new_model(task.seed))
        if p > self.max_params:
            return [f"exact_if needs a {p}x{p} Hessian: the {task.name} model has {p} parameters, "
                    f"above method.max_params={self.max_params}; use ekfac or kfac, or raise "
                    "method.max_params"]
        if self.damping < 0:
            return [f"method.damping={self.damping} must be >= 0"]
        return []

    def hessian(self, task, model) -> torch.Tensor:
        params = trainable_params(model)
        shapes = {k: v.shape for k, v in params.items()}
        sizes = [v.numel() for v in params.values()]
        flat0 = flatten(params, batched=False)
        s = task.train_split
        n = len(s)

        def objective(flat, x, y):
            tree = dict(zip(shapes, (c.view(shapes[k]) for k, c in zip(shapes, flat.split(sizes)))))
            return task.per_example_loss(functional(model, tree), x, y).sum() / n

        h = torch.zeros(len(flat0), len(flat0), dtype=flat0.dtype, device=flat0.device)
        for i in range(0, n, self.batch_size):
            h += hessian(objective)(flat0, s.inputs[i:i + self.batch_size], s.targets[i:i + self.batch_size])
        wd = task.recipe().weight_decay
        return h + (wd + self.damping) * torch.eye(len(flat0), dtype=h.dtype, device=h.device)

    def fit(self, task, model) -> None:
        h = self.hessian(task, model).double()
        gq = query_grads(task, model, self.batch_size).double()
        self.h_inv_q = torch.linalg.solve(h, gq.T)  # [P, n_query]

    def score(self, task, model) -> torch.Tensor:
        gt = train_grads(task, model, self.batch_size).double()
        return (-(gt @ self.h_inv_q).T / task.n_train).float()
