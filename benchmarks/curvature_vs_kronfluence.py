"""Native EK-FAC / K-FAC against kronfluence on the same model and data, on CPU.

Prints, for fit and for score, the wall time and peak memory of each implementation and the
native / kronfluence ratios (below 1: native is cheaper), plus the per-query Spearman agreement of
their scores. Each implementation runs as the harness runs a method: in a fresh process that loads
the task and checkpoint, warms up on a 32-example copy of the task (imports and first-call set-up
are not the algorithm's cost), then profiles ``fit`` and ``score`` (peak memory = resident set
size above the phase's start, harness/engine/profiling.py, with glibc's mmap threshold fixed at 64 KiB
so that freed blocks leave the resident set). Every run is repeated ``--repeats`` times and the least
time and memory per phase are kept (other processes only ever add to them).

    .venv/bin/python benchmarks/curvature_vs_kronfluence.py               # digits_mlp as configured
    .venv/bin/python benchmarks/curvature_vs_kronfluence.py --hidden 1024 # a wider MLP (77k params)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from scipy.stats import spearmanr

from tdabench.tasks.digits import DigitsMLP

ROOT = Path(__file__).resolve().parents[1]

PAIRS = {"ekfac": ("ekfac", "ekfac_kronfluence"), "kfac": ("kfac", "kfac_kronfluence")}


def make_task(cfg: dict, cache_dir: Path) -> DigitsMLP:
    return DigitsMLP(cfg, seed=0, cache_dir=cache_dir, log=lambda m: None)


def worker(method_name: str, cfg: dict, cache_dir: Path, scores_path: Path, threads: int) -> dict:
    """One harness-like run of ``method_name``: {phase: [seconds, peak MiB]}; saves the scores."""
    from tdabench.harness.core.registry import METHODS
    from tdabench.harness.engine.profiling import Profiler

    torch.set_num_threads(threads)
    # warm-up on a 32-example copy of the task: lazy imports and first-call set-up are left out
    small = make_task({**cfg, "n_train": 32, "n_query": 4}, cache_dir)
    warm = METHODS.get(method_name)()
    warm.fit(small, small.checkpoint())
    warm.score(small, small.checkpoint())
    task = make_task(cfg, cache_dir)
    model = task.checkpoint()
    method = METHODS.get(method_name)()
    shutil.rmtree(cache_dir / "curvature", ignore_errors=True)  # no cached factors
    prof = Profiler("cpu", interval=0.002, count=False)  # resident set, as described above
    with prof.phase("fit"):
        method.fit(task, model)
    with prof.phase("score"):
        scores = method.score(task, model)
    torch.save(scores, scores_path)
    return {p: [prof.time_s[p], prof.peak_mem_mb[p]] for p in ("fit", "score")}


def run_worker(method_name: str, cfg: dict, cache_dir: Path, threads: int) -> tuple[dict, torch.Tensor]:
    scores_path = cache_dir / f"scores-{method_name}.pt"
    out = subprocess.run(
        [sys.executable, __file__, "--worker", method_name, "--cache", str(cache_dir),
         "--cfg", json.dumps(cfg), "--threads", str(threads)],
        capture_output=True, text=True, check=True, cwd=ROOT,
        # glibc: every block above 64 KiB is mapped and unmapped on its own, so the resident set
        # follows live memory instead of what earlier phases left in the heap
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    return json.loads(out.stdout.strip().splitlines()[-1]), torch.load(scores_path)


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(spearmanr(a[q], b[q])[0] for q in range(len(a))) / len(a))


def compare(cfg: dict, cache_dir: Path, strategies=("ekfac", "kfac"), repeats: int = 3,
            threads: int = 1, log=print) -> dict:
    """Ratios native / kronfluence per strategy and phase, and the score agreement:
    {strategy: {fit_time_ratio, fit_mem_ratio, score_time_ratio, score_mem_ratio, spearman}}."""
    make_task(cfg, cache_dir).checkpoint()  # trained once, shared by the workers
    results = {}
    for strategy in strategies:
        best, scores = {}, {}
        for name in PAIRS[strategy]:
            for _ in range(repeats):
                prof, scores[name] = run_worker(name, cfg, cache_dir, threads)
                prev = best.get(name, prof)
                best[name] = {p: [min(prof[p][0], prev[p][0]), min(prof[p][1], prev[p][1])] for p in prof}
        nat, ref = (best[n] for n in PAIRS[strategy])
        row = {"spearman": mean_spearman(*(scores[n] for n in PAIRS[strategy]))}
        for phase in ("fit", "score"):
            row[f"{phase}_time_ratio"] = nat[phase][0] / ref[phase][0]
            # a 1 MiB floor: smaller RSS growth is the allocator's noise
            row[f"{phase}_mem_ratio"] = max(nat[phase][1], 1.0) / max(ref[phase][1], 1.0)
            log(f"{strategy:6s} {phase:6s} native {nat[phase][0]:7.3f} s {nat[phase][1]:7.1f} MiB | "
                f"kronfluence {ref[phase][0]:7.3f} s {ref[phase][1]:7.1f} MiB | ratio time "
                f"{row[f'{phase}_time_ratio']:.3f} memory {row[f'{phase}_mem_ratio']:.3f}")
        log(f"{strategy:6s} per-query Spearman native vs kronfluence: {row['spearman']:.4f}")
        results[strategy] = row
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=None, help="override task.n_train")
    ap.add_argument("--hidden", type=int, default=None, help="override task.hidden")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs per implementation")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.cfg), Path(args.cache),
                                Path(args.cache) / f"scores-{args.worker}.pt", args.threads)))
        return
    cfg = yaml.safe_load((ROOT / "conf/task/digits_mlp.yaml").read_text())
    cfg["n_train"] = args.n_train or cfg["n_train"]
    cfg["hidden"] = args.hidden or cfg["hidden"]
    print(f"digits_mlp: n_train {cfg['n_train']}, n_query {cfg['n_query']}, hidden {cfg['hidden']}, "
          f"torch threads {args.threads}, best of {args.repeats} fresh-process runs")
    with tempfile.TemporaryDirectory(prefix="tdabench-bench-") as tmp:
        compare(cfg, Path(tmp), repeats=args.repeats, threads=args.threads)


if __name__ == "__main__":
    main()
