"""Native ``trak`` time / ``trak_traker`` time on CPU, same task, checkpoint and proj_dim.

    .venv/bin/python benchmarks/trak_speed.py [--task digits_mlp] [--proj-dim 512]
        [--models 1] [--repeats 3] [--threads 1]

Both do the whole attribution (training features, kernel, query features, scores) on the same
members; the ensemble is trained and ``torch.func`` warmed up before timing, and each is timed
``--repeats`` times, alternating, keeping the fastest and the smallest peak resident memory
(harness.profiling). Prints both and the ratios (goal <= 1).
"""

from __future__ import annotations

import argparse
import os

import torch

from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.engine.run import prepare


def timed(method, task, model) -> tuple[float, float]:
    """Seconds and peak resident MiB (above the start) of fit + score."""
    prof = Profiler(count=False)  # resident set, no per-operator counting in the timing
    with prof.phase("run"):
        method.fit(task, model)
        method.score(task, model)
    return prof.time_s["run"], prof.peak_mem_mb["run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--proj-dim", type=int, default=512)
    ap.add_argument("--models", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    params = {"models": args.models, "proj_dim": args.proj_dim}
    task, native = prepare(pairing_config(args.task, "trak", params))
    _, ref = prepare(pairing_config(args.task, "trak_traker", params))
    model = task.checkpoint()
    task.ensemble(args.models)
    timed(native, task, model)  # warm-up: torch.func's first call, caches
    native_s, ref_s = [], []
    for _ in range(args.repeats):
        native_s.append(timed(native, task, model))
        ref_s.append(timed(ref, task, model))
    n, r = min(t for t, _ in native_s), min(t for t, _ in ref_s)
    nm, rm = min(m for _, m in native_s), min(m for _, m in ref_s)
    print(f"{args.task}, proj_dim {args.proj_dim}, {args.models} model(s), {torch.get_num_threads()} "
          f"thread(s): native trak {n:.3f} s {nm:.1f} MiB, trak_traker {r:.3f} s {rm:.1f} MiB")
    # a 1 MiB floor: smaller growth of the resident set is the allocator's noise
    print(f"ratio native/traker: time {n / r:.2f}, peak memory {max(nm, 1.0) / max(rm, 1.0):.2f}")


if __name__ == "__main__":
    main()
