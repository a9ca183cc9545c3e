"""Per-example gradients, shared by every gradient-based method.

Gradients are taken with ``torch.func`` (``vmap`` over ``grad`` of a single example's loss) with
respect to the model's trainable parameters, flattened in ``named_parameters`` order into rows of
a ``[B, P]`` matrix. Work is chunked over examples so memory is ``chunk x P`` at a time.
Functions with several outputs per example (per-token losses ``[B, T]``) give Jacobian rows
``[B, T, P]`` through :func:`iter_per_token_grads` (``vmap`` over ``jacrev``).

Scores against every training example (:func:`train_grad_dots`) stream the training gradients
in chunks of about ``GRAD_CHUNK_BYTES`` and dot them with the queries one parameter tensor at a
time, so memory is the query gradients, one chunk of training gradients and the scores.

Computing an example's gradient needs more than the gradient: the activations autograd keeps for
the backward pass and the backward pass's own intermediates (its *workspace*). On a small MLP that
is a fraction of the gradient; on a convolutional network it is about twice the gradient (the
CIFAR ResNet-9: 0.55 MiB of gradient, about 1.2 MiB of workspace per example). A chunk is
therefore computed in ``vmap`` calls over as many examples as keep their gradients and workspace
within ``WORKSPACE_FRACTION`` of the gradients the caller holds at once (:func:`micro_batch`),
and assembled in a buffer when that is fewer than the chunk; calls of one or two examples are plain
backward passes, one example at a time. Smaller calls cost time (on the ResNet-9 on one CPU
thread: 4 ms an example in calls of 14, 9 ms one at a time).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from tdabench.harness.plugin.training import num_params

#: bytes of float32 per-example gradients held at once when they are streamed
GRAD_CHUNK_BYTES = 8 * 2**20
#: bytes of a slice of per-example gradients cast to another dtype at once (float32 -> float64)
CAST_BLOCK_BYTES = 2**18
#: the gradients and workspace of one ``vmap`` call, at most this fraction of the gradients held
WORKSPACE_FRACTION = 0.5
#: calls of at most this many examples are made as plain backward passes, one example at a time
#: (on the CIFAR ResNet-9 on one CPU thread, 9 ms an example against 19 and 12 ms for ``vmap``
#: over 1 and 2 examples, 8 ms over 4; and one example's workspace in memory instead of two)
LOOP_MICRO = 2


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def flatten(tree: dict[str, torch.Tensor], batched: bool = True) -> torch.Tensor:
    if batched:
        return torch.cat([v.reshape(v.shape[0], -1) for v in tree.values()], dim=1)
    return torch.cat([v.reshape(-1) for v in tree.values()])


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def functional(model: nn.Module, params: dict, buffers: dict | None = None) -> Callable:
    """``model`` as a callable of its inputs with parameters ``params`` (for torch.func)."""
    buffers = dict(model.named_buffers()) if buffers is None else buffers
    return lambda x: functional_call(model, (params, buffers), (x,))


def workspace_bytes(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                    targets: torch.Tensor) -> int:
    """Estimated bytes that computing one example's gradient of ``fn`` needs beyond the gradient:
    twice the bytes autograd saves for the backward pass on the first example (the saved
    activations, and about as much again for the backward pass's intermediates; measured on the
    CIFAR ResNet-9: 0.62 MiB saved, 1.15 MiB of workspace). Parameters and buffers are not
    counted. Costs one forward pass of one example."""
    if len(inputs) == 0:
        return 0
    own = {t.untyped_storage().data_ptr() for t in itertools.chain(model.parameters(), model.buffers())}
    seen: dict[int, torch.UntypedStorage] = {}  # kept alive until the end, so no address repeats

    def pack(t: torch.Tensor) -> None:
        # the storage is kept, not the tensor: the backward pass never runs, and keeping a saved
        # output would tie it to its own graph in a reference cycle that outlives this call
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen.setdefault(storage.data_ptr(), storage)

    with eval_mode(model):
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            fn(model, inputs[:1].clone(), targets[:1].clone())
    return 2 * sum(storage.nbytes() for storage in seen.values())


def micro_batch(model: nn.Module, workspace: int, chunk: int, held_bytes: int = 0,
                buffered: bool = True) -> int:
    """Examples per ``vmap`` call when ``chunk`` examples' gradients are computed while the caller
    holds ``held_bytes`` of other gradients, given each example's ``workspace``
    (:func:`workspace_bytes`).

    ``buffered``: the chunk's gradients are held together (in one call's output, or in a buffer
    that smaller calls fill), so they count as held. A call over the whole chunk then adds its
    workspace only, and is made if that is within ``WORKSPACE_FRACTION`` of all gradients held;
    otherwise each call adds its own gradients (copied into the buffer) and workspace, and takes
    as many examples as fit in that fraction. Unbuffered (the caller writes each call's gradients
    into ``held_bytes`` it already holds), a call's gradients and workspace fit in the fraction."""
    first = next(iter(trainable_params(model).values()), None)
    grad_bytes = (first.element_size() if first is not None else 4) * num_params(model)
    if buffered:
        budget = WORKSPACE_FRACTION * (held_bytes + chunk * grad_bytes)
        if chunk * workspace <= budget:
            return chunk
    else:
        budget = WORKSPACE_FRACTION * held_bytes
    return int(max(1, min(chunk, budget // (grad_bytes + workspace))))


def _one_by_one(fn: Callable, model: nn.Module, names: list[str], x: torch.Tensor,
                y: torch.Tensor, out: torch.Tensor | None = None) -> dict[str, torch.Tensor] | None:
    """Per-example gradients of ``fn`` by a plain backward pass per example: with ``out``
    ``[len(x), P]``, written into its rows (memory: one example's gradient and workspace at a
    time); otherwise returned as ``{name: [len(x), ...]}``."""
    params = dict(model.named_parameters())
    rows = []
    with torch.enable_grad():
        for i in range(len(x)):
            loss = fn(model, x[i:i + 1], y[i:i + 1])[0]
            grads = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True,
                                        materialize_grads=True)  # zeros, as vmap(grad) gives
            del loss
            if out is None:
                rows.append(grads)
                continue
            col = 0
            for v in grads:
                out[i, col:col + v.numel()] = v.reshape(-1)
                col += v.numel()
            del grads
    if out is not None:
        return None
    if len(rows) == 1:
        return {k: g.unsqueeze(0) for k, g in zip(names, rows[0])}
    return {k: torch.stack([r[j] for r in rows]) for j, k in enumerate(names)}


def _iter_per_example(transform: Callable, fn: Callable, model: nn.Module, inputs: torch.Tensor,
                      targets: torch.Tensor, chunk: int, held_bytes: int = 0,
                      micro: int | None = None) -> Iterator[tuple[int, dict]]:
    """``vmap(transform(one example's fn))`` over chunks of examples, in eval mode: yields
    ``(chunk length, {parameter name: derivative})``.

    For ``grad``, each chunk is computed in calls of ``micro`` examples (by default
    :func:`micro_batch` for a buffered chunk beside ``held_bytes``); when that is fewer than the
    chunk, the calls fill a ``[chunk, P]`` buffer, yielded as ``{"": buffer}`` (columns in
    ``named_parameters`` order). Calls of at most ``LOOP_MICRO`` examples are plain backward
    passes, one example at a time."""
    params = trainable_params(model)
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def one(p, x, y):
        return fn(functional(model, p, buffers), x[None], y[None])[0]

    g = vmap(transform(one), in_dims=(None, 0, 0))
    if transform is not grad:
        micro = chunk
    elif micro is None:
        micro = micro_batch(model, workspace_bytes(fn, model, inputs, targets),
                            max(1, min(chunk, len(inputs))), held_bytes)
    with eval_mode(model):
        for i in range(0, len(inputs), chunk):
            x, y = inputs[i:i + chunk], targets[i:i + chunk]
            if micro >= len(x):
                yield len(x), (_one_by_one(fn, model, list(params), x, y)
                               if len(x) == 1 and transform is grad else g(params, x, y))
                continue
            flat = next(iter(params.values())).new_empty(len(x), num_params(model))
            if micro <= LOOP_MICRO:
                _one_by_one(fn, model, list(params), x, y, out=flat)
            else:
                for j in range(0, len(x), micro):
                    tree = g(params, x[j:j + micro], y[j:j + micro])
                    _write_rows(flat[j:j + micro], tree)
                    del tree
            yield len(x), {"": flat}
            del flat


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
                           targets: torch.Tensor, chunk: int = 256,
                           held_bytes: int = 0) -> Iterator[torch.Tensor]:
    """Yield ``[b, P]`` gradient chunks of ``fn(model, inputs, targets) -> [B]`` per example
    (``held_bytes``: other gradients the caller holds meanwhile, see :func:`micro_batch`).
    A yielded chunk is not referenced here once the next one is requested, so a consumer that
    drops it keeps one chunk alive at a time."""
    p = num_params(model)
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk, held_bytes):
        if list(tree) == [""]:
            flat = tree.pop("")
        else:
            flat = next(iter(tree.values())).new_empty(b, p)
            _write_rows(flat, tree)
        del tree
        yield flat
        del flat


def iter_per_example_parts(fn: Callable, model: nn.Module, inputs: torch.Tensor,
                           targets: torch.Tensor, chunk: int = 256,
                           held_bytes: int = 0) -> Iterator[list[torch.Tensor]]:
    """Like :func:`iter_per_example_grads`, without the flattening copy: yield each chunk as a
    list of ``[b, n_p]`` gradients, one per trainable parameter in ``named_parameters`` order
    (their concatenation along dim 1 is the ``[b, P]`` chunk; a single ``[b, P]`` part when the
    chunk was assembled in a buffer)."""
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk, held_bytes):
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


def chunk_bytes(device: torch.device | str, cpu_bytes: int) -> int:
    """Bytes of one chunk of streamed work on ``device``: ``cpu_bytes`` on a CPU (sized for its
    memory and caches); on a GPU a sixty-fourth of its memory, at least ``cpu_bytes`` and at most
    1 GiB, so that a chunk holds many examples and each kernel launch does real work. It depends
    on the GPU's size only, not on what is free at the time, so chunks (and the order of their
    sums) are the same in every run on that GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_bytes
    return max(cpu_bytes, min(2**30, torch.cuda.get_device_properties(device).total_memory // 64))


def gradient_chunk(model: nn.Module, batch_size: int) -> int:
    """Examples per chunk of per-example gradients: at most ``batch_size`` and about
    ``GRAD_CHUNK_BYTES`` of float32 gradients (more on a GPU, :func:`chunk_bytes`)."""
    first = next(model.parameters(), None)
    budget = chunk_bytes(first.device if first is not None else "cpu", GRAD_CHUNK_BYTES)
    return max(1, min(batch_size, budget // (4 * num_params(model))))


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
    held = queries.numel() * queries.element_size() + out.numel() * out.element_size()
    for b, tree in _iter_per_example(grad, task.per_example_loss, model, split.inputs, split.targets,
                                     gradient_chunk(model, batch_size), held):
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
    matrix and one chunk of at most ``chunk x P``, fewer where the chunk's workspace would exceed
    ``WORKSPACE_FRACTION`` of the matrix, see :func:`micro_batch`)."""
    first = next(iter(trainable_params(model).values()))
    out = first.new_empty(len(inputs), num_params(model))
    chunk = micro_batch(model, workspace_bytes(fn, model, inputs, targets), max(1, min(chunk, len(inputs))),
                        out.numel() * out.element_size(), buffered=False)
    if chunk <= LOOP_MICRO:
        with eval_mode(model):
            _one_by_one(fn, model, list(trainable_params(model)), inputs, targets, out=out)
        return out
    start = 0
    for b, tree in _iter_per_example(grad, fn, model, inputs, targets, chunk, micro=chunk):
        _write_rows(out[start:start + b], tree)
        start += b
        del tree
    return out


def train_grads(task, model, chunk: int = 256) -> torch.Tensor:
    """Gradients of each training example's loss l_i: ``[n_train, P]``."""
    s = task.train_split
    return per_example_grads(task.per_example_loss, model, s.inputs, s.targets, chunk)


def query_grads(task, model, chunk: int = 256, per_token: bool = False) -> torch.Tensor:
    """Gradients of each query's observable phi_q: ``[n_query, P]``, computed in chunks of at
    most ``chunk`` examples (and about ``GRAD_CHUNK_BYTES``). With ``per_token`` (tasks with
    capability ``per_token``), the gradients of each query token's observable
    (``task.token_observables``) instead: ``[n_query, T, P]``; their mean over tokens is the
    sequence's gradient when the observable is the mean token loss."""
    s = task.query_split
    if not per_token:
        return per_example_grads(task.observable, model, s.inputs, s.targets, gradient_chunk(model, chunk))
    n_tokens = s.targets.shape[1]
    out = None
    start = 0
    for g in iter_per_token_grads(task.token_observables, model, s.inputs, s.targets,
                                  max(1, gradient_chunk(model, chunk) // n_tokens)):
        if out is None:
            out = g.new_empty(len(s), n_tokens, g.shape[-1])
        out[start:start + len(g)] = g
        start += len(g)
        del g
    return out


def gives_token_scores(task) -> bool:
    """Whether a gradient method scores each query token on ``task``: it has per-token
    observables (capability ``per_token``) and the run reads per-token scores
    (``task.token_scores_wanted``; about T times the work of sequence scores)."""
    return "per_token" in task.capabilities and bool(getattr(task, "token_scores_wanted", False))
