"""A plain minibatch SGD training loop shared by the tasks' recipes.

Training minimizes ``sum_i w_i * loss_i / sum_i w_i`` over the selected examples (mean loss), with
SGD + momentum, decoupled from data order by a seeded generator so the same seed gives the same
model. Optionally returns snapshots along the way (a training trajectory for unrolling methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class Recipe:
    """Optimizer and schedule. ``schedule`` is ``constant``, ``cosine`` or ``onecycle`` (linear
    warm-up over ``warmup`` of the steps, then linear decay to zero)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.2

    def lr_at(self, step: int, total: int) -> float:
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            return 0.5 * self.lr * (1 + math.cos(math.pi * step / total))
        if self.schedule == "onecycle":
            peak = max(1, int(self.warmup * total))
            if step < peak:
                return self.lr * (step + 1) / peak
            return self.lr * max(0.0, (total - step) / max(1, total - peak))
        raise ValueError(f"unknown schedule {self.schedule!r}; use constant, cosine or onecycle")


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
SCHEDULES = ("constant", "cosine", "onecycle")


def recipe_problems(values, key: str = "task.recipe") -> list[str]:
    """Problems with a recipe config ``values`` (a mapping of :class:`Recipe` fields), one line
    each naming ``key.field``, the value and the allowed range."""
    if values is None:
        return []
    if not isinstance(values, dict):
        return [f"{key}={values!r} must be a mapping of recipe settings ({', '.join(Recipe.__dataclass_fields__)})"]

    def num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def count(v):
        return isinstance(v, int) and not isinstance(v, bool)

    rules = {
        "epochs": (lambda v: count(v) and v >= 1, "a positive integer"),
        "batch_size": (lambda v: count(v) and v >= 1, "a positive integer"),
        "lr": (lambda v: num(v) and v > 0, "a positive number (learning rate)"),
        "momentum": (lambda v: num(v) and 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": (lambda v: num(v) and v >= 0, "a non-negative number"),
        "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        "warmup": (lambda v: num(v) and 0 <= v < 1, "a fraction of the steps in [0, 1)"),
    }
    problems = []
    for name, value in values.items():
        if name not in rules:
            problems.append(f"{key}.{name} is not a recipe setting; the settings are {', '.join(rules)}")
        elif not rules[name][0](value):
            problems.append(f"{key}.{name}={value!r} must be {rules[name][1]}")
    return problems


@dataclass
class Snapshot:
    """Parameters at the end of one trajectory segment, with the segment's mean learning rate and
    its number of optimizer steps."""

    state: dict
    lr: float
    steps: int


@dataclass
class TrainResult:
    model: nn.Module
    trajectory: list[Snapshot] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor,
          idx: torch.Tensor, recipe: Recipe, seed: int, snapshots: int = 0,
          augment: Callable | None = None) -> TrainResult:
    """Train ``model`` in place on ``inputs[idx]``, ``targets[idx]``.

    ``loss_fn(model, x, y)`` returns per-example losses [B]. ``snapshots`` > 0 splits training into
    that many equal segments and records the parameters at the end of each.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    n = len(idx)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.epochs * steps_per_epoch
    bounds = [round(total * (s + 1) / snapshots) for s in range(snapshots)] if snapshots else []
    result = TrainResult(model)
    seg_lrs: list[float] = []
    step = 0
    model.train()
    for _ in range(recipe.epochs):
        order = idx[torch.randperm(n, generator=gen)]
        for b in range(steps_per_epoch):
            batch = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x, y = inputs[batch], targets[batch]
            if augment is not None:
                x = augment(x, gen)
            lr = recipe.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(model, x, y).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at step {step}; lower the task's learning "
                    "rate or add weight decay"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
            seg_lrs.append(lr)
            step += 1
            if bounds and step == bounds[len(result.trajectory)]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                result.trajectory.append(Snapshot(state, sum(seg_lrs) / len(seg_lrs), len(seg_lrs)))
                seg_lrs = []
    model.eval()
    return result


def train_stacked(model: nn.Module, states: list[dict], loss_fn: Callable, inputs: torch.Tensor,
                  targets: torch.Tensor, idx: torch.Tensor, recipe: Recipe,
                  seeds: list[int]) -> dict[str, torch.Tensor]:
    """Train N models at once with ``torch.func`` and return their stacked parameters.

    ``states[j]`` is model j's initial state, ``idx[j]`` ([N, s]) its training subset and
    ``seeds[j]`` its data-order seed. Every model follows exactly the schedule :func:`train` would
    give it (same minibatch order, SGD with momentum and weight decay as ``torch.optim.SGD``), so
    the results equal N separate calls to :func:`train` up to floating-point reassociation. Only
    for models without buffers that change in training (no running batch-norm statistics) and
    tasks without augmentation.
    """
    from torch.func import functional_call, grad, vmap

    names = [k for k, _ in model.named_parameters()]
    params = {k: torch.stack([s[k] for s in states]).clone() for k in names}
    buffers = {k: v for k, v in model.named_buffers()}
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n_models, n = idx.shape
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    total = recipe.epochs * steps_per_epoch

    def loss_of(p, x, y):
        return loss_fn(lambda inp: functional_call(model, (p, buffers), (inp,)), x, y).mean()

    step_grad = vmap(grad(loss_of))
    step = 0
    model.train()
    for _ in range(recipe.epochs):
        order = torch.stack([idx[j][torch.randperm(n, generator=gens[j])] for j in range(n_models)])
        for b in range(steps_per_epoch):
            batch = order[:, b * recipe.batch_size:(b + 1) * recipe.batch_size]
            g = step_grad(params, inputs[batch], targets[batch])
            lr = recipe.lr_at(step, total)
            with torch.no_grad():
                for k in names:
                    d = g[k] + recipe.weight_decay * params[k] if recipe.weight_decay else g[k]
                    bufs[k] = recipe.momentum * bufs[k] + d if step else d
                    params[k] = params[k] - lr * bufs[k]
            step += 1
    model.eval()
    for k, v in params.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError("training diverged (non-finite parameters); lower the task's "
                                     "learning rate or add weight decay")
    return params
