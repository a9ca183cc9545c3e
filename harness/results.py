"""Result records: one JSON line per run in ``RESULTS_DIR/runs.jsonl``, scores beside it.

Records are appended under an exclusive lock with a single write and an fsync, so concurrent
sweeps never interleave lines. Scores go to ``RESULTS_DIR/scores/<run_id>.pt`` (atomic, with a
checksum) so LDS can be recomputed without rerunning the method.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tdabench.harness import __version__
from tdabench.harness.record import RunRecord, upgrade

_log = logging.getLogger(__name__)
LIBRARIES = ("torch", "numpy", "scipy", "hydra-core", "wandb", "kronfluence", "traker", "devinterp",
             "transformers")


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@lru_cache(maxsize=1)
def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return out


def provenance(device: str) -> dict:
    return {"version": __version__, "git_sha": git_sha(), "libraries": library_versions(),
            "device": device, "host": platform.node(), "platform": platform.platform(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def append_record(results_dir: str | Path, record: dict) -> Path:
    path = Path(results_dir) / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a writer died mid-line: keep the torn line apart from this one
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return path


def read_records(results_dir: str | Path) -> list[RunRecord]:
    """All complete records, in the current schema (:func:`tdabench.harness.record.upgrade`); a
    damaged line (for example a torn last line) is skipped with a note."""
    path = Path(results_dir) / "runs.jsonl"
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(upgrade(json.loads(line)))
        except json.JSONDecodeError:
            _log.warning(f"{path}:{n} is not a complete record; skipped")
    return records
