"""Ground-truth retraining throughput: vectorized (torch.func) against the plain loop.

Trains the same subset/seed models both ways in one process on the same data and prints models
per second, the speed-up, the largest outcome difference, and the LDS of each method in
``--methods`` (default: every registered method, with its config defaults) on each ground truth,
beside its LDS on the loop's first and second retraining seed alone (the retraining noise).
Default: digits_mlp with 100 subsets x 3 seeds (the benchmark of record). ``--task`` and ``--set``
pick another task and settings; a task that trains its models one at a time on this device
(CIFAR's ResNet-9 on a CPU) is made to train them together here, so that both ways are compared.

    python benchmarks/ground_truth_speed.py [--subsets 100] [--seeds 3] [--threads 1]
        [--methods grad_dot,exact_if] [--task cifar2_resnet9 --set task.n_train=500 task.width=8]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import prepare
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import lds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides (task.n_train=500 ...)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"task={args.task}", f"cache_dir={tmp}", f"results_dir={tmp}/r", "wandb.mode=disabled",
                  *args.set]
        cfg = compose([*common, f"gt.subsets={args.subsets}", f"gt.seeds={args.seeds}"])
        task, _ = prepare(cfg)
        if not task.vectorizable:  # one at a time on this device (CIFAR on a CPU): compared anyway
            if getattr(task.settings, "arch", "resnet9") != "resnet9":
                raise SystemExit(f"{task.name} with task.arch={task.settings.arch} cannot train models together "
                                 "(its forward pass draws dropout masks)")
            type(task).vectorizable = True
        model = task.checkpoint()
        n_models = args.subsets * args.seeds
        results = {}
        for name, vectorize in (("loop", False), ("vectorized", True)):
            builder = GroundTruthBuilder(task, dict(cfg["gt"], vectorize=vectorize), f"{tmp}/{name}",
                                         log=lambda m: None)
            t0 = time.perf_counter()
            gt = builder.build()
            results[name] = (time.perf_counter() - t0, gt)
        (t_loop, gt_loop), (t_vec, gt_vec) = results["loop"], results["vectorized"]
        print(f"task {task.name}, {task.n_train} images, {args.subsets} subsets x {args.seeds} seeds = "
              f"{n_models} models, {args.threads} thread(s)")
        print(f"loop:       {t_loop:8.1f} s  {n_models / t_loop:7.2f} models/s")
        print(f"vectorized: {t_vec:8.1f} s  {n_models / t_vec:7.2f} models/s")
        print(f"ratio vectorized/loop speed-up: {t_loop / t_vec:.1f}x")
        print(f"largest outcome difference: {(gt_loop.outcomes - gt_vec.outcomes).abs().max():.2e}")
        names = args.methods.split(",") if args.methods else METHODS.names()
        worst = 0.0
        for name in names:
            _, method = prepare(compose([*common, f"method={name}"]))
            method.fit(task, model)
            scores = method.score(task, model)
            a = lds(scores, gt_loop.masks, gt_loop.mean_outcomes).lds
            b = lds(scores, gt_vec.masks, gt_vec.mean_outcomes).lds
            worst = max(worst, abs(a - b))
            line = f"LDS {name}: loop {a:.4f}  vectorized {b:.4f}  |difference| {abs(a - b):.4f}"
            if args.seeds >= 2:  # the retraining noise for comparison: the loop's seeds 0 and 1 alone
                s0, s1 = (lds(scores, gt_loop.masks, gt_loop.outcomes[:, k]).lds for k in (0, 1))
                line += f"  (loop seed 0 alone {s0:.4f}, seed 1 alone {s1:.4f})"
            print(line)
        print(f"largest LDS difference over {len(names)} methods: {worst:.4f} (goal <= 0.01)")


if __name__ == "__main__":
    main()
