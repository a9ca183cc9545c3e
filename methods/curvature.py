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

from dataclasses import asdict

import torch
from torch import nn

from tdabench.harness.core.storage import load_or_compute, to_device
from tdabench.methods.curvature_factors import (
    DAMPING_KINDS,
    STRATEGIES,
    Curvature,
    CurvatureConfig,
    GradientLayout,
    LayerFactors,
    correct_eigenvalues,
    fit_curvature_uncached,
    model_digest,
)
from tdabench.methods.curvature_layers import LayerSelectionError, layer_batches, select_layers
from tdabench.methods.gradients import (
    eval_mode,
    gradient_chunk,
    iter_per_example_grads,
    query_grads,
    train_grad_dots,
)

__all__ = ["DAMPING_KINDS", "STRATEGIES", "Curvature", "CurvatureConfig", "GradientLayout", "LayerFactors",
           "LayerSelectionError", "correct_eigenvalues", "fit_curvature", "fit_curvature_uncached",
           "model_digest", "pairwise_scores", "precondition_queries", "select_layers"]

#: bytes of flat gradient rows preconditioned at once (their temporaries are a few times this)
PRECONDITION_ROW_BYTES = 2**18


def fit_curvature(task, model: nn.Module, cfg: CurvatureConfig, of: str = "the model") -> Curvature:
    """:func:`fit_curvature_uncached`, cached in the task's ``curvature`` folder under a key of the
    model's parameters and ``cfg`` (``task.cache_path`` adds the task's own key); ``of`` names the
    model in the message (``snapshot 2 of 5`` where several are fitted)."""
    path = task.cache_path("curvature", cfg.strategy, {"model": model_digest(model), "cfg": asdict(cfg)})

    fitted = []

    def compute():
        fitted.append(True)
        fisher = "empirical" if cfg.empirical_fisher else "true"
        task.log(f"fitting {cfg.strategy} curvature factors ({fisher} Fisher) of {of}")
        curv = fit_curvature_uncached(task, model, cfg)
        return {"layers": {n: asdict(f) for n, f in curv.layers.items()}, "n_examples": curv.n_examples}

    # read from the cache onto the CPU: back to the device the factors are used on
    blob = to_device(load_or_compute(path, compute, f"{cfg.strategy} factors", task.log), task.device)
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
        out = query_grads(task, model, batch_size, per_token=True)
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
        for b, batch in enumerate(layer_batches(task, model, layers, split.inputs, split.targets,
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
