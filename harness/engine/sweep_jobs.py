"""Which records a sweep wrote: every job of a sweep (in this process, a launcher's worker or a
cluster job) notes the run id of its record in a file named by the sweep's token, in the results
folder's ``.sweeps/``, so the sweep's summary counts its own jobs only, never the records a
concurrent sweep appends to the same ``runs.jsonl``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

#: the environment variable that hands the sweep's token to its jobs (launchers' workers inherit it)
ENV = "TDABENCH_SWEEP_TOKEN"


def start() -> str:
    """A new token for this sweep, handed to its jobs through the environment."""
    token = uuid.uuid4().hex
    os.environ[ENV] = token
    return token


def _path(results_dir: str | Path, token: str) -> Path:
    return Path(results_dir) / ".sweeps" / f"{token}.ids"


def note(results_dir: str | Path, run_id: str | None) -> None:
    """Note that a job of the current sweep (if any) recorded ``run_id``: one line appended in one
    write, so jobs writing at once never interleave."""
    token = os.environ.get(ENV)
    if not token or not run_id:
        return
    path = _path(results_dir, token)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{run_id}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # an unwritable results folder keeps its records pending; the summary then counts none


def finish(results_dir: str | Path, token: str) -> set[str]:
    """The run ids the sweep's jobs noted; the file is removed."""
    path = _path(results_dir, token)
    try:
        ids = set(path.read_text().split())
        path.unlink()
    except OSError:
        return set()
    return ids
