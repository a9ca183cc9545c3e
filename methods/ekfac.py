"""Classical influence functions with Kronecker-factored curvature: ``ekfac`` and ``kfac``.

scores[q, i] = -(1/n) grad phi_q(w*)^T (F + lambda I)^-1 grad l_i(w*), with F the EK-FAC (Grosse
et al. 2023) or K-FAC block-diagonal Fisher of the training loss from :mod:`methods.curvature`
and lambda the damping (per layer: ``damping`` x the layer's mean eigenvalue, or ``damping``
itself with ``damping_kind: absolute``). Helpful training examples score negative.

fit: the Kronecker factors (cached per task, checkpoint and curvature arguments).
score: query gradients preconditioned once, then dotted with per-example training gradients in
batches of ``batch_size``: ``[n_query, n_train]``. On language-model tasks (capability
``per_token``) with ``per_token: auto``, the query gradients are those of each token's
observable instead and the scores are per token, ``[n_query, T, n_train]``; their mean over T is
the sequence score (the sequence observable is the mean token loss). ``per_token: false`` gives
sequence scores everywhere. Per-token queries hold ``n_query x T x P`` preconditioned gradients.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.space import Float
from tdabench.methods.curvature import (
    DAMPING_KINDS,
    Curvature,
    CurvatureConfig,
    LayerSelectionError,
    fit_curvature,
    pairwise_scores,
    precondition_queries,
    select_layers,
)


class KroneckerIF(Method):
    """Shared body of ``ekfac`` and ``kfac``; subclasses set ``strategy``."""

    strategy: ClassVar[str] = "ekfac"
    #: training examples the curvature factors are fitted on, cheapest first (null: all of them)
    cost_ladder = ({"max_examples": 100}, {"max_examples": 250}, {"max_examples": 500},
                   {"max_examples": None})
    #: the damping added to each eigenvalue, relative to a layer's mean eigenvalue by default:
    #: it trades the fidelity of the inverse curvature against the noise of its small
    #: eigenvalues, and its best value depends on the model and the query set (log scale: the
    #: useful values span decades)
    search_space = {"damping": Float(1e-4, 10.0, log=True)}

    def __init__(self, seed: int = 0, damping: float = 0.1, damping_kind: str = "relative",
                 empirical_fisher: bool = False, fisher_samples: int = 1, layers: list[str] | None = None,
                 exclude: list[str] | None = None, gradient_positions: str = "sum",
                 batch_size: int = 256, max_examples: int | None = None,
                 per_token: Literal["auto"] | bool = "auto"):
        super().__init__(seed)
        self.per_token = per_token
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
        if not (self.per_token == "auto" or isinstance(self.per_token, bool)):
            problems.append(f"method.per_token={self.per_token!r}: use auto (per-token scores on "
                            "tasks with capability per_token), true or false")
        elif self.per_token is True and "per_token" not in task.capabilities:
            problems.append(f"method.per_token=true: task {task.name} has no per-token observables; "
                            "use per_token=auto or false")
        if not problems:
            try:
                select_layers(task.new_model(task.seed), self.curvature_config.layers,
                              self.curvature_config.exclude)
            except LayerSelectionError as exc:
                problems.append(f"method.layers / method.exclude: {exc}")
        return problems

    def fit(self, task, model) -> None:
        self.curvature = fit_curvature(task, model, self.curvature_config)
        # a fit time read from the cache is not the cost of fitting: say so in the record
        self.diagnostics = {"factors_from_cache": self.curvature.from_cache}

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task``."""
        return self.per_token is not False and "per_token" in task.capabilities

    def preconditioned_queries(self, task, model) -> torch.Tensor:
        """(F + lambda)^-1 grad phi_q for every query: ``[n_query, P]``, or ``[n_query, T, P]``
        (one row per query token) when :meth:`token_scores`."""
        if self.curvature is None:
            self.fit(task, model)
        return precondition_queries(task, model, self.curvature, self.damping, self.damping_kind,
                                    batch_size=self.batch_size, per_token=self.token_scores(task))

    def _scores(self, task, model, per_layer: bool):
        pq = self.preconditioned_queries(task, model)
        out = pairwise_scores(task, model, pq.flatten(0, -2), self.batch_size,
                              curvature=self.curvature, per_layer=per_layer)
        shape = (*pq.shape[:-1], -1)  # [n_query, (T,) n_train]
        if isinstance(out, dict):
            return {name: s.view(shape) for name, s in out.items()}
        return out.view(shape)

    def score(self, task, model) -> torch.Tensor:
        """``[n_query, n_train]``, or ``[n_query, T, n_train]`` when :meth:`token_scores`."""
        return self._scores(task, model, per_layer=False)

    def score_per_layer(self, task, model) -> dict[str, torch.Tensor]:
        """Scores split by layer: ``{layer name: scores shaped as by score}``, summing to
        :meth:`score`."""
        return self._scores(task, model, per_layer=True)


class EKFAC(KroneckerIF):
    """Influence functions with EK-FAC curvature (eigenvalue-corrected K-FAC)."""

    strategy = "ekfac"


class KFAC(KroneckerIF):
    """Influence functions with K-FAC curvature (Kronecker-product eigenvalues)."""

    strategy = "kfac"
