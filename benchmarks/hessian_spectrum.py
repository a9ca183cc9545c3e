"""Extreme eigenvalues of the damped training Hessian that ``exact_if`` solves with, by Lanczos.

    python benchmarks/hessian_spectrum.py [--steps 30] [--dtype float32] [overrides ...]
    python benchmarks/hessian_spectrum.py task=cifar10_resnet9 task.n_train=500 task.width=16 --steps 20

Conjugate gradients converge for a positive-definite system; on an indefinite one the residual can
grow. This runs ``--steps`` Lanczos iterations (one Hessian-vector product each, over the whole
training set, with full reorthogonalization) on H + (weight decay + damping) I at the task's
reference checkpoint and prints the smallest and largest Ritz values: a negative smallest one means
the system exact_if's CG solves is indefinite at that damping, and the damping it would take to
make it positive definite (a lower bound: Ritz values lie inside the spectrum). Overrides are
composed as ``tdabench`` composes them (the method is exact_if; its ``method.damping`` and
``method.batch_size`` apply). Takes ``--steps`` products:
about 5 s each in float32 for the CIFAR ResNet-9 at width 16 on 500 images on one core.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import prepare
from tdabench.methods.exact_if import DTYPES, TrainingHessian


def lanczos_extremes(matmul, size: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Ritz values (ascending, float64) of a symmetric operator after ``steps`` Lanczos steps
    with full reorthogonalization; also the number of products taken."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(size, generator=g, dtype=torch.float64)
    q /= q.norm()
    basis, alphas, betas = [q], [], []
    for _ in range(steps):
        w = matmul(basis[-1][None])[0].double()
        alpha = float(w @ basis[-1])
        alphas.append(alpha)
        for v in basis:  # full reorthogonalization: a few dozen vectors of P floats
            w -= (w @ v) * v
        beta = float(w.norm())
        if beta < 1e-12:
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    off = torch.tensor(betas[: k - 1], dtype=torch.float64)
    t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(t), k


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    cfg = compose(["method=exact_if", "method.solver=cg", *args.overrides])
    cfg["threads"] = cfg.get("threads") or 1
    torch.set_num_threads(cfg["threads"])
    task, method = prepare(cfg)
    model = task.checkpoint()
    op = TrainingHessian(task, model, method.damping, method.batch_size, DTYPES[args.dtype])
    t0 = time.process_time()
    ritz, k = lanczos_extremes(op.matmul, op.size, args.steps, seed=cfg["seed"])
    out = {"task": task.name, "n_train": task.n_train, "parameters": op.size, "dtype": args.dtype,
           "damping": method.damping, "shift": op.shift, "lanczos_steps": k,
           "smallest": [round(float(v), 6) for v in ritz[:3]],
           "largest": [round(float(v), 6) for v in ritz[-3:]],
           "indefinite": bool(ritz[0] < 0),
           # Ritz values bound the spectrum from inside: the smallest is an upper bound of the
           # smallest eigenvalue, so this is a lower bound of the damping that is needed
           "damping_needed_at_least": round(method.damping - float(ritz[0]), 6) if ritz[0] < 0 else None,
           "cpu_s": round(time.process_time() - t0, 1)}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
