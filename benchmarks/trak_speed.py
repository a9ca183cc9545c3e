"""Native ``trak`` time / ``trak_traker`` time on CPU, same task, checkpoint and proj_dim.

    .venv/bin/python benchmarks/trak_speed.py [--task digits_mlp] [--proj-dim 512]
        [--models 1] [--repeats 3] [--threads 1]

Both do the whole attribution (training features, kernel, query features, scores) on the same
members; the ensemble is trained and ``torch.func`` warmed up before timing, and each is timed
``--repeats`` times, alternating, keeping the fastest. Prints both times and the ratio (goal <= 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.trak_models import config  # noqa: E402
from harness.run import prepare  # noqa: E402


def timed(method, task, model) -> float:
    start = time.perf_counter()
    method.fit(task, model)
    method.score(task, model)
    return time.perf_counter() - start


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
    task, native = prepare(config(args.task, "trak", params))
    _, ref = prepare(config(args.task, "trak_traker", params))
    model = task.checkpoint()
    task.ensemble(args.models)
    timed(native, task, model)  # warm-up: torch.func's first call, caches
    native_s, ref_s = [], []
    for _ in range(args.repeats):
        native_s.append(timed(native, task, model))
        ref_s.append(timed(ref, task, model))
    n, r = min(native_s), min(ref_s)
    print(f"{args.task}, proj_dim {args.proj_dim}, {args.models} model(s), {torch.get_num_threads()} "
          f"thread(s): native trak {n:.3f} s, trak_traker {r:.3f} s, ratio native/traker {n / r:.2f}")


if __name__ == "__main__":
    main()
