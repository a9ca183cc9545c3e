"""Peak memory of native methods against their goals, on an MLP and on the CIFAR ResNet-9.

    .venv/bin/python benchmarks/memory_goals.py [--tasks digits cifar] [--threads 1]

Every method runs fit and score as the harness runs them, profiled by harness/engine/profiling.py:
``peak_mem_mb`` is the tensor-level peak (live bytes of tensors allocated in the phase), which
does not depend on what ran before, so all methods share one process. Curvature factors are
fitted, never read from a cache. Printed per task, with each goal (PASS when ratio <= goal):

- ekfac / ekfac_kronfluence and kfac / kfac_kronfluence: fit and score peaks (goal 1);
- exact_if: fit and score peaks / (3 x its float32 Hessian P^2 + the model) (goal 1; MLP only);
- grad_dot, tracin, trak: score peak, less the score matrix the phase returns (output, not working
  memory), / the gradients they must hold at once (goal 1.5): the query gradients and one chunk of
  training gradients for grad_dot and tracin (tracin keeps its query gradients in float64), one
  chunk of query gradients for trak. The ratio with the score matrix counted is printed beside it;
- trak / trak_traker: fit + score peak (goal 1).

and each method's FLOPs per phase. The CIFAR task is cifar2_resnet9 with 400 training images
and 10 queries, trained for 2 epochs (memory does not depend on how well the model is trained).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.profiling import MIB, Profiler, warm_up
from tdabench.harness.engine.run import prepare
from tdabench.methods.gradients import gradient_chunk, num_params

ROOT = Path(__file__).resolve().parents[1]

TASKS = {
    "digits": ("digits_mlp", []),
    "cifar": ("cifar2_resnet9", ["task.n_train=400", "task.n_query=10", "task.n_test=200",
                                 "task.recipe.epochs=2", "task.trajectory_checkpoints=2"]),
}
NATIVE_VS_REFERENCE = (("ekfac", "ekfac_kronfluence"), ("kfac", "kfac_kronfluence"))


def measure(task_name: str, method: str, overrides: list[str], cache_dir: str) -> dict | None:
    """{phase: (seconds, peak MiB, FLOPs)} of one method's fit and score; None if unavailable."""
    if method not in METHODS.names() or METHODS.get(method).available():
        return None
    task, m = prepare(pairing_config(task_name, method, overrides=[*overrides, "threads=1"], cache_dir=cache_dir))
    model = task.checkpoint()
    for split in ("train_split", "query_split", "test_split"):
        getattr(task, split)  # the data are loaded before fit, as a run's prepare phase does
    if "trajectory" in m.requires:
        task.trajectory()
    if "ensemble" in m.requires:  # members trained (and cached) first: attribution memory only
        task.ensemble(m.models, getattr(m, "ensemble_mode", "full"))
    shutil.rmtree(Path(cache_dir) / "curvature", ignore_errors=True)  # factors are fitted
    prof = Profiler()
    with prof.phase("fit"):
        m.fit(task, model)
    with prof.phase("score"):
        scores = m.score(task, model)
    return {"task": task, "model": model, "method": m,
            "result_mib": scores.numel() * scores.element_size() / MIB,
            **{p: (prof.time_s[p], prof.peak_mem_mb[p], prof.flops[p]) for p in ("fit", "score")}}


def held_gradients_mib(name: str, run: dict) -> float:
    """MiB of gradients the method must hold at once in its score phase."""
    task, model, m = run["task"], run["model"], run["method"]
    p = num_params(model)
    chunk = gradient_chunk(model, m.batch_size) * p * 4
    if name == "grad_dot":
        return (task.n_query * p * 4 + chunk) / MIB
    if name == "tracin":
        return (task.n_query * p * 8 + chunk) / MIB
    return min(m.batch_size, task.n_query) * p * 4 / MIB  # trak: one chunk of query gradients


def report(key: str, cache_dir: str, log=print) -> list[tuple[str, float, float]]:
    """Measure every method of the goals on one task; log a table; return (goal, ratio, limit)."""
    task_name, overrides = TASKS[key]
    names = ["ekfac", "ekfac_kronfluence", "kfac", "kfac_kronfluence", "grad_dot", "tracin", "trak",
             "trak_traker"] + (["exact_if"] if key == "digits" else [])
    runs = {}
    for name in names:
        runs[name] = measure(task_name, name, overrides, cache_dir)
    any_run = next(r for r in runs.values() if r is not None)
    log(f"\n{task_name} ({num_params(any_run['model'])} parameters, n_train "
        f"{any_run['task'].n_train}, n_query {any_run['task'].n_query}); tensor-level peaks")
    log(f"{'method':18s} {'fit s':>7s} {'fit MiB':>8s} {'fit GFLOP':>9s} {'score s':>8s} "
        f"{'score MiB':>9s} {'score GFLOP':>11s}")
    for name, r in runs.items():
        if r is not None:
            (ft, fm, ff), (st, sm, sf) = r["fit"], r["score"]
            log(f"{name:18s} {ft:7.2f} {fm:8.1f} {ff / 1e9:9.3f} {st:8.2f} {sm:9.1f} {sf / 1e9:11.3f}")
    goals = []
    for nat, ref in NATIVE_VS_REFERENCE:
        if runs[nat] and runs[ref]:
            for phase in ("fit", "score"):
                goals.append((f"{task_name} {nat} / {ref} {phase} peak",
                              max(runs[nat][phase][1], 0.01) / max(runs[ref][phase][1], 0.01), 1.0))
    if runs.get("exact_if"):
        p = num_params(runs["exact_if"]["model"])
        budget = (3 * p * p * 4 + p * 4) / MIB
        for phase in ("fit", "score"):
            goals.append((f"{task_name} exact_if {phase} peak / (3 Hessians + model)",
                          runs["exact_if"][phase][1] / budget, 1.0))
    for name in ("grad_dot", "tracin", "trak"):
        if runs[name]:
            held = held_gradients_mib(name, runs[name])
            peak, result = runs[name]["score"][1], runs[name]["result_mib"]
            log(f"  {name}: score peak {peak:.2f} MiB, of which its score matrix {result:.2f} MiB; "
                f"gradients held {held:.2f} MiB; peak / held {peak / held:.2f} with the matrix")
            goals.append((f"{task_name} {name} score peak less its scores / gradients held",
                          (peak - result) / held, 1.5))
    if runs["trak"] and runs["trak_traker"]:
        peak = [max(runs[n]["fit"][1], runs[n]["score"][1]) for n in ("trak", "trak_traker")]
        goals.append((f"{task_name} trak / trak_traker peak", peak[0] / max(peak[1], 0.01), 1.0))
    for goal, ratio, limit in goals:
        log(f"  {goal:68s} {ratio:6.2f}  (goal <= {limit:g}) {'PASS' if ratio <= limit else 'FAIL'}")
    return goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=os.environ.get("TDABENCH_CACHE") or str(ROOT / ".cache/tdabench"),
                    help="cache folder whose checkpoints and data are reused (curvature factors never are)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warm_up()
    with tempfile.TemporaryDirectory(prefix="tdabench-mem-") as tmp:
        goals = []
        for key in args.tasks:
            cache = Path(tmp) / key
            cache.mkdir(parents=True)
            if Path(args.cache).is_dir():  # share trained checkpoints, never curvature factors
                for sub in Path(args.cache).iterdir():
                    if sub.name != "curvature":
                        (cache / sub.name).symlink_to(sub)
            goals += report(key, str(cache))
    above = [g for g, r, lim in goals if r > lim]
    print(f"\nmemory goals: {len(goals) - len(above)} of {len(goals)} met"
          + (f"; above goal: {', '.join(above)}" if above else ""))


if __name__ == "__main__":
    main()
