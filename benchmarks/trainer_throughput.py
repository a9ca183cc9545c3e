"""How close the CIFAR trainer runs to this CPU's own matrix-multiply peak.

Measures, in one process on ``--threads`` threads: the matrix-multiply peak of this CPU in float32
and in bfloat16 (square products of ``--matmul`` rows, the best of a few timed repetitions), the
FLOPs of one ResNet-9 training step (forward, backward and the optimizer, counted by torch's
FLOP counter), and the CIFAR trainer's achieved FLOP/s over a short training of the reference
recipe (``recipe=fast`` by default) at ``--width``, timed as process CPU time. Prints the achieved
rate as a fraction of both peaks, the ground-truth models per CPU hour at 5,000 training images
(half-subset models of 2,500 images), and where the time goes: the share of the training's CPU
time in convolutions, batch norm, elementwise work, the optimizer and the data pipeline (torch's
profiler over a few steps).

    python benchmarks/trainer_throughput.py [--recipe fast] [--width 16] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from tdabench.harness.engine.compose import compose
from tdabench.harness.plugin.training import Recipe, train


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...], seconds: float = 1.0) -> float:
    """FLOP/s of square products in ``dtype``: the best over ``sizes`` (n x n by n x n) of the
    fastest of the repetitions that fit in ``seconds`` of CPU time per size (at least two)."""
    best_rate = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        best, start, reps = float("inf"), time.process_time(), 0
        while reps < 2 or time.process_time() - start < seconds:
            t0 = time.process_time()
            a @ b
            best, reps = min(best, time.process_time() - t0), reps + 1
        best_rate = max(best_rate, 2 * n**3 / max(best, 1e-9))
    return best_rate


def step_flops(model, loss_fn, x, y, recipe: Recipe) -> int:
    """FLOPs of one training step (forward, backward, SGD update) on the batch ``x``."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=recipe.momentum, nesterov=recipe.nesterov)
    with FlopCounterMode(display=False) as counter:
        loss = loss_fn(model, recipe.layout(x), y).mean()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


CATEGORIES = (("convolution", ("conv", "mkldnn")), ("batch norm", ("batch_norm",)),
              ("pooling", ("pool",)), ("optimizer", ("sgd", "foreach", "add_", "mul_", "lerp")),
              ("data and augmentation", ("index", "flip", "where", "rand", "pad", "gather", "permute",
                                         "contiguous", "copy_", "clone")),
              ("loss and linear", ("cross_entropy", "log_softmax", "nll", "mm", "addmm", "linear")))


def where_time_goes(task, recipe: Recipe, steps: int) -> dict[str, float]:
    """Share of the self CPU time of ``steps`` training steps by kind of operator."""
    from torch.profiler import ProfilerActivity, profile

    short = Recipe(**{**recipe.__dict__, "epochs": 1})
    idx = torch.arange(min(task.n_train, steps * recipe.batch_size))
    split = task.train_split
    model = task.new_model(0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model, task.per_example_loss, split.inputs, split.targets, idx, short, 0, augment=task.augment)
    shares: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        name = e.key.lower()
        kind = next((k for k, keys in CATEGORIES if any(s in name for s in keys)), "other operators")
        shares[kind] += e.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="fast", help="a preset of conf/recipe/, or none")
    ap.add_argument("--width", type=int, default=None, help="default: the recipe's (or the task's)")
    ap.add_argument("--steps", type=int, default=30, help="training steps timed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--matmul", default="256,512,1024", help="sizes of the square products timed")
    ap.add_argument("--n-train", type=int, default=5000, help="training images the models per hour are for")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    over = ["task=cifar2_resnet9", "task.n_train=1000", "wandb.mode=disabled"]
    over += [f"recipe={args.recipe}"] if args.recipe != "none" else []
    cfg = compose(over + ([f"task.width={args.width}"] if args.width else []))
    width = cfg["task"]["width"]
    from tdabench.harness.engine.run import prepare

    task, _ = prepare(cfg)
    recipe = task.recipe()
    split = task.train_split
    sizes = tuple(int(n) for n in args.matmul.split(","))
    peak32 = matmul_peak(torch.float32, sizes)
    peak16 = matmul_peak(torch.bfloat16, sizes)
    print(f"matrix-multiply peak ({args.threads} thread(s), best of {args.matmul}): float32 {peak32 / 1e9:.1f} "
          f"GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")

    x, y = split.inputs[:recipe.batch_size], split.targets[:recipe.batch_size]
    flops = step_flops(task.new_model(0), task.per_example_loss, x, y, recipe)
    per_image = flops / recipe.batch_size
    print(f"one training step ({recipe.batch_size} images, width {width}): {flops / 1e9:.2f} GFLOP, "
          f"{per_image / 1e6:.0f} MFLOP per image")

    n = min(task.n_train, args.steps * recipe.batch_size)
    timed = Recipe(**{**recipe.__dict__, "epochs": 1})
    model = task.new_model(0)
    t0 = time.process_time()
    train(model, task.per_example_loss, split.inputs, split.targets, torch.arange(n), timed, 0,
          augment=task.augment)
    cpu_s = time.process_time() - t0
    achieved = per_image * n / cpu_s
    dtype_peak = peak16 if recipe.precision == "bf16" else peak32
    print(f"trainer ({args.recipe}, {recipe.precision}, channels_last={recipe.channels_last}): "
          f"{achieved / 1e9:.1f} GFLOP/s, {1e3 * cpu_s / n:.2f} ms per image")
    print(f"fraction of peak: {achieved / dtype_peak:.2f} of the {recipe.precision} matrix-multiply peak "
          f"({100 * achieved / peak32:.0f}% of float32's, {100 * achieved / peak16:.0f}% of bf16's)")
    half = args.n_train // 2
    model_s = cpu_s / n * half * recipe.epochs
    print(f"ground truth at {args.n_train} images: {model_s:.0f} CPU s per half-subset model "
          f"({recipe.epochs} epochs of {half} images), {3600 / model_s:.0f} models per CPU hour per thread")
    shares = where_time_goes(task, recipe, min(args.steps, 10))
    print("where the training time goes: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items()))


if __name__ == "__main__":
    main()
