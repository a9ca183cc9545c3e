"""The GPU check: every step of tdabench that a GPU changes, in one script of about 8 minutes.

Run it from a copy of the project on a machine with one CUDA GPU, with that machine's own
PyTorch and torchvision (any recent versions), the packages of ``benchmarks/gpu_requirements.txt`` and the
CIFAR-10 archive ``cifar10-jpeg.tar.gz`` beside the project in ``../shared/data/`` (or
``shared/data/`` inside it, ``$TDABENCH_DATA`` or ``--data DIR``); nothing is downloaded. For a
GPU machine without a network, ``make gpu-wheels GPU_PY=3.11`` (its Python version) gathers
those packages as wheels in ``gpu_wheels/`` (136 MB for Python 3.11 on x86-64; 39 MB of it
without numpy, scipy, pandas, scikit-learn, matplotlib and their image libraries, which GPU
images usually have); carry that folder with the copy and install there with

    pip install --no-index --find-links gpu_wheels -r benchmarks/gpu_requirements.txt
    pip install --no-index --find-links gpu_wheels --no-deps -e .
    python benchmarks/gpu_check.py [--out results/reference/gpu_cifar10]   # on a GPU
    python benchmarks/gpu_check.py --tiny                                  # every step, on this CPU

Steps, each printed as it finishes:

(a) every registered method on small ``digits_mlp``, ``cifar10_resnet9`` and ``text_neox``, on the
    GPU and on the CPU, with their LDS side by side and whether they agree within 0.01 (methods
    whose optional libraries are missing are reported as skipped). The CPU runs read the models
    and ground truths the GPU trained (training amplifies rounding: at these sizes a retrained
    ground truth's memory layout alone moved an LDS by 0.07), so what is compared is the
    methods' own arithmetic (magic replays the training on each device, so its comparison
    includes training's rounding); the methods' caches are each device's own;
(b) the fast recipe (``recipe=fast``, bf16 autocast on a GPU) on full CIFAR-10: test accuracy,
    seconds per training and the peak GPU memory of one training; then a few ground-truth models
    of (c)'s size trained together and one at a time: seconds each way and how far their query
    observables differ;
(c) a CIFAR-10 ground truth (10,000 training images, 100 half-subsets x 2 seeds with the fast
    recipe; on a GPU ``gt.models_per_batch`` models train at once), its models per hour and peak
    memory per model, and the LDS of ekfac, trak, grad_dot and bif on it, one line per method
    (``<method> LDS <value>``), written as one results folder (``--out``: runs.jsonl, scores and
    the leaderboard).

``--tiny`` runs the same steps at toy sizes on the CPU (a few minutes on one core), the ground
truth's models trained together as on a GPU: what it checks is that every step runs, not the
numbers. Exit status 1 if a step failed or (a) found a method
whose GPU and CPU LDS differ by more than 0.01.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = "cifar10-jpeg.tar.gz"
COMMON = ["wandb.mode=disabled", "cost.count=off", "threads=1", "seed=0"]

#: (a) the small tasks (the same on a GPU and with --tiny: what matters is the comparison)
SMALL = {
    "digits_mlp": ["task.n_train=100", "task.n_query=10", "gt.subsets=8", "gt.seeds=2"],
    # two easily told apart classes, so that a model of a few hundred images is above chance
    "cifar10_resnet9": ["recipe=fast", "task.classes=[airplane,frog]", "task.width=4", "task.n_train=200",
                        "task.n_query=6", "task.n_test=100", "task.recipe.epochs=6", "task.recipe.batch_size=32",
                        "gt.subsets=6", "gt.seeds=2"],
    "text_neox": ["task.n_train=80", "task.n_query=5", "task.n_test=10", "task.layers=1", "task.width=16",
                  "task.seq_len=16", "task.recipe.epochs=3", "gt.subsets=6", "gt.seeds=2"],
}
#: cheap settings of the slower methods for (a) (the comparison needs the same settings, not good ones)
CHEAP = {"bif": ["method.chains=1", "method.draws=10", "method.burn_in=5"],
         "bif_devinterp": ["method.chains=1", "method.draws=10", "method.burn_in=5"],
         "trak": ["method.models=2", "method.proj_dim=32"], "trak_traker": ["method.models=1", "method.proj_dim=32"],
         "magic": ["method.seeds=1"], "exact_if": ["method.solver=cg", "method.max_iter=3"]}
#: (b) and (c): the fast recipe on full CIFAR-10 and its ground truth, on a GPU and at --tiny's size
FAST = (["task.n_train=50000", "task.n_test=10000", "task.n_query=100", "task.width=64",
         "task.recipe.batch_size=512", "task.recipe.lr=0.4", "task.recipe.epochs=16", "task.recipe.precision=bf16"],
        ["task.n_train=500", "task.n_test=200", "task.n_query=10", "task.width=8", "task.recipe.epochs=3",
         "task.recipe.batch_size=32", "task.recipe.lr=0.2"])
GT = (["task.n_train=10000", "task.n_test=2000", "task.n_query=100", "task.width=32",
       "task.recipe.batch_size=256", "task.recipe.epochs=8", "task.recipe.precision=bf16",
       "gt.subsets=100", "gt.seeds=2"],
      ["task.classes=[airplane,frog]", "task.n_train=300", "task.n_test=200", "task.n_query=8", "task.width=8",
       "task.recipe.epochs=3", "task.recipe.batch_size=32", "task.recipe.lr=0.2", "gt.subsets=8", "gt.seeds=2"])
GT_METHODS = ("ekfac", "trak", "grad_dot", "bif")


def find_archive(given: str | None) -> Path:
    env = [Path(os.environ["TDABENCH_DATA"])] if os.environ.get("TDABENCH_DATA") else []
    for d in ([Path(given)] if given else []) + env + [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]:
        if (d / ARCHIVE).is_file():
            return d
    raise SystemExit(f"gpu_check: {ARCHIVE} not found in {given or '../shared/data or shared/data'}; "
                     f"put it there or pass --data DIR")


def run(overrides: list[str]) -> dict:
    """One pairing in this process: its record (``status`` and ``lds``), or the reason it did not run."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.config import ConfigError, UnsupportedPairingError
    from tdabench.harness.engine.run import execute

    try:
        return execute(compose(overrides)) or {}
    except (ConfigError, UnsupportedPairingError) as exc:
        return {"status": "unsupported", "message": " ".join(exc.problems)}


def step_methods(args, device: str, tmp: Path) -> bool:
    from tdabench.harness.core.registry import METHODS

    devices = [device, "cpu"] if device != "cpu" else ["cpu"]
    ok = True
    shared = ("models", "ground_truth", "ground_truth_trace", "removal", "data")
    print(f"(a) every registered method on small tasks, {' vs '.join(devices)}", flush=True)
    for task, sizes in SMALL.items():
        if task not in args.tasks.split(","):
            continue
        for name in METHODS.names():
            lds, t0 = {}, time.perf_counter()
            for dev in devices:
                r = run([f"task={task}", f"method={name}", f"device={dev}", *COMMON, *sizes,
                         *CHEAP.get(name, []), f"cache_dir={tmp}/cache-{dev}", f"results_dir={tmp}/a-{dev}"])
                lds[dev] = r.get("lds") if r.get("status") == "ok" else r.get("status", "error")
                for other in devices[1:] if dev == devices[0] else []:  # the same models and ground truth
                    for folder in shared:
                        if (tmp / f"cache-{dev}" / folder).is_dir():
                            shutil.copytree(tmp / f"cache-{dev}" / folder, tmp / f"cache-{other}" / folder,
                                            dirs_exist_ok=True)
                why = "" if r.get("status") == "ok" else f": {str(r.get('message', ''))[:160]}"
            values = [v for v in lds.values() if isinstance(v, float)]
            if all(v == "unsupported" for v in lds.values()):
                verdict = "skipped"  # refused before work on this task (or an optional library is missing)
            elif len(values) < len(devices):
                verdict = "FAILED"
                ok = False
            elif len(values) == 2:
                verdict = "agree" if abs(values[0] - values[1]) <= 0.01 else "DIFFER"
                ok &= verdict == "agree"
            else:
                verdict = "cpu only"
            shown = ", ".join(f"{d} {v:.4f}" if isinstance(v, float) else f"{d} {v}" for d, v in lds.items())
            print(f"  {task} {name} LDS: {shown} ({verdict}{why}; {time.perf_counter() - t0:.0f} s)", flush=True)
    return ok


def cifar_overrides(device: str, sizes: list[str], cache: Path) -> list[str]:
    """A fast-recipe CIFAR-10 run on ``device`` at ``sizes``, cached in ``cache`` (float32 on a CPU,
    where bf16 autocast is slow)."""
    over = ["task=cifar10_resnet9", "recipe=fast", f"device={device}", *COMMON, *sizes, f"cache_dir={cache}"]
    return over + (["task.recipe.precision=float32"] if device == "cpu" else [])


def cifar_task(overrides: list[str]):
    """The task of ``overrides``, its images decoded (so that no timing includes it)."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import prepare

    task, _ = prepare(compose([*overrides, "method=grad_dot"]))
    task.train_split
    return task


def timed(device: str, fn):
    """``fn()`` and its wall seconds, synchronized on a GPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def step_fast_recipe(args, device: str, tmp: Path) -> bool:
    task = cifar_task(cifar_overrides(device, FAST[args.tiny], tmp / "cache-fast"))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model, seconds = timed(device, lambda: task.fit_model(torch.arange(task.n_train), task.seed).model)
    acc = task.evaluate(model)["test_acc"]
    memory = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB per model"
              if device.startswith("cuda") else "")
    r = task.recipe()
    print(f"(b) fast recipe on CIFAR-10, {task.n_train} images, width {task.cfg['width']}, {r.epochs} epochs, "
          f"{r.precision}: test accuracy {acc:.4f}, {seconds:.1f} s per training{memory}", flush=True)
    return True


def step_together(args, device: str, tmp: Path) -> bool:
    """(b) continued: ground-truth models of step (c)'s size trained together against one at a time."""
    task = cifar_task(cifar_overrides(device, GT[args.tiny], tmp / "cache-together"))
    n_models = 4 if args.tiny else 8
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(task.n_train, generator=gen)[:task.n_train // 2] for _ in range(n_models)])
    warm = task.recipe()
    warm.epochs = 1
    task.fit_many(idx[:2], [0, 1], recipe=warm)  # kernels chosen and loaded before timing
    seconds, models = {}, {}
    for together in (True, False):
        models[together], seconds[together] = timed(
            device, lambda t=together: task.fit_many(idx, list(range(n_models)), vectorize=t))
    q = task.query_split
    with torch.no_grad():  # rounding grows in training: on a CPU the memory layout alone moves these by 1e-2
        diff = max(float((task.observable(a, q.inputs, q.targets) - task.observable(b, q.inputs, q.targets))
                         .abs().max()) for a, b in zip(models[True], models[False]))
    print(f"    {n_models} ground-truth models ({task.n_train // 2} images each): together {seconds[True]:.1f} s, "
          f"one at a time {seconds[False]:.1f} s ({seconds[False] / seconds[True]:.1f}x); largest query "
          f"observable difference {diff:.2e}", flush=True)
    return True


def step_ground_truth(args, device: str, tmp: Path, out: Path) -> bool:
    base = [*cifar_overrides(device, GT[args.tiny], tmp / "cache-gt"), f"results_dir={out}"]
    print(f"(c) CIFAR-10 ground truth and methods, results in {out}", flush=True)
    t0 = time.perf_counter()
    ok = True
    for name in GT_METHODS:
        r = run(base + [f"method={name}", *(CHEAP.get(name, []) if args.tiny else [])])
        if r.get("gt_cached") is False:
            print(ground_truth_line(r), flush=True)
        if r.get("status") == "ok":
            print(f"{name} LDS {r['lds']:.4f}", flush=True)
        else:
            ok = False
            print(f"{name} LDS none ({r.get('status')}: {str(r.get('message', ''))[:200]})", flush=True)
    print(f"    ground truth and methods in {time.perf_counter() - t0:.0f} s", flush=True)
    if ok:
        from tdabench.harness.read.leaderboard import write

        write([out])
    return ok


def ground_truth_line(record: dict) -> str:
    """One line on the ground truth a run computed: models, seconds, models per hour, how many
    trained at once and the peak memory per model."""
    models = record.get("gt_subsets", 0) * record.get("gt_seeds", 0)
    seconds = (record.get("time_s") or {}).get("ground_truth") or float("nan")
    peak = (record.get("peak_mem_mb") or {}).get("ground_truth")
    together = record.get("gt_models_together") or 1
    memory = f", peak memory {peak:.0f} MiB ({peak / together:.0f} MiB per model)" if peak else ""
    return (f"    ground truth: {models} models in {seconds:.0f} s ({3600 * models / seconds:.0f} per hour), "
            f"{together} trained at once{memory}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (a few minutes)")
    ap.add_argument("--device", default=None, help="default: cuda when available (never with --tiny), else cpu")
    ap.add_argument("--data", default=None, help=f"the folder holding {ARCHIVE}")
    ap.add_argument("--out", default=None, help="results folder of step (c); default: a temporary one with "
                    "--tiny, results/gpu_check otherwise")
    ap.add_argument("--steps", default="a,b,c", help="which steps to run (a, b, c)")
    ap.add_argument("--tasks", default=",".join(SMALL), help="the tasks of step (a)")
    args = ap.parse_args()
    os.environ["TDABENCH_DATA"] = str(find_archive(args.data))
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("tdabench").setLevel(logging.WARNING)
    device = args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device == "cpu":
        # the ground truth's models train together as they do on a GPU (on a CPU one at a time is
        # faster, so the task does not do it there by itself): the same code path, checked
        from tdabench.tasks.cifar import CifarResNet9

        CifarResNet9.vectorizable = True
    print(f"gpu_check{' --tiny' if args.tiny else ''}: device {device}, torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""), flush=True)
    steps = set(args.steps.split(","))
    ok = True
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = Path(args.out) if args.out else (tmp / "c" if args.tiny else ROOT / "results" / "gpu_check")
        if "a" in steps:
            ok &= step_methods(args, device, tmp)
        if "b" in steps:
            ok &= step_fast_recipe(args, device, tmp)
            ok &= step_together(args, device, tmp)
        if "c" in steps:
            ok &= step_ground_truth(args, device, tmp, out)
    print(f"gpu_check: {'all steps ok' if ok else 'SOME STEPS FAILED'} in {time.perf_counter() - start:.0f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
