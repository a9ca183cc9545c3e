"""Attribution cost against model size on the published Pythia configurations (GPT-NeoX).

    .venv/bin/python benchmarks/pythia_cost.py [--sizes 14m,31m] [--methods bif,ekfac,trak]
        [--n-train 8] [--n-query 2] [--seq-len 64] [--threads 1]

Each (size, method) runs in a fresh process (so memory freed by one job never hides another's):
the task builds the randomly initialized configuration, then ``fit`` and ``score`` are timed and
their peak resident memory above the phase start is measured (harness.profiling). The BIF runs a
short chain (1 chain, 3 burn-in steps, 5 draws) and TRAK projects to 64 dimensions, so that the
benchmark stays in budget; the cost per draw and per projected dimension is what scales with size.
Every worker uses a fresh cache folder, so EK-FAC's factors are fitted, never read back. Prints a
table and, per method, the log-log slope of time and of memory against parameter count between
the smallest and the largest size (1.0 = linear in the parameter count), and the EK-FAC / BIF
time ratio at each size. The full-size profile (16 train and
4 query sequences of 128 tokens, up to 160M) is the pythia_scaling sweep in
results/reference/pythia_scaling/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.engine.run import prepare

ROOT = Path(__file__).resolve().parents[1]

SHORT_BIF = {"chains": 1, "burn_in": 3, "draws": 5, "steps_between_draws": 1, "batch_size": 4,
             "draw_batch_size": 4}


def job_config(size: str, method: str, args) -> dict:
    over = dict(SHORT_BIF) if method == "bif" else {}
    if method == "trak":
        # the dense projection (params x proj_dim random signs, regenerated block by block on
        # every call) dominates TRAK's CPU cost; a small proj_dim keeps the benchmark in budget
        over = {"proj_dim": 64}
    cfg = pairing_config("pythia_scaling", method, over)
    cfg["task"].update(size=size, n_train=args.n_train, n_query=args.n_query, n_test=args.n_query,
                       seq_len=args.seq_len)
    return cfg


def worker(size: str, method_name: str, args, cache_dir: str) -> dict:
    torch.set_num_threads(args.threads)
    cfg = job_config(size, method_name, args)
    cfg["cache_dir"] = cache_dir
    task, method = prepare(cfg)
    model = task.checkpoint()
    task.train_split, task.query_split  # noqa: B018 - build the data outside the timings
    prof = Profiler()
    with prof.phase("fit"):
        method.fit(task, model)
    with prof.phase("score"):
        method.score(task, model)
    return {"size": size, "method": method_name, "params": sum(p.numel() for p in model.parameters()),
            "time_s": prof.time_s, "peak_mem_mb": prof.peak_mem_mb}


def run_job(size: str, method: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", f"{size}:{method}", "--threads", str(args.threads),
           "--n-train", str(args.n_train), "--n-query", str(args.n_query), "--seq-len", str(args.seq_len)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"})
    if out.returncode != 0:
        raise SystemExit(f"{size} / {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(a: float, b: float, pa: int, pb: int) -> float:
    return math.log(max(b, 1e-9) / max(a, 1e-9)) / math.log(pb / pa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="14m,31m")
    ap.add_argument("--methods", default="bif,ekfac,trak")
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-query", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        size, method = args.worker.split(":")
        with tempfile.TemporaryDirectory(prefix="tdabench-pythia-cost-") as cache_dir:
            print(json.dumps(worker(size, method, args, cache_dir)))
        return
    sizes, methods = args.sizes.split(","), args.methods.split(",")
    print(f"pythia_scaling: {args.n_train} train / {args.n_query} query sequences of {args.seq_len} "
          f"tokens, {args.threads} thread(s); bif {SHORT_BIF}")
    print(f"{'size':>5} {'method':>6} {'params':>12} {'fit s':>8} {'score s':>8} {'total s':>8} "
          f"{'fit MiB':>8} {'score MiB':>9}")
    rows = {}
    for size in sizes:
        for method in methods:
            r = run_job(size, method, args)
            rows[size, method] = r
            t, m = r["time_s"], r["peak_mem_mb"]
            print(f"{size:>5} {method:>6} {r['params']:>12,} {t['fit']:8.2f} {t['score']:8.2f} "
                  f"{t['fit'] + t['score']:8.2f} {m['fit']:8.1f} {m['score']:9.1f}", flush=True)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for method in methods:
            a, b = rows[lo, method], rows[hi, method]
            ta, tb = (sum(r["time_s"].values()) for r in (a, b))
            ma, mb = (max(max(r["peak_mem_mb"].values()), 1.0) for r in (a, b))
            pa, pb = a["params"], b["params"]
            print(f"{method}: {lo} -> {hi} ({pb / pa:.2f}x parameters): time {tb / ta:.2f}x "
                  f"(log-log slope {slope(ta, tb, pa, pb):.2f}), peak memory {mb / ma:.2f}x "
                  f"(slope {slope(ma, mb, pa, pb):.2f})")
    if "bif" in methods and "ekfac" in methods:
        for size in sizes:
            te = sum(rows[size, "ekfac"]["time_s"].values())
            tb = sum(rows[size, "bif"]["time_s"].values())
            print(f"{size}: ekfac / bif time ratio {te / tb:.2f}")


if __name__ == "__main__":
    main()
