"""Up-front validation of a resolved config: every problem found before any expensive work.

``validate`` returns one line per problem, each naming the key, the bad value and the fix.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from tdabench.harness.core.registry import METHODS, TASKS, UnknownNameError
from tdabench.harness.core.settings import ConfigError, RunSettings


class UnsupportedPairingError(ConfigError):
    """The config is valid but this method cannot run on this task (a sweep records it and goes on)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_writable(path: str | Path) -> str | None:
    """Why the folder ``path`` cannot be written (or created), or None. Creates nothing: a probe
    file is written to and removed from ``path``, or from its nearest existing parent."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{path} is not writable ({existing} is a file, not a folder); choose another folder"
    try:
        probe = existing / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"{path} is not writable ({exc.strerror or exc}); choose another folder or fix its permissions"
    return None


def device_problem(device, here: bool = True) -> str | None:
    """Why ``device`` is not ``cpu``, ``cuda`` or ``cuda:N``, or (``here``: the run will execute
    on this machine) names a GPU this machine does not show; else None. A launcher that submits
    jobs to other machines (SLURM) checks the GPU inside each job, where it runs."""
    device = str(device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        return f"device={device!r}: use cpu, cuda or cuda:N"
    if device == "cpu" or not here:
        return None
    import torch

    if not torch.cuda.is_available():
        return f"device={device}: no CUDA device is visible; use device=cpu"
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return f"device={device}: this machine shows {torch.cuda.device_count()} CUDA device(s); use cuda:0"
    return None


def reproducible_device(device) -> None:
    """On a CUDA ``device``, make kernels reproduce themselves, as the ground truth's same-seed
    retrainings and magic's replay assume: deterministic cuDNN convolutions without autotuning,
    deterministic algorithms wherever torch has them (a warning names an operation without one,
    such as ``AdaptiveMaxPool2d``'s backward), cuBLAS with a fixed workspace, and no TF32 for
    float32 matrix products and convolutions (the fast CIFAR recipe asks for bf16 autocast itself).
    On the CPU nothing changes."""
    if not str(device).startswith("cuda"):
        return
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def validate_settings(s: RunSettings, device_here: bool = True) -> list[str]:
    """Checks of the settings that need the machine or the file system (the device, the folders,
    the free disk space) or the registry (the task's method defaults); ``device_here`` False: the
    run executes on another machine, so only the form of ``device`` is checked here."""
    p = [problem for problem in (device_problem(s.device, device_here),
                                 folder_problem("results_dir", s.results_dir),
                                 folder_problem("cache_dir", s.cache_dir)) if problem]
    p += method_default_problems(s)
    if not p:
        need = ground_truth_mb(s) + MIN_FREE_MB
        free = free_disk_mb(s.cache_dir)
        if free < need:
            p.append(f"cache_dir: {free:.0f} MiB free on {s.cache_dir}, about {need:.0f} MiB needed "
                     "(ground truth, checkpoints and scores); free space or choose another cache_dir")
    return p


MIN_FREE_MB = 200  # checkpoints, curvature factors, scores and temporary files


def folder_problem(key: str, value) -> str | None:
    """Why ``value`` cannot serve as the folder ``key`` (empty, not a string, not writable), or None."""
    if not isinstance(value, str) or not value.strip():
        default = "results" if key == "results_dir" else ".cache/tdabench"
        return f"{key}={value!r} is empty; give a folder path (default {default})"
    problem = check_writable(value)
    runs = Path(value) / "runs.jsonl"
    if not problem and key == "results_dir" and (runs.is_symlink() or runs.exists()) and not runs.is_file():
        problem = f"{runs} is not a file; move it away (results are appended to a file of that name)"
    return f"{key}: {problem}" if problem else None


def subset_problems(s: RunSettings) -> list[str]:
    """The ground truth's subsets must be neither empty nor the whole training set: each keeps
    round(gt.alpha * task.n_train) examples, which must lie in [1, n_train - 1]."""
    alpha, n = s.gt.alpha, (s.task or {}).get("n_train")
    if not _is_num(alpha) or not 0 < alpha < 1 or not _is_int(n) or n < 1:
        return []  # reported by the checks of those keys
    k = int(round(alpha * n))
    if n < 2:
        return [f"task.n_train={n} is too small: the LDS compares subsets of the training set, so "
                "it needs at least 2 examples; use a larger task.n_train"]
    if k < 1 or k > n - 1:
        what = "empty" if k < 1 else "the whole training set"
        lo, hi = 0.5 / n, 1 - 0.5 / n
        return [f"gt.alpha={alpha} with task.n_train={n} makes every ground-truth subset {what} "
                f"({k} of {n} examples); use {lo:.4g} < gt.alpha < {hi:.4g}, or a larger task.n_train"]
    return []


def method_default_problems(s: RunSettings) -> list[str]:
    """Entries of ``task.method_defaults.<method>`` for the chosen method that are not parameters
    of that method: they would be ignored silently."""
    name = s.method_name
    defaults = ((s.task or {}).get("method_defaults") or {}).get(name) or {}
    try:
        allowed = METHODS.get(name).parameters() if defaults else []
    except UnknownNameError:
        return []  # reported by resolve_names
    return [f"task.method_defaults.{name}.{k}: method {name} has no parameter {k!r}, so this task "
            f"default would be ignored; its parameters: {', '.join(allowed)}"
            for k in defaults if k not in allowed]


def ground_truth_mb(s: RunSettings) -> float:
    """Size of the ground truth on disk: float32 outcomes [M, K, n_query], masks [M, n_train]."""
    gt, task = s.gt, s.task or {}
    n_query, n_train = (v if _is_int(v) and v > 0 else 0 for v in (task.get("n_query"), task.get("n_train")))
    return 2 * (4 * gt.subsets * gt.seeds * n_query + gt.subsets * n_train) / 2**20


def resolve_names(s: RunSettings) -> tuple[type | None, type | None, list[str]]:
    problems = []
    task_cls = method_cls = None
    try:
        task_cls = TASKS.get(s.task_name)
    except UnknownNameError as exc:
        problems.append(str(exc))
    try:
        method_cls = METHODS.get(s.method_name)
    except UnknownNameError as exc:
        problems.append(str(exc))
    return task_cls, method_cls, problems


def validate_method_params(method_cls, s: RunSettings) -> list[str]:
    """Unknown parameters (with the valid ones listed) and values that do not fit the
    constructor's types."""
    allowed = method_cls.parameters()
    params = s.method_params
    unknown = [k for k in params if k not in allowed]
    if unknown:
        return [f"method {method_cls.name} has no parameter {', '.join(unknown)}; its parameters: "
                f"{', '.join(allowed)}"]
    if "seed" in params and params["seed"] == s.config.get("seed", s.seed):  # follows the run's seed, checked there
        params = {k: v for k, v in params.items() if k != "seed"}
    return method_cls.parameter_problems(params)


def validate_pairing(task, method) -> list[str]:
    lacking = sorted(set(method.requires) - set(task.capabilities))
    if lacking:
        return [f"method {method.name} needs {', '.join(lacking)} from the task, which task "
                f"{task.name} cannot provide; choose another method or task"]
    return method.check(task)


def free_disk_mb(path: str | Path) -> float:
    """MiB free on the file system of ``path`` (or of its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20
