"""Torch threads for a job of a parallel launcher when ``threads`` is not set: the job's share of
the machine, so jobs running side by side do not each start one thread per core.

- joblib (``hydra/launcher=parallel`` or ``joblib``): cores // ``n_jobs``;
- submitit_local: ``cpus_per_task`` when set, else cores // the sweep's number of jobs (they all
  run at once; the launching process hands the count on in :data:`SWEEP_JOBS_ENV`);
- SLURM (and any job SLURM started): ``SLURM_CPUS_PER_TASK``, the CPUs the job was given;
- the basic launcher (runs one after another): None, torch's default.

And the GPU of a job with ``device=cuda`` (:func:`job_gpu`): jobs that local launchers run side by
side take the visible GPUs in turn by job number; a SLURM job sees only the GPU it was given.
"""

from __future__ import annotations

import os

SWEEP_JOBS_ENV = "TDABENCH_SWEEP_JOBS"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def job_threads(launcher: dict, env: dict | None = None, available: int | None = None) -> int | None:
    """Threads for one job of ``launcher`` (Hydra's ``hydra.launcher`` node, with ``_target_``),
    from the environment ``env`` (default ``os.environ``) and ``available`` cores (default
    :func:`cores`); None where the launcher runs one job at a time."""
    env = os.environ if env is None else env
    available = available or cores()
    slurm = _int(env.get("SLURM_CPUS_PER_TASK"))
    if slurm:
        return slurm
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        n_jobs = _int(launcher.get("n_jobs")) or -1
        parallel = available + 1 + n_jobs if n_jobs < 0 else n_jobs
    elif target.endswith("LocalLauncher"):  # submitit_local
        if _int(launcher.get("cpus_per_task")):
            return _int(launcher.get("cpus_per_task"))
        parallel = _int(env.get(SWEEP_JOBS_ENV)) or available
    else:
        return None
    return max(1, available // max(1, parallel))


def sweep_jobs(overrides, default_methods: int) -> int:
    """The number of jobs of a sweep from its parsed command-line ``overrides``: the product of
    the sweep lists' lengths (``method`` sweeps every registered method when not given)."""
    jobs, method_given = 1, False
    for o in overrides:
        method_given |= o.key_or_group == "method"
        if o.is_sweep_override():
            jobs *= max(1, len(list(o.sweep_string_iterator())))
    return jobs * (1 if method_given else default_methods)


def job_gpu(launcher: dict, job_num: int, device: str, visible: int) -> int | None:
    """The GPU index for job ``job_num`` of ``launcher`` with ``device`` when ``visible`` GPUs are
    visible: job_num mod visible for ``device=cuda`` (no index given) under a launcher that runs
    jobs at once on one machine (joblib, submitit_local), so they do not all share the first GPU;
    None (the current device) otherwise: one GPU, an index given, or one job at a time."""
    target = str(launcher.get("_target_", ""))
    local = target.endswith("JoblibLauncher") or target.endswith("LocalLauncher")
    if device != "cuda" or visible < 2 or not local:
        return None
    return job_num % visible
