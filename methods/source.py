"""SOURCE (Bae et al. 2024, "Training Data Attribution via Approximate Unrolled Differentiation").

The reference run's snapshots (``task.trajectory()``) are split into ``segments`` consecutive
groups. Within segment l training is treated as K_l steps of size eta_l on a quadratic with the
segment's averaged curvature H_l and averaged per-example gradients g_l,i:

- H_l: Kronecker-factored Fisher of the training loss (:mod:`methods.curvature`), with A and S
  averaged over the segment's snapshots, eigendecomposed once, and (EK-FAC) the eigenvalues refit
  in that shared basis as the snapshot average of E_i[(Q_S^T G_i Q_A)^2]; plus the recipe's weight
  decay and the damping, as eigenvalues Lambda_l [out, in] per layer;
- g_l,i = mean over the segment's snapshots of grad l_i [P];
- eta_l = step-weighted mean learning rate / (1 - momentum) (heavy-ball's effective step), K_l =
  the segment's optimizer steps.

Up-weighting example i by beta_i (objective (1/n) sum_i beta_i l_i) moves the final parameters by

    d w_T / d beta_i = -(1/n) sum_l [prod_{l' > l} exp(-eta_l' K_l' H_l')]
                                     (I - exp(-eta_l K_l H_l)) H_l^-1 g_l,i,

every matrix function taken in segment l's Kronecker eigenbasis. With v = grad phi_q(w_T), the
score is the dot product of v with that: queries are carried back segment by segment (u_L = v,
u_{l-1} = exp(-eta_l K_l H_l) u_l) and w_l = (I - exp(-eta_l K_l H_l)) H_l^-1 u_l, then

    scores[q, i] = -(1/n) sum_l w_l,q . g_l,i          [n_query, n_train]

(d observable_q / d beta_i; helpful examples score negative). Parameters outside the fitted layers
are left out (zero), as in ``ekfac``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.space import Categorical
from tdabench.methods.curvature import (
    DAMPING_KINDS,
    Curvature,
    CurvatureConfig,
    GradientLayout,
    LayerFactors,
    LayerSelectionError,
    correct_eigenvalues,
    fit_curvature,
    select_layers,
)
from tdabench.methods.gradients import gives_token_scores, iter_per_example_grads, query_grads
from tdabench.methods.trajectory import effective_lr, split_segments


def averaged_curvature(task, models: list, cfg: CurvatureConfig, names: list[str]) -> Curvature:
    """Kronecker factors averaged over ``models`` (the snapshots of one segment, ``names`` saying
    which in messages): A and S are the
    means of each model's factors (fitted and cached by :func:`fit_curvature`), eigendecomposed
    once; with ``cfg.strategy == 'ekfac'`` the eigenvalues are refit in that basis at every model
    and averaged."""
    fits = [fit_curvature(task, m, replace(cfg, strategy="kfac"), of) for m, of in zip(models, names)]
    avg = Curvature(cfg, n_examples=fits[0].n_examples)
    for name, first in fits[0].layers.items():
        a = sum((f.layers[name].q_a * f.layers[name].eig_a) @ f.layers[name].q_a.T for f in fits)
        s = sum((f.layers[name].q_s * f.layers[name].eig_s) @ f.layers[name].q_s.T for f in fits)
        eig_a, q_a = torch.linalg.eigh(a.double() / len(fits))
        eig_s, q_s = torch.linalg.eigh(s.double() / len(fits))
        avg.layers[name] = LayerFactors(first.weight, first.bias, q_a.float(), eig_a.clamp_min(0).float(),
                                        q_s.float(), eig_s.clamp_min(0).float())
    if cfg.strategy == "ekfac":
        # the EK-FAC eigenvalue pass, run at each model in the shared basis and averaged
        corrected = {name: torch.zeros_like(f.q_s[:, :1] @ f.q_a[:1]) for name, f in avg.layers.items()}
        for m in models:
            gen = torch.Generator(device=task.train_split.inputs.device).manual_seed(cfg.seed + 1)
            correct_eigenvalues(task, m, avg, gen)
            for name, f in avg.layers.items():
                corrected[name] += f.corrected / len(models)
        for name, f in avg.layers.items():
            f.corrected = corrected[name]
    return avg


def spectral(curv: Curvature, layout: GradientLayout, rows: torch.Tensor,
             fn: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply, layer by layer, the matrix with eigenbasis Q_S (x) Q_A and eigenvalues ``fn[layer]``
    [out, in] to each row of ``rows`` [N, P]; zero outside the fitted layers. [N, P]"""
    out = torch.zeros_like(rows)
    for name, f in curv.layers.items():
        q_s, q_a = f.q_s.to(rows.dtype), f.q_a.to(rows.dtype)
        rot = q_s.T @ layout.view(rows, f) @ q_a
        layout.write(out, f, q_s @ (rot * fn[name].to(rows.dtype)) @ q_a.T)
    return out


class SOURCE(Method):
    """SOURCE with ``segments`` segments of the reference run; curvature as in ``ekfac``
    (``strategy`` ekfac or kfac, ``damping`` relative to each layer's mean eigenvalue or
    absolute)."""

    requires = frozenset({"checkpoint", "trajectory"})
    #: segments of the reference run, cheapest first (at most the task's trajectory_checkpoints)
    cost_ladder = ({"segments": 1}, {"segments": 2}, {"segments": 3}, {"segments": 5})
    #: the damping of each segment's curvature, relative to its mean eigenvalue: the default is
    #: none (0), which a log range cannot hold, so the choices are 0 and values a decade apart
    search_space = {"damping": Categorical((0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0))}

    def __init__(self, seed: int = 0, segments: int = 3, damping: float = 0.0,
                 damping_kind: str = "relative", strategy: str = "ekfac",
                 empirical_fisher: bool = False, fisher_samples: int = 1,
                 layers: list[str] | None = None, exclude: list[str] | None = None,
                 batch_size: int = 256, max_examples: int | None = None):
        super().__init__(seed)
        self.segments = segments
        self.damping = damping
        self.damping_kind = damping_kind
        self.batch_size = batch_size
        self.curvature_config = CurvatureConfig(
            strategy=strategy, empirical_fisher=empirical_fisher, fisher_samples=fisher_samples,
            layers=tuple(layers) if layers is not None else None, exclude=tuple(exclude or ()),
            batch_size=batch_size, max_examples=max_examples, seed=self.seed)
        self._queries: list[torch.Tensor] = []  # w_l [n_query (x T), P], one per segment
        self._shape: tuple = ()  # the scores' leading shape: [n_query] or [n_query, T]
        self._groups: list = []

    def check(self, task) -> list[str]:
        p = self.curvature_config.problems()
        if self.damping_kind not in DAMPING_KINDS:
            p.append(f"method.damping_kind={self.damping_kind!r}: use relative (a multiple of the "
                     "mean eigenvalue) or absolute")
        if not isinstance(self.damping, (int, float)) or isinstance(self.damping, bool) or self.damping < 0:
            p.append(f"method.damping={self.damping!r} must be a number >= 0")
        snaps = task.trajectory_checkpoints
        if not isinstance(self.segments, int) or isinstance(self.segments, bool) or not 1 <= self.segments <= snaps:
            p.append(f"method.segments={self.segments!r} must be an integer from 1 to the task's "
                     f"task.trajectory_checkpoints={snaps}; lower method.segments or raise "
                     "task.trajectory_checkpoints")
        if not p:
            try:
                select_layers(task.new_model(task.seed), self.curvature_config.layers,
                              self.curvature_config.exclude)
            except LayerSelectionError as exc:
                p.append(f"method.layers / method.exclude: {exc}")
        return p

    def trainings(self, task) -> int:
        return 1  # the reference run, which also produced the snapshots

    def _eigenvalues(self, task, curv: Curvature, layer: LayerFactors) -> torch.Tensor:
        """Eigenvalues of the segment's H: Fisher + weight decay + damping. [out, in]"""
        strategy = self.curvature_config.strategy
        lam = layer.eigenvalues(strategy).double()
        return lam + task.recipe().weight_decay + curv.damping_of(layer, strategy, self.damping,
                                                                  self.damping_kind)

    def fit(self, task, model) -> None:
        """Per segment, its snapshot models, eta_l K_l and curvature; then w_l for every query."""
        layout = GradientLayout(model)
        self._groups = []
        trajectory, done = task.trajectory(), 0
        # a run cut at an early snapshot (the stagewise LDS) may have fewer snapshots than
        # segments: each is then a segment of its own
        for group in split_segments(trajectory, min(self.segments, len(trajectory))):
            models = [task.snapshot_model(s) for s in group]
            names = [f"snapshot {done + i + 1} of {len(trajectory)}" for i in range(len(group))]
            done += len(group)
            steps = sum(s.steps for s in group)
            eta = effective_lr(task, sum(s.lr * s.steps for s in group) / steps)
            self._groups.append((models, eta * steps, averaged_curvature(task, models, self.curvature_config, names)))
        per_token = self.token_scores(task)
        u = query_grads(task, model, self.batch_size, per_token=per_token)
        self._shape = u.shape[:-1]  # [n_query (, T)]
        # per-token rows are T times as many: kept in float32 (sequence rows in float64)
        u = u.flatten(0, -2) if per_token else u.double()
        self._queries = [None] * len(self._groups)
        for seg in reversed(range(len(self._groups))):
            _, t, curv = self._groups[seg]
            lam = {n: self._eigenvalues(task, curv, f) for n, f in curv.layers.items()}
            decay = {n: torch.exp(-t * v) for n, v in lam.items()}
            # (1 - exp(-t v)) / v, which tends to t as v -> 0
            response = {n: torch.where(v > 0, -torch.expm1(-t * v) / v.clamp_min(1e-300), t)
                        for n, v in lam.items()}
            self._queries[seg] = spectral(curv, layout, u, response)
            if seg:  # carried back to the segment before
                u = spectral(curv, layout, u, decay)

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task`` (``[n_query, T, n_train]``)."""
        return gives_token_scores(task)

    def score(self, task, model) -> torch.Tensor:
        s = task.train_split
        scores = torch.zeros(self._queries[0].shape[0], task.n_train, dtype=torch.float64, device=task.device)
        for (models, _, _), w in zip(self._groups, self._queries):
            for m in models:
                start = 0
                for g in iter_per_example_grads(task.per_example_loss, m, s.inputs, s.targets,
                                                self.batch_size):
                    scores[:, start:start + len(g)] -= (w @ g.to(w.dtype).T).double() / len(models)
                    start += len(g)
        return (scores / task.n_train).float().view(*self._shape, task.n_train)
