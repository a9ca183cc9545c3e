"""A plain minibatch SGD training loop shared by the tasks' recipes, and its exact replay.

Training minimizes the mean loss of each minibatch with SGD + momentum, decoupled from data order
by a seeded generator so the same seed gives the same model. Optionally returns snapshots along
the way (a training trajectory for unrolling methods). With per-example weights beta (``weights``)
each minibatch's loss is ``sum_{i in batch} beta_i l_i / B`` (B the batch size), so beta = 1 is
plain training and beta_i = 0 removes example i from the same batches.

:class:`Replay` replays one training run step by step, bit for bit (same data order, same
augmentation draws, same SGD arithmetic as ``torch.optim.SGD``), as a differentiable function of
the parameters, the momentum buffers and the minibatch's weights beta: what exact unrolling needs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass
class Recipe:
    """Optimizer, schedule and arithmetic of training. ``schedule`` is ``constant``, ``cosine`` or
    ``onecycle`` (linear warm-up over ``warmup`` of the steps, then linear decay to zero).
    ``nesterov`` uses Nesterov momentum. ``precision`` ``bf16`` runs the training steps' forward
    pass under bfloat16 autocast (the parameters, their gradients and the optimizer stay float32;
    everything outside training is float32). ``channels_last`` trains image models with 4-D
    tensors in the channels-last memory layout (faster convolutions on CPUs and GPUs); the trained
    model is handed back in the default layout. ``min_steps_per_epoch`` shrinks the minibatch of a
    run on few examples to at most ``ceil(n / min_steps_per_epoch)``, so that each epoch takes
    about that many steps (:meth:`batch_for`; 1: the batch is ``batch_size`` whatever the size)."""

    epochs: int = 30
    batch_size: int = 32
    min_steps_per_epoch: int = 1
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.2
    nesterov: bool = False
    precision: str = "float32"
    channels_last: bool = False

    def batch_for(self, n: int) -> int:
        """The minibatch size of a run on ``n`` examples: ``batch_size``, or
        ``ceil(n / min_steps_per_epoch)`` where that is smaller."""
        return max(1, min(self.batch_size, math.ceil(n / self.min_steps_per_epoch)))

    def steps_per_epoch(self, n: int) -> int:
        return max(1, math.ceil(n / self.batch_for(n)))

    def autocast(self, device: torch.device):
        """The context of a training step's forward pass: bfloat16 autocast or nothing."""
        if self.precision == "bf16":
            return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the training's memory layout (channels-last for 4-D tensors if set)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

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
PRECISIONS = ("float32", "bf16")


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
        "min_steps_per_epoch": (lambda v: count(v) and v >= 1, "a positive integer"),
        "lr": (lambda v: num(v) and v > 0, "a positive number (learning rate)"),
        "momentum": (lambda v: num(v) and 0 <= v < 1, "a number in [0, 1)"),
        "weight_decay": (lambda v: num(v) and v >= 0, "a non-negative number"),
        "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
        "warmup": (lambda v: num(v) and 0 <= v < 1, "a fraction of the steps in [0, 1)"),
        "nesterov": (lambda v: isinstance(v, bool), "true or false"),
        "precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        "channels_last": (lambda v: isinstance(v, bool), "true or false"),
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


def minibatches(idx: torch.Tensor, recipe: Recipe, gen: torch.Generator, inputs: torch.Tensor,
                targets: torch.Tensor, augment: Callable | None = None):
    """The minibatches of one training run, in order: yields ``(step, batch, x, y, lr)`` with
    ``batch`` the example indices [B], ``x`` the (augmented) inputs, ``y`` the targets and ``lr``
    the step's learning rate. The order and the augmentation draws come from ``gen`` alone."""
    n = len(idx)
    size, steps_per_epoch = recipe.batch_for(n), recipe.steps_per_epoch(n)
    total = recipe.epochs * steps_per_epoch
    step = 0
    for _ in range(recipe.epochs):
        order = idx[torch.randperm(n, generator=gen)]
        for b in range(steps_per_epoch):
            batch = order[b * size:(b + 1) * size]
            x, y = inputs[batch], targets[batch]
            if augment is not None:
                x = augment(x, gen)
            yield step, batch, x, y, recipe.lr_at(step, total)
            step += 1


def total_steps(n: int, recipe: Recipe) -> int:
    """Optimizer steps of a run on ``n`` examples."""
    return recipe.epochs * recipe.steps_per_epoch(n)


def batch_loss(losses: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
    """The minibatch objective: mean of ``losses`` [B], or ``sum(beta * losses) / B``."""
    return losses.mean() if beta is None else (beta * losses).sum() / len(losses)


#: training reads its losses back from the device (a host synchronization) every this many steps
#: and stops there if one is not finite
CHECK_EVERY = 16


@dataclass
class TrainResult:
    model: nn.Module
    trajectory: list[Snapshot] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train(model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor,
          idx: torch.Tensor, recipe: Recipe, seed: int, snapshots: int = 0,
          augment: Callable | None = None, weights: torch.Tensor | None = None) -> TrainResult:
    """Train ``model`` in place on ``inputs[idx]``, ``targets[idx]``.

    ``loss_fn(model, x, y)`` returns per-example losses [B]. ``snapshots`` > 0 splits training into
    that many equal segments and records the parameters at the end of each. ``weights`` (float
    [len(inputs)], indexed like ``inputs``) weighs each example's loss in its minibatch (see
    :func:`batch_loss`); None is plain training.
    """
    gen = torch.Generator().manual_seed(seed)
    if recipe.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    total = total_steps(len(idx), recipe)
    bounds = [round(total * (s + 1) / snapshots) for s in range(snapshots)] if snapshots else []
    result = TrainResult(model)
    seg_lrs: list[float] = []
    losses: list[torch.Tensor] = []  # kept on the device; read back every CHECK_EVERY steps

    def check(upto: int) -> None:
        values = torch.stack(losses[len(result.losses):upto]).tolist() if upto > len(result.losses) else []
        for i, v in enumerate(values, start=len(result.losses)):
            if not math.isfinite(v):
                raise FloatingPointError(f"training loss became {v} at step {i}; lower the task's "
                                         "learning rate or add weight decay")
        result.losses.extend(values)

    model.train()
    for step, batch, x, y, lr in minibatches(idx, recipe, gen, inputs, targets, augment):
        for group in opt.param_groups:
            group["lr"] = lr
        with recipe.autocast(x.device):
            step_losses = loss_fn(model, recipe.layout(x), y)
        step_losses = step_losses.float() if recipe.precision == "bf16" else step_losses  # float64 stays
        loss = batch_loss(step_losses, None if weights is None else weights[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if len(losses) % CHECK_EVERY == 0:
            check(len(losses))
        seg_lrs.append(lr)
        if bounds and step + 1 == bounds[len(result.trajectory)]:
            state = {k: v.detach().clone(memory_format=torch.contiguous_format)
                     for k, v in model.state_dict().items()}
            result.trajectory.append(Snapshot(state, sum(seg_lrs) / len(seg_lrs), len(seg_lrs)))
            seg_lrs = []
    check(len(losses))
    if recipe.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return result


def train_stacked(model: nn.Module, states: list[dict], loss_fn: Callable, inputs: torch.Tensor,
                  targets: torch.Tensor, idx: torch.Tensor, recipe: Recipe,
                  seeds: list[int], weights: torch.Tensor | None = None,
                  augment: Callable | None = None) -> dict[str, torch.Tensor]:
    """Train N models at once with ``torch.func`` and return their stacked states (parameters and
    buffers, each [N, ...]).

    ``states[j]`` is model j's initial state, ``idx[j]`` ([N, s]) its training subset and
    ``seeds[j]`` its data-order seed. Every model follows exactly the schedule :func:`train` would
    give it: the same minibatch order and augmentation draws (``augment(x, gens)`` augments the
    N models' minibatches [N, B, ...], model j's from its own generator ``gens[j]``, as
    :meth:`~tdabench.harness.plugin.task.Task.augment_many`), SGD with momentum and weight decay
    as ``torch.optim.SGD``, and batch-norm running statistics updated per model, so the results
    equal N separate calls to :func:`train` up to floating-point reassociation (and the memory
    layout: inputs stay in the default layout). Not for models that draw random numbers in
    their forward pass (dropout). ``weights`` ([N, len(inputs)]) are model j's per-example weights
    as in :func:`train`; ``recipe.channels_last`` applies to one model at a time only.
    """
    from torch.func import functional_call, grad, vmap

    names = [k for k, _ in model.named_parameters()]
    params = {k: torch.stack([s[k] for s in states]).clone() for k in names}
    # buffers per model (batch-norm running statistics change in training, in place, per model)
    buffers = {k: torch.stack([s[k] for s in states]).clone() for k, _ in model.named_buffers()}
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    n_models, n = idx.shape
    size, steps_per_epoch = recipe.batch_for(n), recipe.steps_per_epoch(n)
    total = recipe.epochs * steps_per_epoch

    def loss_of(p, b, x, y, w=None):
        return batch_loss(loss_fn(lambda inp: functional_call(model, (p, b), (inp,)), x, y), w)

    step_grad = vmap(grad(loss_of))
    step = 0
    model.train()
    # batch norm's batched kernel wants its input in its statistics' dtype: under bf16 autocast it
    # normalizes in float32 (the next convolution casts back; one model at a time keeps batch norm
    # and the residual sums in bf16, so together is a little more precise and holds more memory)
    hooks = [m.register_forward_pre_hook(lambda _, args: (args[0].float(), *args[1:]))
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             ] if recipe.precision == "bf16" else []
    try:
        for _ in range(recipe.epochs):
            order = torch.stack([idx[j][torch.randperm(n, generator=gens[j])] for j in range(n_models)])
            for b in range(steps_per_epoch):
                batch = order[:, b * size:(b + 1) * size]
                x = inputs[batch] if augment is None else augment(inputs[batch], gens)
                with recipe.autocast(inputs.device):
                    if weights is None:
                        g = step_grad(params, buffers, x, targets[batch])
                    else:
                        g = step_grad(params, buffers, x, targets[batch], torch.gather(weights, 1, batch))
                lr = recipe.lr_at(step, total)
                with torch.no_grad():
                    for k in names:
                        d = g[k] + recipe.weight_decay * params[k] if recipe.weight_decay else g[k]
                        bufs[k] = recipe.momentum * bufs[k] + d if step else d
                        params[k] = params[k] - lr * (d + recipe.momentum * bufs[k] if recipe.nesterov else bufs[k])
                step += 1
    finally:
        for hook in hooks:
            hook.remove()
    model.eval()
    for k, v in params.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError("training diverged (non-finite parameters); lower the task's "
                                     "learning rate or add weight decay")
    return params | buffers


class Replay:
    """One training run of :func:`train`, replayable step by step and differentiable.

    Built from the same arguments as :func:`train` (initial state, per-example loss, data, subset
    ``idx``, recipe, seed, augmentation). ``step(t, params, momentum, buffers, beta)`` applies
    optimizer step t exactly as :func:`train` does (same minibatch, same augmentation draw, the
    arithmetic of ``torch.optim.SGD`` with momentum and weight decay), as a function of the
    parameters and momentum buffers before the step and of the minibatch's weights ``beta`` [B],
    so reverse mode can go through it (``create_graph=True``). Buffers (batch-norm running
    statistics) are updated in place and are not differentiated. Replaying every step from
    :meth:`initial` reproduces the trained model bit for bit.
    """

    def __init__(self, model: nn.Module, init_state: dict, loss_fn: Callable, inputs: torch.Tensor,
                 targets: torch.Tensor, idx: torch.Tensor, recipe: Recipe, seed: int,
                 augment: Callable | None = None):
        self.model = model
        self.init_state = {k: v.detach().clone() for k, v in init_state.items()}
        self.loss_fn = loss_fn
        self.inputs, self.targets = inputs, targets
        self.recipe = recipe
        self.names = [k for k, v in model.named_parameters() if v.requires_grad]
        # every buffer, persistent or not (e.g. rotary frequencies), as the model holds it
        self.init_buffers = {k: self.init_state.get(k, v).detach().clone()
                             for k, v in model.named_buffers()}
        # the generator state before each step's draws, so any step's minibatch can be rebuilt
        gen = torch.Generator().manual_seed(seed)
        self._plan: list[tuple[torch.Tensor, float, torch.Tensor | None]] = []
        aug_states: list[torch.Tensor | None] = []

        def recording(x, g):
            aug_states.append(g.get_state())
            return augment(x, g)

        for _, batch, _, _, lr in minibatches(idx, recipe, gen, inputs, targets,
                                              recording if augment is not None else None):
            self._plan.append((batch, lr, aug_states[-1] if augment is not None else None))
        self.augment = augment
        self.steps = len(self._plan)

    def initial(self) -> tuple[dict, dict, dict]:
        """(parameters, momentum buffers (zeros), model buffers) before step 0."""
        params = {k: self.recipe.layout(self.init_state[k].clone()) for k in self.names}
        momentum = {k: torch.zeros_like(v) for k, v in params.items()}
        buffers = {k: v.clone() for k, v in self.init_buffers.items()}
        return params, momentum, buffers

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step t's example indices [B], (augmented) inputs and targets, as training saw them."""
        batch, _, aug_state = self._plan[t]
        x, y = self.inputs[batch], self.targets[batch]
        if aug_state is not None:
            x = self.augment(x, torch.Generator().set_state(aug_state))
        return batch, x, y

    def lr(self, t: int) -> float:
        return self._plan[t][1]

    def call(self, params: dict, buffers: dict, inputs: torch.Tensor, training: bool) -> torch.Tensor:
        """The model's output on ``inputs`` with ``params`` and ``buffers`` (train or eval mode)."""
        from torch.func import functional_call

        was = self.model.training
        self.model.train(training)
        try:
            return functional_call(self.model, (params, buffers), (inputs,))
        finally:
            self.model.train(was)

    def step(self, t: int, params: dict, momentum: dict, buffers: dict,
             beta: torch.Tensor | None = None, create_graph: bool = False) -> tuple[dict, dict]:
        """Optimizer step t: returns (parameters, momentum buffers) after it. ``beta`` [B] weighs
        the minibatch's losses (None: all 1, bit-identical to training)."""
        batch, x, y = self.batch(t)
        lr, mu, wd = self.lr(t), self.recipe.momentum, self.recipe.weight_decay
        with self.recipe.autocast(x.device):
            losses = self.loss_fn(lambda inp: self.call(params, buffers, inp, True), self.recipe.layout(x), y)
        losses = losses.float() if self.recipe.precision == "bf16" else losses  # as training does
        grads = torch.autograd.grad(batch_loss(losses, beta), [params[k] for k in self.names],
                                    create_graph=create_graph)
        new_params, new_momentum = {}, {}
        for k, g in zip(self.names, grads):
            d = g.add(params[k], alpha=wd) if wd else g
            buf = d
            if mu:
                buf = d if t == 0 else momentum[k].mul(mu).add(d)
                d = d.add(buf, alpha=mu) if self.recipe.nesterov else buf
            new_momentum[k] = buf
            new_params[k] = params[k].add(d, alpha=-lr)
        return new_params, new_momentum

    def run(self, until: int | None = None) -> tuple[dict, dict, dict]:
        """Replay steps [0, until) without tracking gradients: (params, momentum, buffers)."""
        params, momentum, buffers = self.initial()
        for t in range(self.steps if until is None else until):
            params = {k: v.requires_grad_() for k, v in params.items()}
            params, momentum = self.step(t, params, momentum, buffers)
            params = {k: v.detach() for k, v in params.items()}
        return params, momentum, buffers
