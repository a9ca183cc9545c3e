"""Layer selection and the per-layer rows Kronecker-factored curvature is built from
(:mod:`methods.curvature`): for each selected ``nn.Linear`` / ``nn.Conv2d``, the input rows a_it
``[B, T, in (+1)]`` and output-gradient rows g_it ``[B, T, out]`` of every example i and position t,
recorded with forward hooks during one backward pass of the summed training loss per batch."""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tdabench.methods.gradients import chunk_bytes

#: bytes of one layer's input rows (for a Conv2d, unfolded) formed at once while fitting factors
ROW_CHUNK_BYTES = 32 * 2**20


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


# ----- per-layer rows -----------------------------------------------------------------------------
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


def layer_batches(task, model, layers, x, y, batch_size):
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
    in chunks of examples whose input rows take about ``ROW_CHUNK_BYTES`` (more on a GPU), dropping each layer's
    tensors once its rows are formed. Consumers sum over examples, so chunks add up."""
    for name in list(batch):
        pairs = batch.pop(name)
        module = layers[name]
        per_example = sum(_activation_rows(module, a[:1]).numel() for a, _ in pairs) * 4
        step = max(1, chunk_bytes(pairs[0][0].device, ROW_CHUNK_BYTES) // per_example)
        for j in range(0, len(pairs[0][0]), step):
            acts = [_activation_rows(module, a[j:j + step]) for a, _ in pairs]
            grads = [_gradient_rows(module, g[j:j + step]) for _, g in pairs]
            rows = (acts[0] if len(acts) == 1 else torch.cat(acts, 1),
                    grads[0] if len(grads) == 1 else torch.cat(grads, 1))
            del acts, grads
            yield name, rows
            del rows
        del pairs
