"""Classical influence functions with Kronecker-factored curvature: ``ekfac`` and ``kfac``.

scores[q, i] = -(1/n) grad phi_q(w*)^T (F + lambda I)^-1 grad l_i(w*), with F the EK-FAC (Grosse
et al. 2023) or K-FAC block-diagonal Fisher of the training loss from :mod:`methods.curvature`
and lambda the damping (per layer: ``damping`` x the layer's mean eigenvalue, or ``damping``
itself with ``damping_kind: absolute``). Helpful training examples score negative.

fit: the Kronecker factors (cached per task, checkpoint and curvature arguments).
score: query gradients preconditioned once, then dotted with per-example training gradients in
batches of ``batch_size``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from harness.registry import METHODS
from methods.base import Method
from methods.curvature import (DAMPING_KINDS, Curvature, CurvatureConfig, LayerSelectionError,
                               fit_curvature, pairwise_scores, precondition_queries, select_layers)


class KroneckerIF(Method):
    """Shared body of ``ekfac`` and ``kfac``; subclasses set ``strategy``."""

    strategy: ClassVar[str] = "ekfac"

    def __init__(self, seed: int = 0, damping: float = 0.1, damping_kind: str = "relative",
                 empirical_fisher: bool = False, fisher_samples: int = 1, layers: list[str] | None = None,
                 exclude: list[str] | None = None, gradient_positions: str = "sum",
                 batch_size: int = 256, max_examples: int | None = None):
        super().__init__(seed)
        self.damping = damping
        self.damping_kind = damping_kind
        self.batch_size = batch_size
        self.curvature_config = CurvatureConfig(
            strategy=self.strategy, empirical_fisher=empirical_fisher, fisher_samples=fisher_samples,
            layers=tuple(layers) if layers is not None else None, exclude=tuple(exclude or ()),
            gradient_positions=gradient_positions, batch_size=batch_size, max_examples=max_examples,
            seed=self.seed)
        self.curvature: Curvature | None = None

    def check(self, task) -> list[str]:
        problems = self.curvature_config.problems()
        if self.damping_kind not in DAMPING_KINDS:
            problems.append(f"method.damping_kind={self.damping_kind!r}: use relative (a multiple of "
                            "the mean eigenvalue) or absolute")
        if not isinstance(self.damping, (int, float)) or isinstance(self.damping, bool) or self.damping < 0:
            problems.append(f"method.damping={self.damping!r} must be a number >= 0")
        if not problems:
            try:
                select_layers(task.new_model(task.seed), self.curvature_config.layers,
                              self.curvature_config.exclude)
            except LayerSelectionError as exc:
                problems.append(f"method.layers / method.exclude: {exc}")
        return problems

    def fit(self, task, model) -> None:
        self.curvature = fit_curvature(task, model, self.curvature_config)

    def preconditioned_queries(self, task, model) -> torch.Tensor:
        """(F + lambda)^-1 grad phi_q for every query: ``[n_query, P]``."""
        if self.curvature is None:
            self.fit(task, model)
        return precondition_queries(task, model, self.curvature, self.damping, self.damping_kind,
                                    batch_size=self.batch_size)

    def score(self, task, model) -> torch.Tensor:
        return pairwise_scores(task, model, self.preconditioned_queries(task, model), self.batch_size)

    def score_per_layer(self, task, model) -> dict[str, torch.Tensor]:
        """Scores split by layer: ``{layer name: [n_query, n_train]}``, summing to :meth:`score`."""
        return pairwise_scores(task, model, self.preconditioned_queries(task, model), self.batch_size,
                               curvature=self.curvature)


@METHODS.register("ekfac")
class EKFAC(KroneckerIF):
    """Influence functions with EK-FAC curvature (eigenvalue-corrected K-FAC)."""

    strategy = "ekfac"


@METHODS.register("kfac")
class KFAC(KroneckerIF):
    """Influence functions with K-FAC curvature (Kronecker-product eigenvalues)."""

    strategy = "kfac"
