"""Is magic's derivative the effect of re-weighting an example? Finite differences on a real task.

    python benchmarks/magic_finite_differences.py task=cifar10_resnet9 task.n_train=500 task.width=16 \
        --scores results/reference/cifar10_n500/scores/<magic run>.pt --examples 0,1 --eps 0.01

For each chosen training example i this retrains the task's reference run (same seed, data order
and augmentation) with the example's loss weight set to 1 + eps and 1 - eps, and once with weight
0 (the example removed from its batches, as the same-seed ground truth removes it), and compares
the query observables with magic's derivative d phi_q / d beta_i (the ``--scores`` file of a
``method=magic method.seeds=1`` run on the same task): the central difference against the
derivative (relative error and Pearson correlation over the queries), and the removal effect
phi(0) - phi(1) against the first-order prediction -d phi / d beta_i. Also checks that the
unweighted retraining reproduces the reference checkpoint's observables. On a smooth training run
the central difference matches the derivative (``tests/test_magic.py`` checks it to 1e-3 on a
small float64 task); where it does not, the training run is too sensitive to its weights for a
derivative to predict retraining. Costs 1 + 3 x examples trainings.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tdabench.harness.core.storage import load_verified
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import prepare


def observables(task, weights: torch.Tensor) -> torch.Tensor:
    """Query observables after the reference run retrained with per-example loss weights (as the
    same-seed ground truth retrains it)."""
    model = task.fit_model(torch.arange(task.n_train), task.seed, weights=weights).model
    return task.query_observables(model).double()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*")
    p.add_argument("--scores", required=True, help="scores file of a method=magic method.seeds=1 run")
    p.add_argument("--examples", default="0,1")
    p.add_argument("--eps", type=float, default=0.01)
    args = p.parse_args(argv)
    cfg = compose(["method=magic", *args.overrides])
    torch.set_num_threads(cfg.get("threads") or 1)
    task, _ = prepare(cfg)
    scores = load_verified(args.scores)["scores"].double()  # [n_query, n_train]
    t0 = time.process_time()
    ones = torch.ones(task.n_train)
    base = observables(task, ones)
    reference = task.query_observables(task.checkpoint()).double()
    out = {"task": task.name, "n_train": task.n_train, "eps": args.eps,
           "replay_reproduces_checkpoint": bool(torch.equal(base, reference)),
           "max_abs_diff_to_checkpoint": float((base - reference).abs().max()), "examples": []}
    for i in (int(v) for v in args.examples.split(",")):
        w = ones.clone()
        w[i] = 1 + args.eps
        up = observables(task, w)
        w[i] = 1 - args.eps
        down = observables(task, w)
        w[i] = 0.0
        removed = observables(task, w)
        fd, d = (up - down) / (2 * args.eps), scores[:, i]
        effect = removed - base
        row = {"example": i,
               "fd_vs_magic_rel_error": float((fd - d).norm() / fd.norm()),
               "fd_vs_magic_pearson": float(torch.corrcoef(torch.stack([fd, d]))[0, 1]),
               "fd_norm": float(fd.norm()), "magic_norm": float(d.norm()),
               "removal_vs_first_order_pearson": float(torch.corrcoef(torch.stack([effect, -d]))[0, 1]),
               "removal_effect_norm": float(effect.norm())}
        out["examples"].append(row)
        print(json.dumps(row), flush=True)
    out["cpu_s"] = round(time.process_time() - t0, 1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
