"""Per-example gradients, shared by every gradient-based method.

Gradients are taken with ``torch.func`` (``vmap`` over ``grad`` of a single example's loss) with
respect to the model's trainable parameters, flattened in ``named_parameters`` order into rows of
a ``[B, P]`` matrix. Work is chunked over examples so memory is ``chunk x P`` at a time.
Functions with several outputs per example (per-token losses ``[B, T]``) give Jacobian rows
``[B, T, P]`` through :func:`iter_per_token_grads` (``vmap`` over ``jacrev``).

Scores against every training example (:func:`train_grad_dots`) stream the training gradients
in chunks of about ``GRAD_CHUNK_BYTES`` and dot them with the queries one parameter tensor at a
time, so memory is the query gradients, one chunk of training gradients and the scores.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from tdabench.harness.training import num_params

#: bytes of float32 per-example gradients held at once when they are streamed
GRAD_CHUNK_BYTES = 8 * 2**20
#: bytes of a slice of per-example gradients cast to another dtype at once (float32 -> float64)
CAST_BLOCK_BYTES = 2**18


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def flatten(tree: dict[str, torch.Tensor], batched: bool = True) -> torch.Tensor:
    if batched:
        return torch.cat([v.reshape(v.shape[0], -1) for v in tree.values()], dim=1)
    return torch.cat([v.reshape(-1) for v in tree.values()])


def functional(model: nn.Module, params: dict, buffers: dict | None = None) -> Callable:
    """``model`` as a callable of its inputs with parameters ``params`` (for torch.func)."""
    buffers = dict(model.named_buffers()) if buffers is None else buffers
    return lambda x: functional_call(model, (params, buffers), (x,))


def _iter_per_example(transform: Callable, fn: Callable, model: nn.Module, inputs: torch.Tensor,
                      targets: torch.Tensor, chunk: int) -> Iterator[tuple[int, dict]]:
    """``vmap(transform(one example's fn))`` over chunks of examples, in eval mode: yields
    ``(chunk length, {parameter name: derivative})``."""
    params = trainable_params(model)
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p, x, y):
        return fn(functional(model, p, buffers), x[None], y[None])[0]

    g = vmap(transform(one), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(inputs), chunk):
            x = inputs[i:i + chunk]
            yield len(x), g(params, x, targets[i:i + chunk])
    finally:
        model.train(was_training)


def _write_rows(out: torch.Tensor, tree: dict[str, torch.Tensor]) -> None:
    """Copy the per-example derivatives ``tree`` ({name: [b, ...]}) into the rows ``out [b, P]``
    (columns in ``named_parameters`` order), emptying ``tree`` as it goes so that each parameter's
    derivative is freed once copied."""
    col = 0
    for name in list(tree):
        v = tree.pop(name)
        n = v[0].numel()
        out[:, col:col + n] = v.reshape(len(out), n)
        col += n
        del v


def iter_per_example_grads(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                           targets: torch.Tensor, chunk: int = 256) -> Iterator[torch.Tensor]:
    """Yield ``[b, P]`` gradient chunks of ``fn(model, inputs, targets) -> [B]`` per example.
    A yielded chunk is not referenced here once the next one is requested, so a consumer that
    drops it keeps one chunk alive at a time."""
    p = num_params(model)
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk):
        flat = next(iter(tree.values())).new_empty(b, p)
        _write_rows(flat, tree)
        del tree
        yield flat
        del flat


def iter_per_example_parts(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                           targets: torch.Tensor, chunk: int = 256) -> Iterator[list[torch.Tensor]]:
    """Like :func:`iter_per_example_grads`, without the flattening copy: yield each chunk as a
    list of ``[b, n_p]`` gradients, one per trainable parameter in ``named_parameters`` order
    (their concatenation along dim 1 is the ``[b, P]`` chunk)."""
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk):
        parts = [v.reshape(b, -1) for v in tree.values()]
        del tree
        yield parts
        del parts


def iter_per_token_grads(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                         targets: torch.Tensor, chunk: int = 8) -> Iterator[torch.Tensor]:
    """Yield ``[b, T, P]`` chunks of the Jacobian of ``fn(model, inputs, targets) -> [B, T]``
    (e.g. per-token losses): row ``[i, t]`` is the gradient of example i's t-th output. Memory is
    ``chunk x T x P`` at a time, so ``chunk`` counts examples, not rows."""
    for b, tree in _iter_per_example(jacrev, fn, model, inputs, targets, chunk):
        rows = flatten({k: v.flatten(0, 1) for k, v in tree.items()})  # [b * T, P]
        del tree
        yield rows.view(b, -1, rows.shape[1])
        del rows


def gradient_chunk(model: nn.Module, batch_size: int) -> int:
    """Examples per chunk of per-example gradients: at most ``batch_size`` and about
    ``GRAD_CHUNK_BYTES`` of float32 gradients."""
    return max(1, min(batch_size, GRAD_CHUNK_BYTES // (4 * num_params(model))))


def train_grad_dots(task, model: nn.Module, queries: torch.Tensor, batch_size: int = 256,
                    normalize: bool = False, out: torch.Tensor | None = None,
                    alpha: float = 1.0) -> torch.Tensor:
    """``queries @ grad l_i`` for every training example i: ``[R, n_train]`` in the dtype of
    ``queries [R, P]`` (rows flattened in ``named_parameters`` order, as :func:`flatten`).

    Training gradients are computed in chunks of :func:`gradient_chunk` examples and never held
    all at once nor flattened: each chunk's parameter tensors are dotted with the matching
    columns of ``queries`` (cast to the queries' dtype in slices of at most ``CAST_BLOCK_BYTES``,
    so float64 queries never need a float64 copy of a whole chunk). With ``normalize``, each
    training gradient is divided by its norm (cosine similarity when the query rows are unit
    vectors). With ``out [R, n_train]`` given, ``alpha`` times the dot products are added to it
    (in place, no second score-sized buffer) and ``out`` is returned."""
    split = task.train_split
    if out is None:
        out = torch.zeros(len(queries), len(split), dtype=queries.dtype, device=queries.device)
    start = 0
    for b, tree in _iter_per_example(grad, task.per_example_loss, model, split.inputs, split.targets,
                                     gradient_chunk(model, batch_size)):
        block = torch.zeros(len(queries), b, dtype=queries.dtype, device=queries.device)
        sq = torch.zeros(b, dtype=queries.dtype, device=queries.device) if normalize else None
        col = 0
        for g in tree.values():
            g = g.reshape(b, -1)
            step = g.shape[1]
            if g.dtype != queries.dtype:
                step = max(1, CAST_BLOCK_BYTES // (b * queries.element_size()))
            for lo in range(0, g.shape[1], step):
                piece = g[:, lo:lo + step].to(queries.dtype)
                block.addmm_(queries[:, col + lo:col + lo + piece.shape[1]], piece.T)
                if normalize:
                    sq += piece.square().sum(1)
                del piece
            col += g.shape[1]
        if normalize:
            block /= sq.sqrt().clamp_min(1e-12)
        out[:, start:start + b].add_(block, alpha=alpha)
        start += b
        del tree, g, block  # before the next chunk is computed
    return out


def per_example_grads(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                      targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """All per-example gradients as one ``[B, P]`` matrix, filled chunk by chunk (memory: the
    matrix and one chunk of ``chunk x P``)."""
    first = next(iter(trainable_params(model).values()))
    out = first.new_empty(len(inputs), num_params(model))
    start = 0
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk):
        _write_rows(out[start:start + b], tree)
        start += b
        del tree
    return out


def train_grads(task, model, chunk: int = 256) -> torch.Tensor:
    """Gradients of each training example's loss l_i: ``[n_train, P]``."""
    s = task.train_split
    return per_example_grads(task.per_example_loss, model, s.inputs, s.targets, chunk)


def query_grads(task, model, chunk: int = 256) -> torch.Tensor:
    """Gradients of each query's observable phi_q: ``[n_query, P]``, computed in chunks of at
    most ``chunk`` examples (and about ``GRAD_CHUNK_BYTES``)."""
    s = task.query_split
    return per_example_grads(task.observable, model, s.inputs, s.targets, gradient_chunk(model, chunk))
