"""Kronecker-factored curvature (K-FAC, EK-FAC) of a task's training loss, shared by every method
that needs an approximate inverse Hessian (ekfac, kfac, and unrolling methods).

Layers. A supported layer is an ``nn.Linear`` (any leading dimensions, e.g. the linear layers of
a transformer) or an ``nn.Conv2d`` (groups 1, zero padding) with a trainable weight. Its
per-example gradient is arranged as a matrix G_i = [dW | db] of shape ``[out, in (+1)]``: the
Conv2d kernel is flattened to ``[out, c_in * kh * kw]`` (im2col order) and a bias is a
homogeneous coordinate, a constant 1 appended to every input row.

Factors (Grosse & Martens 2016, KFC). With a_it the input row and g_it the gradient of example i's
loss with respect to the layer's output at position t (T positions: 1 for an MLP, the output
pixels of a Conv2d, the tokens of a sequence),

    A = E_i[(1/T) sum_t a_it a_it^T]      ``[in, in]``   activation covariance
    S = E_i[sum_t g_it g_it^T]            ``[out, out]`` pre-activation-gradient covariance

and the layer's Fisher block is F ~ A (x) S, i.e. F vec(G) = vec(S G A). The expectation is over
training examples, with targets sampled from the model's predictive distribution (true Fisher,
``Task.sample_targets``) or the dataset's labels (empirical Fisher). With eigendecompositions
A = Q_A diag(a) Q_A^T and S = Q_S diag(s) Q_S^T, the eigenvalues of F are Lambda = s a^T
``[out, in]`` (K-FAC); EK-FAC (George et al. 2018) keeps the eigenbasis and refits them as the
second moment of per-example gradients in it, Lambda = E_i[(Q_S^T G_i Q_A)^2].

Preconditioning: (F + lambda I)^-1 G = Q_S [(Q_S^T G Q_A) / (Lambda + lambda)] Q_A^T, per layer,
with the damping lambda an absolute value or a multiple of the layer's mean eigenvalue (0.1 by
default, as in Grosse et al. 2023).

Typical use::

    curv = fit_curvature(task, model, CurvatureConfig(strategy="ekfac"))   # cached
    pq = precondition_queries(task, model, curv, damping=0.1)              # [n_query, P]
    s = pairwise_scores(task, model, pq)                                  # [n_query, n_train]
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tdabench.harness.core.storage import content_hash, load_or_compute
from tdabench.methods.gradients import (
    GRAD_CHUNK_BYTES,
    eval_mode,
    gradient_chunk,
    iter_per_example_grads,
    iter_per_token_grads,
    train_grad_dots,
    trainable_params,
)

STRATEGIES = ("kfac", "ekfac")
DAMPING_KINDS = ("relative", "absolute")
#: bytes of one layer's input rows (for a Conv2d, unfolded) formed at once while fitting factors
ROW_CHUNK_BYTES = 32 * 2**20
#: bytes of flat gradient rows preconditioned at once (their temporaries are a few times this)
PRECONDITION_ROW_BYTES = 2**18


class LayerSelectionError(ValueError):
    """No supported layer matched; the message lists the model's modules."""


# ----- layer selection ---------------------------------------------------------------------------
def _unsupported_reason(module: nn.Module) -> str | None:
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        return "not nn.Linear or nn.Conv2d"
    if not module.weight.requires_grad:
        return "weight is frozen"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped convolution"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode}"
        if module.padding == "same" and any(d * (k - 1) % 2 for k, d in zip(module.kernel_size, module.dilation)):
            return "padding='same' with an even kernel"
    return None


def _matches(name: str, pattern: str) -> bool:
    """fnmatch pattern (``'layers.*.mlp.*'``), or a regular expression after ``'re:'``."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_layers(model: nn.Module, include: Iterable[str] | None = None,
                  exclude: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Supported layers of ``model`` whose names match a pattern of ``include`` (all when None)
    and none of ``exclude``, in module order. Raises :class:`LayerSelectionError`, listing the
    model's modules, when none is left."""
    include = list(include) if include is not None else None
    exclude = list(exclude or [])
    chosen = {}
    for name, module in model.named_modules():
        if not name or _unsupported_reason(module) is not None:
            continue
        if include is not None and not any(_matches(name, p) for p in include):
            continue
        if any(_matches(name, p) for p in exclude):
            continue
        chosen[name] = module
    if not chosen:
        seen = [f"{n} ({type(m).__name__}" + (f", {r}" if (r := _unsupported_reason(m))
                                              and isinstance(m, (nn.Linear, nn.Conv2d)) else "") + ")"
                for n, m in model.named_modules() if n]
        shown = ", ".join(seen[:200]) + (f", ... and {len(seen) - 200} more" if len(seen) > 200 else "")
        raise LayerSelectionError(
            f"no supported layer (nn.Linear, nn.Conv2d) matches layers={include} exclude={exclude}; "
            f"the model's modules are: {shown or 'none'}; choose layer name patterns from these")
    return chosen


# ----- per-layer views -----------------------------------------------------------------------------
def _activation_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input rows of a layer per example and position: ``[B, T, in (+1)]``."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":
            padding = tuple(d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation))
        rows = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride).transpose(1, 2)
    else:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
    return rows


def _gradient_rows(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Output-gradient rows of a layer per example and position: ``[B, T, out]``."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


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


class _LayerRecorder:
    """Forward hooks that keep each selected layer's input and output tensors, so that one
    ``autograd.grad`` call per batch gives the output gradients (the input is the tensor autograd
    saves anyway; its rows are formed later, one layer at a time)."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.records: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.handles = []

    def __enter__(self):
        for name, module in self.layers.items():
            def hook(m, inputs, output, name=name):
                self.records.append((name, inputs[0].detach(), output))
            self.handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.records = []


def _layer_batches(task, model, layers, x, y, batch_size):
    """Per batch of the summed loss sum_i l_i(x_i, y_i), yield an iterator of ``(layer, (acts
    [B, T, in (+1)], grads [B, T, out]))`` with g = d l_i / d output (a layer called k times per
    example has its calls concatenated along T). Rows are formed one layer at a time as the
    iterator is consumed, so only one layer's (for a Conv2d, unfolded) input rows are held."""
    with _LayerRecorder(layers) as rec:
        for i in range(0, len(x), batch_size):
            rec.records = []
            loss = task.per_example_loss(model, x[i:i + batch_size], y[i:i + batch_size]).sum()
            grads = torch.autograd.grad(loss, [r[2] for r in rec.records], allow_unused=True)
            batch = _pair_records(rec.records, grads)
            rec.records = []
            del grads, loss  # nothing of this batch but ``batch`` outlives it
            yield _layer_rows(layers, batch)


def _pair_records(records, grads) -> dict[str, list]:
    """{layer: [(input, output gradient)]} of one batch's recorded calls (those that reached the
    loss); a function of its own so that no loop variable keeps a tensor of the batch alive."""
    batch: dict[str, list] = {}
    for (name, inputs, _), g in zip(records, grads):
        if g is not None:
            batch.setdefault(name, []).append((inputs, g.detach()))
    return batch


def _layer_rows(layers, batch: dict[str, list]):
    """``(layer, (acts, grads))`` per layer of ``batch`` ({layer: [(input, output gradient)]}),
    in chunks of examples whose input rows take about ``ROW_CHUNK_BYTES``, dropping each layer's
    tensors once its rows are formed. Consumers sum over examples, so chunks add up."""
    for name in list(batch):
        pairs = batch.pop(name)
        module = layers[name]
        per_example = sum(_activation_rows(module, a[:1]).numel() for a, _ in pairs) * 4
        step = max(1, ROW_CHUNK_BYTES // per_example)
        for j in range(0, len(pairs[0][0]), step):
            acts = [_activation_rows(module, a[j:j + step]) for a, _ in pairs]
            grads = [_gradient_rows(module, g[j:j + step]) for _, g in pairs]
            rows = (acts[0] if len(acts) == 1 else torch.cat(acts, 1),
                    grads[0] if len(grads) == 1 else torch.cat(grads, 1))
            del acts, grads
            yield name, rows
            del rows
        del pairs


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
    for batch in _layer_batches(task, model, layers, x, y, batch_size):
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
    for batch in _layer_batches(task, model, layers, x, y, batch_size):
        for name, (acts, grads) in batch:
            f = curv.layers[name]
            ra, rg = acts @ f.q_a, grads @ f.q_s  # [B, T, in], [B, T, out]
            del acts, grads  # before the next layer's rows are formed
            if ra.shape[1] == 1:
                sums[name] += (rg[:, 0].square().T @ ra[:, 0].square()).double()
                continue
            step = max(1, GRAD_CHUNK_BYTES // (4 * rg.shape[2] * ra.shape[2]))
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


def fit_curvature(task, model: nn.Module, cfg: CurvatureConfig, of: str = "the model") -> Curvature:
    """:func:`fit_curvature_uncached`, cached in ``task.cache_dir/curvature`` under a key of the
    task's fingerprint, the model's parameters and ``cfg``; ``of`` names the model in the message
    (``snapshot 2 of 5`` where several are fitted)."""
    key = content_hash({"task": task.fingerprint(), "model": model_digest(model), "cfg": asdict(cfg)})
    path = task.cache_dir / "curvature" / f"{task.name}-{cfg.strategy}-{key}.pt"

    fitted = []

    def compute():
        fitted.append(True)
        fisher = "empirical" if cfg.empirical_fisher else "true"
        task.log(f"fitting {cfg.strategy} curvature factors ({fisher} Fisher) of {of}")
        curv = fit_curvature_uncached(task, model, cfg)
        return {"layers": {n: asdict(f) for n, f in curv.layers.items()}, "n_examples": curv.n_examples}

    blob = load_or_compute(path, compute, f"{cfg.strategy} factors", task.log)
    return Curvature(cfg, {n: LayerFactors(**f) for n, f in blob["layers"].items()}, blob["n_examples"],
                     from_cache=not fitted)


# ----- scoring ---------------------------------------------------------------------------------------
def precondition_queries(task, model: nn.Module, curvature: Curvature, damping: float = 0.1,
                         damping_kind: str = "relative", strategy: str | None = None,
                         batch_size: int = 256, per_token: bool = False) -> torch.Tensor:
    """(F + lambda)^-1 grad phi_q for every query: ``[n_query, P]``, chunk by chunk (gradients
    of the task's observable; see :meth:`Curvature.precondition` for the arguments). With
    ``per_token`` (tasks with capability ``per_token``), the gradients of each query token's
    observable (``task.token_observables``) instead: ``[n_query, T, P]``. Each chunk of
    gradients is written into the result and preconditioned there, ``PRECONDITION_ROW_BYTES`` of
    rows at a time, so memory is the result, one chunk of gradients and one slice's
    temporaries."""
    q = task.query_split
    layout = GradientLayout(model)
    chunk = gradient_chunk(model, batch_size)
    device = next(model.parameters()).device
    if per_token:
        n_tokens = q.targets.shape[1]
        grads = iter_per_token_grads(task.token_observables, model, q.inputs, q.targets,
                                     max(1, chunk // n_tokens))
        out = torch.empty(len(q), n_tokens, layout.size, device=device)
    else:
        grads = iter_per_example_grads(task.observable, model, q.inputs, q.targets, chunk,
                                       held_bytes=4 * len(q) * layout.size)  # the result
        out = torch.empty(len(q), layout.size, device=device)
    start = 0
    for g in grads:
        out[start:start + len(g)] = g
        start += len(g)
        del g
    rows = out.view(-1, layout.size)
    step = max(1, PRECONDITION_ROW_BYTES // (rows.element_size() * layout.size))
    for lo in range(0, len(rows), step):
        rows[lo:lo + step] = curvature.precondition(rows[lo:lo + step], layout, damping,
                                                    damping_kind, strategy)
    return out


def pairwise_scores(task, model: nn.Module, preconditioned: torch.Tensor, batch_size: int = 256,
                    curvature: Curvature | None = None,
                    per_layer: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
    """Influence of each training example on each preconditioned query row.

    ``preconditioned [R, P]``: rows (F + lambda)^-1 grad phi (one per query; per-token queries are
    R = n_query x T rows, reshaped by the caller). Returns ``-(1/n) pre @ grad l_i`` for every
    training example i: ``[R, n_train]``, the harness's d phi / d beta_i.

    Without ``curvature``, every parameter counts and the training gradients come from
    :mod:`methods.gradients` (all layers of a chunk of at most ``batch_size`` examples at once).
    With ``curvature``, the rows must be zero outside its layers (as
    :func:`precondition_queries` makes them) and only those layers are visited, one at a time:
    per batch of :func:`methods.gradients.gradient_chunk` examples (at most ``batch_size``), one
    forward and backward pass of the summed loss gives each layer's inputs a and output
    gradients g, and the layer's per-example gradients G_i = sum_t g_it a_it^T are formed for at
    most as many examples as fit in the bytes of the rows (memory: the rows, the scores, one
    batch's layer inputs and one block of one layer's per-example gradients). ``per_layer``
    then returns ``{layer name: [R, n_train]}`` (they sum to the total) instead of the total.
    """
    split = task.train_split
    n = len(split)
    if curvature is None:
        if per_layer:
            raise ValueError("per_layer scores need the curvature whose layers split them")
        return train_grad_dots(task, model, preconditioned, batch_size).div_(-n)
    layers = {name: m for name, m in model.named_modules() if name in curvature.layers}
    layout = GradientLayout(model)
    rows = len(preconditioned)
    pre = {}  # views of the rows per layer: weight [R, out * in], bias [R, out] or None
    for name, f in curvature.layers.items():
        w0, wshape = layout.offsets[f.weight]
        bias = None
        if f.bias is not None:
            b0 = layout.offsets[f.bias][0]
            bias = preconditioned[:, b0:b0 + wshape[0]]
        pre[name] = (preconditioned[:, w0:w0 + wshape.numel()], bias)
    if per_layer:
        out = {name: torch.zeros(rows, n, dtype=preconditioned.dtype, device=preconditioned.device)
               for name in layers}
    else:
        out = torch.zeros(rows, n, dtype=preconditioned.dtype, device=preconditioned.device)
    budget = max(preconditioned.numel(), 1) * preconditioned.element_size()
    # as many examples per pass as a chunk of per-example gradients: a pass holds every layer's
    # inputs and output gradients, which for a convolutional network outweigh its parameters
    batch_size = gradient_chunk(model, batch_size)
    with eval_mode(model):
        for b, batch in enumerate(_layer_batches(task, model, layers, split.inputs, split.targets,
                                                 batch_size)):
            seen: dict[str, int] = {}
            for name, (acts, grads) in batch:
                w, bias = pre[name]
                if bias is not None:
                    acts = acts[..., :-1]  # the homogeneous coordinate: the bias column
                step = max(1, budget // (grads.shape[2] * acts.shape[2] * grads.element_size()))
                for j in range(0, len(acts), step):
                    g = grads[j:j + step]
                    gw = torch.bmm(g.transpose(1, 2), acts[j:j + step])  # [k, out, in]
                    block = w @ gw.reshape(len(gw), -1).T  # [R, k]
                    del gw
                    if bias is not None:
                        block.addmm_(bias, g.sum(1).T)
                    start = b * batch_size + seen.get(name, 0) + j
                    (out[name] if per_layer else out)[:, start:start + len(block.T)] += block
                    del g, block
                seen[name] = seen.get(name, 0) + len(acts)
                del acts, grads
    if per_layer:
        return {name: s.div_(-n) for name, s in out.items()}
    return out.div_(-n)
