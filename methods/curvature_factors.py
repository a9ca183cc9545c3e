"""Kronecker factors of a task's training loss (see :mod:`methods.curvature` for the maths): the
fitting configuration, the factors of each layer, their eigendecomposition and the EK-FAC
eigenvalue correction, and the preconditioner (F + lambda I)^-1 they define on flat gradients."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from tdabench.methods.curvature_layers import LayerSelectionError, layer_batches, select_layers
from tdabench.methods.gradients import GRAD_CHUNK_BYTES, chunk_bytes, eval_mode, trainable_params

STRATEGIES = ("kfac", "ekfac")
DAMPING_KINDS = ("relative", "absolute")


@dataclass
class LayerFactors:
    """Kronecker factors of one layer. Shapes: ``q_a [in, in]``, ``eig_a [in]``, ``q_s [out,
    out]``, ``eig_s [out]``, ``corrected [out, in]`` (EK-FAC eigenvalues; None for K-FAC).
    ``weight`` and ``bias`` name the layer's parameters in ``model.named_parameters()``."""

    weight: str
    bias: str | None
    q_a: torch.Tensor
    eig_a: torch.Tensor
    q_s: torch.Tensor
    eig_s: torch.Tensor
    corrected: torch.Tensor | None = None

    def eigenvalues(self, strategy: str) -> torch.Tensor:
        """Eigenvalues of the layer's Fisher block in the Kronecker eigenbasis: ``[out, in]``."""
        if strategy == "ekfac":
            if self.corrected is None:
                raise ValueError("these factors were fitted with strategy='kfac'; refit with "
                                 "strategy='ekfac' for corrected eigenvalues")
            return self.corrected
        return torch.outer(self.eig_s, self.eig_a).clamp_min(0)


class GradientLayout:
    """Where each layer's parameters sit in a flat gradient row (``methods.gradients`` order)."""

    def __init__(self, model: nn.Module):
        self.offsets: dict[str, tuple[int, torch.Size]] = {}
        start = 0
        for name, p in trainable_params(model).items():
            self.offsets[name] = (start, p.shape)
            start += p.numel()
        self.size = start

    def _cols(self, name: str) -> slice:
        start, shape = self.offsets[name]
        return slice(start, start + shape.numel())

    def view(self, flat: torch.Tensor, layer: LayerFactors) -> torch.Tensor:
        """``[N, P]`` flat gradients -> the layer's gradient matrices ``[N, out, in (+1)]``."""
        out = self.offsets[layer.weight][1][0]
        parts = [flat[:, self._cols(layer.weight)].reshape(len(flat), out, -1)]
        if layer.bias is not None:
            parts.append(flat[:, self._cols(layer.bias)].reshape(len(flat), out, 1))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]

    def write(self, flat: torch.Tensor, layer: LayerFactors, mats: torch.Tensor) -> None:
        """Inverse of :meth:`view`: write ``mats [N, out, in (+1)]`` into ``flat [N, P]``."""
        n_w = self.offsets[layer.weight][1].numel()
        flat[:, self._cols(layer.weight)] = mats[:, :, : n_w // mats.shape[1]].reshape(len(flat), -1)
        if layer.bias is not None:
            flat[:, self._cols(layer.bias)] = mats[:, :, -1]


# ----- fitting -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurvatureConfig:
    """What determines fitted factors (all of it goes into the cache key).

    - strategy: ``ekfac`` (also fits corrected eigenvalues; can precondition as K-FAC too) or
      ``kfac``.
    - empirical_fisher: False (default) samples targets from the model (true Fisher,
      ``fisher_samples`` draws per example, fresh draws for the eigenvalue pass); True uses the
      dataset labels.
    - layers / exclude: layer name patterns (fnmatch, or ``re:`` + a regular expression).
    - gradient_positions: ``sum`` (S sums over a layer's T positions, the KFC scale: K-FAC's
      eigenvalues then have the Fisher's trace) or ``mean`` (S / T, kronfluence's convention; it
      shrinks K-FAC's curvature of a Conv2d or sequence layer by T, which changes how layers are
      weighted against each other; EK-FAC's eigenvalues do not depend on it).
    - batch_size: examples per forward/backward pass (also fixes the order of the draws).
    - max_examples: fit on the first that many training examples (all when None).
    """

    strategy: str = "ekfac"
    empirical_fisher: bool = False
    fisher_samples: int = 1
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    gradient_positions: str = "sum"
    batch_size: int = 256
    max_examples: int | None = None
    seed: int = 0

    def problems(self) -> list[str]:
        p = []
        if self.strategy not in STRATEGIES:
            p.append(f"strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if not isinstance(self.empirical_fisher, bool):
            p.append(f"method.empirical_fisher={self.empirical_fisher!r} must be true or false")
        if not isinstance(self.fisher_samples, int) or self.fisher_samples < 1:
            p.append(f"method.fisher_samples={self.fisher_samples!r} must be a positive integer")
        if self.gradient_positions not in ("sum", "mean"):
            p.append(f"method.gradient_positions={self.gradient_positions!r}: use sum or mean")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            p.append(f"method.batch_size={self.batch_size!r} must be a positive integer")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            p.append(f"method.max_examples={self.max_examples!r} must be null or a positive integer")
        return p


@dataclass
class Curvature:
    """Fitted factors per layer (keyed by module name) and the config that made them."""

    config: CurvatureConfig
    layers: dict[str, LayerFactors] = field(default_factory=dict)
    n_examples: int = 0
    #: True when :func:`fit_curvature` read the factors from its cache instead of fitting them
    from_cache: bool = False

    def damping_of(self, layer: LayerFactors, strategy: str, damping: float, kind: str) -> float:
        if kind == "absolute":
            return float(damping)
        return float(damping) * float(layer.eigenvalues(strategy).mean())

    def precondition(self, grads: torch.Tensor, layout: GradientLayout, damping: float = 0.1,
                     damping_kind: str = "relative", strategy: str | None = None) -> torch.Tensor:
        """(F + lambda I)^-1 applied to each row of flat gradients ``grads [N, P]``, layer by
        layer: ``[N, P]``, zero in parameters outside the fitted layers. ``damping_kind``:
        ``relative`` (lambda = damping x the layer's mean eigenvalue) or ``absolute``.
        ``strategy`` defaults to the fitted one (EK-FAC factors can also precondition as K-FAC)."""
        strategy = strategy or self.config.strategy
        out = torch.zeros_like(grads)
        for layer in self.layers.values():
            g = layout.view(grads, layer)
            lam = layer.eigenvalues(strategy)
            rot = layer.q_s.T @ g @ layer.q_a
            rot = rot / (lam + self.damping_of(layer, strategy, damping, damping_kind))
            layout.write(out, layer, layer.q_s @ rot @ layer.q_a.T)
        return out

def _fitting_data(task, cfg: CurvatureConfig, model, gen: torch.Generator):
    """Training inputs and the targets the Fisher is taken with: the dataset labels, or (true
    Fisher) ``fisher_samples`` independent draws per example from the model, batch by batch.
    Each call draws afresh from ``gen``."""
    split = task.train_split
    n = len(split) if cfg.max_examples is None else min(cfg.max_examples, len(split))
    x, y = split.inputs[:n], split.targets[:n]
    if cfg.empirical_fisher:
        return x, y
    xs, ys = [], []
    for _ in range(cfg.fisher_samples):
        for i in range(0, n, cfg.batch_size):
            xb = x[i:i + cfg.batch_size]
            xs.append(xb)
            ys.append(task.sample_targets(model, xb, gen))
    # one draw per example: the inputs themselves, not a copy
    return (x if cfg.fisher_samples == 1 else torch.cat(xs)), torch.cat(ys)


def _covariances(task, model, layers, x, y, batch_size, mean_positions=False):
    """A and S of every layer (see the module docstring), summed over examples (float32, like
    the activations; the eigendecomposition is in float64)."""
    a_sum: dict[str, torch.Tensor] = {}
    s_sum: dict[str, torch.Tensor] = {}
    for batch in layer_batches(task, model, layers, x, y, batch_size):
        for name, (acts, grads) in batch:
            positions = acts.shape[1]
            acts = acts.reshape(-1, acts.shape[2])
            grads = grads.reshape(-1, grads.shape[2])
            if name not in a_sum:
                a_sum[name] = acts.new_zeros(acts.shape[1], acts.shape[1])
                s_sum[name] = grads.new_zeros(grads.shape[1], grads.shape[1])
            a_sum[name].addmm_(acts.T, acts, alpha=1 / positions)
            s_sum[name].addmm_(grads.T, grads, alpha=1 / positions if mean_positions else 1)
            del acts, grads  # before the next layer's rows are formed
    return a_sum, s_sum


def _param_names(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, tuple[str, str | None]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {name: (ids[id(m.weight)], ids[id(m.bias)] if m.bias is not None and m.bias.requires_grad else None)
            for name, m in layers.items()}


def _check_bias(layers: dict[str, nn.Module]) -> None:
    for name, m in layers.items():
        if m.bias is not None and not m.bias.requires_grad:
            raise LayerSelectionError(f"layer {name} has a frozen bias beside a trainable weight; "
                                      "exclude it or unfreeze the bias")


def fit_curvature_uncached(task, model: nn.Module, cfg: CurvatureConfig) -> Curvature:
    """Fit the factors of ``cfg`` for ``model`` on ``task``'s training split (no cache)."""
    problems = cfg.problems()
    if problems:
        raise ValueError("; ".join(problems))
    layers = select_layers(model, cfg.layers, cfg.exclude)
    _check_bias(layers)
    pnames = _param_names(model, layers)
    with eval_mode(model):
        gen = torch.Generator(device=task.train_split.inputs.device).manual_seed(cfg.seed)
        x, y = _fitting_data(task, cfg, model, gen)
        n = len(x)
        a_sum, s_sum = _covariances(task, model, layers, x, y, cfg.batch_size,
                                   cfg.gradient_positions == "mean")
        missing = [n_ for n_ in layers if n_ not in s_sum]
        if missing:
            raise LayerSelectionError(f"layers {missing} do not affect the training loss; exclude them")
        curv = Curvature(cfg, n_examples=n)
        for name in layers:
            eig_a, q_a = torch.linalg.eigh(a_sum.pop(name).double().div_(n))
            eig_s, q_s = torch.linalg.eigh(s_sum.pop(name).double().div_(n))
            w, b = pnames[name]
            curv.layers[name] = LayerFactors(w, b, q_a.float(), eig_a.clamp_min(0).float(),
                                             q_s.float(), eig_s.clamp_min(0).float())
        if cfg.strategy == "ekfac":
            # fresh targets for the eigenvalue pass, as in kronfluence
            _correct_eigenvalues(task, model, layers, curv, *_fitting_data(task, cfg, model, gen),
                                 cfg.batch_size)
    return curv


def _correct_eigenvalues(task, model, layers, curv: Curvature, x, y, batch_size) -> None:
    """EK-FAC: Lambda = E_i[(Q_S^T G_i Q_A)^2] with G_i = sum_t g_it a_it^T, computed in the
    eigenbasis from the rotated rows Q_S^T g_it and Q_A^T a_it. With one position (T = 1) G_i is
    rank one and Lambda = E_i[(Q_S^T g_i)^2 (Q_A^T a_i)^2^T], without forming G_i."""
    sums = {name: torch.zeros(len(f.q_s), len(f.q_a), dtype=torch.float64, device=f.q_s.device)
            for name, f in curv.layers.items()}
    for batch in layer_batches(task, model, layers, x, y, batch_size):
        for name, (acts, grads) in batch:
            f = curv.layers[name]
            ra, rg = acts @ f.q_a, grads @ f.q_s  # [B, T, in], [B, T, out]
            del acts, grads  # before the next layer's rows are formed
            if ra.shape[1] == 1:
                sums[name] += (rg[:, 0].square().T @ ra[:, 0].square()).double()
                continue
            step = max(1, chunk_bytes(ra.device, GRAD_CHUNK_BYTES) // (4 * rg.shape[2] * ra.shape[2]))
            for j in range(0, len(ra), step):
                rot = torch.bmm(rg[j:j + step].transpose(1, 2), ra[j:j + step])  # [b, out, in]
                sums[name] += rot.square().sum(0).double()
                del rot
    for name, f in curv.layers.items():
        f.corrected = (sums[name] / len(x)).float()


def correct_eigenvalues(task, model: nn.Module, curvature: Curvature,
                        generator: torch.Generator | None = None) -> None:
    """Refit ``curvature``'s EK-FAC eigenvalues (``LayerFactors.corrected``) at ``model`` in the
    curvature's own eigenbasis, e.g. a basis shared by several models (trajectory snapshots).
    Targets follow ``curvature.config`` (true Fisher draws come from ``generator``, by default
    seeded with the config's seed)."""
    cfg = curvature.config
    if generator is None:
        generator = torch.Generator(device=task.train_split.inputs.device).manual_seed(cfg.seed)
    layers = {name: m for name, m in select_layers(model, cfg.layers, cfg.exclude).items()
              if name in curvature.layers}
    with eval_mode(model):
        x, y = _fitting_data(task, cfg, model, generator)
        _correct_eigenvalues(task, model, layers, curvature, x, y, cfg.batch_size)


def model_digest(model: nn.Module) -> str:
    """sha256 prefix of the model's parameters and buffers (identifies the point w of a fit)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
