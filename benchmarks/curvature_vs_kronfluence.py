"""Native EK-FAC / K-FAC against kronfluence on the same model and data, in one process on CPU.

Prints, for fit and for score, the wall time and peak memory (resident set size above the phase's
start, as the harness profiles runs) of each implementation and the native / kronfluence ratios
(below 1: native is cheaper), plus the per-query Spearman agreement of their scores. Each pairing
runs ``--repeats`` times (fresh factors every time) and the least time and memory are reported,
so import and first-call costs are left out. ``--hidden`` widens the MLP so that memory is
measured well above the allocator's noise (a few MiB).

    .venv/bin/python benchmarks/curvature_vs_kronfluence.py                 # digits_mlp, default
    .venv/bin/python benchmarks/curvature_vs_kronfluence.py --n-train 200   # smaller
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.profiling import Profiler  # noqa: E402
from methods.ekfac import EKFAC, KFAC  # noqa: E402
from methods.reference.kronfluence import EKFACKronfluence, KFACKronfluence  # noqa: E402
from tasks.digits import DigitsMLP  # noqa: E402

PAIRS = {"ekfac": (EKFAC, EKFACKronfluence), "kfac": (KFAC, KFACKronfluence)}


def measure(method, task, model, repeats: int) -> tuple[dict, torch.Tensor]:
    """Least time and least peak memory over ``repeats`` fit + score runs: {phase: (seconds, peak
    MiB)} and the scores (the minimum filters out other processes and the allocator's state)."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        shutil.rmtree(task.cache_dir / "curvature", ignore_errors=True)
        gc.collect()
        prof = Profiler("cpu", interval=0.002)
        with prof.phase("fit"):
            method.fit(task, model)
        with prof.phase("score"):
            scores = method.score(task, model)
        for phase in ("fit", "score"):
            t, m = prof.time_s[phase], prof.peak_mem_mb[phase]
            best[phase] = (min(t, best[phase][0]), min(m, best[phase][1])) if phase in best else (t, m)
    return best, scores


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(spearmanr(a[q], b[q])[0] for q in range(len(a))) / len(a))


def compare(task, strategies=("ekfac", "kfac"), repeats: int = 3, log=print) -> dict:
    """Ratios native / kronfluence per strategy and phase: {strategy: {...}}."""
    import kronfluence  # noqa: F401  (imported before measuring, as torch is)

    model = task.checkpoint()
    out = {}
    for strategy in strategies:
        native_cls, ref_cls = PAIRS[strategy]
        nat, s_nat = measure(native_cls(), task, model, repeats)
        ref, s_ref = measure(ref_cls(), task, model, repeats)
        row = {"spearman": mean_spearman(s_nat, s_ref)}
        for phase in ("fit", "score"):
            row[f"{phase}_time_ratio"] = nat[phase][0] / ref[phase][0]
            # 1 MiB floor: RSS growth below that is noise of the allocator
            row[f"{phase}_mem_ratio"] = max(nat[phase][1], 1.0) / max(ref[phase][1], 1.0)
            log(f"{strategy:6s} {phase:6s} native {nat[phase][0]:7.3f} s {nat[phase][1]:8.1f} MiB | "
                f"kronfluence {ref[phase][0]:7.3f} s {ref[phase][1]:8.1f} MiB | ratio time "
                f"{row[f'{phase}_time_ratio']:.3f} memory {row[f'{phase}_mem_ratio']:.3f}")
        log(f"{strategy:6s} per-query Spearman native vs kronfluence: {row['spearman']:.4f}")
        out[strategy] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=None, help="override task.n_train")
    ap.add_argument("--hidden", type=int, default=None, help="override task.hidden")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf/task/digits_mlp.yaml").read_text())
    if args.n_train:
        cfg["n_train"] = args.n_train
    if args.hidden:
        cfg["hidden"] = args.hidden
    with tempfile.TemporaryDirectory(prefix="tdabench-bench-") as tmp:
        task = DigitsMLP(cfg, seed=0, cache_dir=tmp, log=lambda m: None)
        print(f"digits_mlp: n_train {task.n_train}, n_query {task.n_query}, hidden {cfg['hidden']}, "
              f"torch threads {args.threads}")
        compare(task, repeats=args.repeats)


if __name__ == "__main__":
    main()
