"""TracIn (Pruthi et al. 2020), checkpoint version, over the reference run's trajectory.

Training minimizes the mean loss (1/n) sum_i beta_i l_i with SGD + momentum, so one step at
learning rate eta moves the parameters by about -(eta / (1 - momentum)) (1/n) grad l_i per unit of
beta_i (heavy-ball's effective step; each example's weight enters every step through the mean
over the data in expectation). Summing the first-order effect on the query observable over all
steps, and standing in for every step of a trajectory segment by the snapshot at its end:

    scores[q, i] = - sum_s (lr_s * steps_s / (1 - momentum)) / n * grad phi_q(w_s) . grad l_i(w_s)

where snapshot s (``task.trajectory()``) carries its segment's mean learning rate ``lr_s`` and its
number of optimizer steps ``steps_s``: lr x steps is the total step length the segment took, so
segments weigh by how far training moved in them, not by how many snapshots fall in them.
Helpful examples (aligned gradients) score negative, as the harness convention wants.
Shapes: [n_query, n_train]; on tasks with per-token observables [n_query, T, n_train], each
query token's observable in place of phi_q (their mean over tokens is the sequence score).
"""

from __future__ import annotations

import torch

from tdabench.harness.plugin.method import Method
from tdabench.methods.gradients import gives_token_scores, query_grads, train_grad_dots
from tdabench.methods.trajectory import effective_lr


class TracIn(Method):
    requires = frozenset({"checkpoint", "trajectory"})

    def __init__(self, seed: int = 0, batch_size: int = 256):
        super().__init__(seed)
        self.batch_size = batch_size

    def trainings(self, task) -> int:
        return 1  # the reference run, which also produced the snapshots

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task``."""
        return gives_token_scores(task)

    def score(self, task, model) -> torch.Tensor:
        per_token = self.token_scores(task)
        rows = task.n_query * (task.query_split.targets.shape[1] if per_token else 1)
        scores = torch.zeros(rows, task.n_train, dtype=torch.float64, device=task.device)
        for snap in task.trajectory():
            m = task.snapshot_model(snap)
            step = effective_lr(task, snap.lr) * snap.steps / task.n_train
            gq = query_grads(task, m, self.batch_size, per_token=per_token).double()
            train_grad_dots(task, m, gq.flatten(0, -2), self.batch_size, out=scores, alpha=-step)
            del gq
        return scores.float().view(task.n_query, *([-1] if per_token else []), task.n_train)
