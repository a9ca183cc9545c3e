"""Peak memory of ``exact_if``'s dense fit against the size of its Hessian (goal: <= 3 x the
float64 Hessian plus the model), and the matrix-free solvers' peak beside it.

    .venv/bin/python benchmarks/exact_if_memory.py [--task digits_mlp] [--solvers dense,cg]

Each solver's fit runs once as a warm-up (torch.func's first call, library loading), then once
measured (harness.profiling: peak resident memory above the phase start).
"""

from __future__ import annotations

import argparse
import os

import torch

from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.engine.run import prepare
from tdabench.methods.gradients import num_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--solvers", default="dense,cg")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    task, _ = prepare(pairing_config(args.task, "exact_if", {}))
    model = task.checkpoint()
    p = num_params(model)
    hessian_mb, model_mb = 8 * p * p / 2**20, 4 * p / 2**20
    print(f"{args.task}: {p} parameters, float64 Hessian {hessian_mb:.1f} MiB")
    for solver in args.solvers.split(","):
        _, method = prepare(pairing_config(args.task, "exact_if", {}))
        method.solver = solver
        method.fit(task, model)  # warm-up
        prof = Profiler()
        with prof.phase("fit"):
            method.fit(task, model)
        peak = prof.peak_mem_mb["fit"]
        print(f"{solver}: fit peak {peak:.1f} MiB = {peak / hessian_mb:.2f} x the Hessian"
              + (f" (goal <= 3 x the Hessian + the model = {3 * hessian_mb + model_mb:.1f} MiB)"
                 if solver == "dense" else ""))


if __name__ == "__main__":
    main()
