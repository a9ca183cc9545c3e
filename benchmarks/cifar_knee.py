"""Test accuracy against width and epochs of a CIFAR training recipe, with its CPU cost.

Trains the reference model of ``cifar2_resnet9`` (cat vs dog; ``--task`` for another) at
``--n-train`` images for every (width, epochs) of the grid with a recipe preset
(``conf/recipe/``), and prints one row each: test accuracy, CPU seconds of the training (the
process's CPU time, so other work on a shared machine does not count) and the CPU seconds of one
ground-truth retraining on half the images (alpha = 0.5) with the models per CPU hour that gives.

    python benchmarks/cifar_knee.py [--recipe fast] [--widths 8,12,16] [--epochs 4,8]
        [--n-train 5000] [--threads 1] [--set task.recipe.lr=0.2 ...] [--out table.md]
"""

from __future__ import annotations

import argparse
import time

import torch

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import prepare


def train_once(overrides: list[str]) -> dict:
    """Train the reference model of the composed config (nothing cached): accuracy and CPU s."""
    task, _ = prepare(compose(overrides + ["wandb.mode=disabled", "method=grad_dot"]))
    task.train_split  # decode the images before timing
    t0 = time.process_time()
    model = task.fit_model(torch.arange(task.n_train), task.seed).model
    cpu_s = time.process_time() - t0
    return {"test_acc": task.evaluate(model)["test_acc"], "cpu_s": cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="cifar2_resnet9")
    ap.add_argument("--recipe", default="fast", help="a preset of conf/recipe/, or none (the task's own)")
    ap.add_argument("--widths", default="8,12,16")
    ap.add_argument("--epochs", default="4,8")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="further overrides (task.recipe.lr=0.2 ...)")
    ap.add_argument("--out", default=None, help="append the rows to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = [f"task={args.task}", f"task.n_train={args.n_train}", *args.set]
    if args.recipe != "none":
        base.append(f"recipe={args.recipe}")
    header = ("| recipe | width | epochs | test acc | CPU s per training | CPU s per half-subset model "
              "| half models per CPU h |")
    print(header + "\n|---|---|---|---|---|---|---|", flush=True)
    for width in map(int, args.widths.split(",")):
        for epochs in map(int, args.epochs.split(",")):
            r = train_once(base + [f"task.width={width}", f"task.recipe.epochs={epochs}"])
            half = r["cpu_s"] / 2
            row = (f"| {' '.join([args.recipe, *args.set])} | {width} | {epochs} | {r['test_acc']:.3f} | "
                   f"{r['cpu_s']:.0f} | {half:.0f} | {3600 / half:.0f} |")
            print(row, flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(row + "\n")


if __name__ == "__main__":
    main()
