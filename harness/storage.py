"""Atomic, checksummed files and content hashes.

Every cache and score file is written to a temporary file in the same folder, fsynced and renamed
into place, so a reader never sees half a file. A ``.sha256`` sidecar holds the checksum of the
content; :func:`load_verified` refuses a file whose bytes do not match it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


class CorruptFileError(RuntimeError):
    """A cached file is missing its checksum, truncated, or does not match its checksum."""


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serializable object (dict keys sorted)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_verified(obj: Any, path: str | Path) -> Path:
    """``torch.save`` ``obj`` atomically with a sha256 sidecar; returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    # The data goes first: a crash between the two writes leaves a file without a matching
    # checksum, which readers treat as corrupt and recompute.
    atomic_write_bytes(path, data)
    atomic_write_bytes(_sidecar(path), hashlib.sha256(data).hexdigest().encode())
    return path


def load_verified(path: str | Path) -> Any:
    """Load a file written by :func:`save_verified`; raise :class:`CorruptFileError` if damaged."""
    path = Path(path)
    side = _sidecar(path)
    if not side.exists():
        raise CorruptFileError(f"{path}: checksum file {side.name} is missing")
    data = path.read_bytes()
    expected = side.read_text().strip()
    if hashlib.sha256(data).hexdigest() != expected:
        raise CorruptFileError(f"{path}: content does not match its checksum (truncated or corrupted)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # pragma: no cover - checksum matched but unpickling failed
        raise CorruptFileError(f"{path}: could not be read ({exc})") from exc


def remove_verified(path: str | Path) -> None:
    path = Path(path)
    for p in (path, _sidecar(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def load_or_compute(path: str | Path, compute, what: str, log=print, on_wait=None) -> Any:
    """Return the verified content of ``path``, or compute, save and return it.

    A file lock beside ``path`` makes concurrent processes that need the same content wait for
    the first one instead of computing it twice. A damaged file is reported and recomputed.
    ``on_wait(seconds)``, if given, is called with the time spent waiting for another process's
    lock (only when there was a wait).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        t0 = time.perf_counter()
        lock.acquire()
        if on_wait is not None:
            on_wait(time.perf_counter() - t0)
    try:
        if path.exists():
            try:
                return load_verified(path)
            except CorruptFileError as exc:
                log(f"[tdabench] cached {what} is damaged, recomputing: {exc}")
                remove_verified(path)
        obj = compute()
        save_verified(obj, path)
        return obj
    finally:
        lock.release()
