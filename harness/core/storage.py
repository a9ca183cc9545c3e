"""Atomic, checksummed files and content hashes.

Every cache and score file is written to a temporary file in the same folder, fsynced and renamed
into place, so a reader never sees half a file. A ``.sha256`` sidecar holds the checksum of the
content; :func:`load_verified` refuses a file whose bytes do not match it. The checksum only
detects damage (whoever writes a file can write its checksum too): files are read as data only,
tensors and plain containers (``torch.load(weights_only=True)``), so a planted file runs no code.
Every file gets the mode a plain ``open`` would give it under the user's umask.

Work cached by :func:`load_or_compute` keeps what computing it cost, in a JSON sidecar
``<file>.cost.json`` (:func:`read_cost`): wall and CPU seconds, and the FLOPs and tensor-level
peak memory that :data:`COMPUTE_METERS` measured (the profiler's, while it counts). A run that
reads the work later counts it at that cost (:mod:`tdabench.harness.engine.cold_cost`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

_log = logging.getLogger(__name__)


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


def current_umask() -> int:
    """The process's file-mode creation mask (read from /proc where it can be, so that no other
    thread ever sees a changed mask; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename). The file gets the
    mode a plain ``open`` would give it (0666 less the umask), not the temporary file's private
    0600, so a colleague can read what the user's umask lets them read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # checksum matched, but the content is not plain data (or damaged)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(f"{path}: could not be read as data (tensors and plain containers "
                               f"only): {reason[:300]}") from exc


def remove_verified(path: str | Path) -> None:
    path = Path(path)
    for p in (path, _sidecar(path), cost_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


#: seconds a process waits for a lock before saying who holds it (then again every
#: ``LOCK_REPORT_S`` times 10)
LOCK_REPORT_S = 30.0


def _holder(path: Path) -> str:
    """Who holds the lock ``path``: the process id, host and state its holder wrote beside it."""
    try:
        text = Path(str(path) + ".holder").read_text(errors="replace").split()
    except OSError:
        text = []
    if not text:
        return "a process that did not write its id"
    pid, host = text[0], text[1] if len(text) > 1 else "?"
    if host != socket.gethostname():
        return f"process {pid} on host {host}"
    try:
        import psutil

        status = psutil.Process(int(pid)).status()
    except Exception:  # gone, or not a number: the lock is released as soon as the holder dies
        return f"process {pid}"
    if status == "stopped":
        return (f"process {pid}, which is stopped (resume it with kill -CONT {pid}, or end it with "
                f"kill {pid})")
    return f"process {pid} ({status}; if it is stuck, end it with kill {pid})"


@contextmanager
def exclusive_lock(path: str | Path, what: str, log=None, on_wait=None):
    """Hold an exclusive lock on the file ``path`` (:class:`filelock.FileLock`) for the ``with`` block.

    The holder writes its process id and host into ``<path>.holder``. A waiter says after
    :data:`LOCK_REPORT_S` seconds (and then every ten times that) which process holds the lock and
    in what state, so a lock held by a stopped or hung process never makes a run wait without a
    word. The operating system releases the lock when its holder exits, however it exits.
    ``on_wait(seconds)``, if given, is called with the time spent waiting for another process's
    lock (only when there was a wait).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False)
    start = time.monotonic()
    report_at = LOCK_REPORT_S
    contended = False
    while True:
        try:
            lock.acquire(timeout=min(0.2, LOCK_REPORT_S / 10))
            break
        except Timeout:
            contended = True
        waited = time.monotonic() - start
        if waited >= report_at:
            (log or _log.warning)(f"waiting {waited:.0f} s for {what}: {path} is locked by {_holder(path)}")
            report_at = waited + 10 * LOCK_REPORT_S
    try:
        if contended and on_wait is not None:
            on_wait(time.monotonic() - start)
        try:
            Path(str(path) + ".holder").write_text(f"{os.getpid()} {socket.gethostname()}\n")
        except OSError:
            pass  # the id is only for messages; a full disk must not stop the lock
        yield
    finally:
        lock.release()


def to_device(tree: Any, device) -> Any:
    """``tree`` (tensors in dicts, lists and tuples) with every tensor moved to ``device`` (files
    are read onto the CPU; a computation on another device moves what it reads back there)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def load_state(path: str | Path | None, keys: tuple[str, ...], matches=lambda state: True,
               device=None) -> dict | None:
    """The saved state of an interrupted computation (written by :func:`save_verified`): its dict
    when ``path`` exists, is intact, holds every one of ``keys`` and ``matches(state)``; else None.
    A damaged or incomplete file is removed, so the computation starts afresh. ``device``: where
    its tensors go (default: the CPU, where files are read)."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = load_verified(path)
    except CorruptFileError:
        state = None
    if not isinstance(state, dict) or not all(k in state for k in keys):
        remove_verified(path)
        return None
    state = state if device is None else to_device(state, device)
    return state if matches(state) else None


_MISS_RECORDERS: list[set[str]] = []
_READ_RECORDERS: list[set[tuple[str, str]]] = []
_RECOMPUTE: set[str] = set()


@contextmanager
def _collecting(recorders: list[set]):
    """Push a fresh set onto ``recorders`` for the block and yield it."""
    found: set = set()
    recorders.append(found)
    try:
        yield found
    finally:
        recorders[:] = [r for r in recorders if r is not found]  # by identity: equal sets nest


def record_cache_reads():
    """Collect (as a set of (path, description) pairs, e.g. 'ensemble member 3') the work that
    :func:`load_or_compute` read from its cache inside the block instead of computing it."""
    return _collecting(_READ_RECORDERS)


def record_cache_misses():
    """Collect (as a set of paths) the caches that :func:`load_or_compute` computed inside the
    block instead of reading them."""
    return _collecting(_MISS_RECORDERS)


@contextmanager
def recompute_caches(paths):
    """Inside the block, :func:`load_or_compute` computes the content of ``paths`` again without
    reading, locking or writing its file (a replay of work that computed them, for counting): the
    first time each is asked for; later it is read, as the work being replayed read it."""
    added = {str(p) for p in paths} - _RECOMPUTE
    _RECOMPUTE.update(added)
    try:
        yield
    finally:
        _RECOMPUTE.difference_update(added)


def load_or_compute(path: str | Path, compute, what: str, log=None, on_wait=None) -> Any:
    """Return the verified content of ``path``, or compute, save and return it.

    A lock file beside ``path`` (:func:`exclusive_lock`) makes concurrent processes that need the
    same content wait for the first one instead of computing it twice. A damaged file is reported
    and recomputed. ``on_wait(seconds)`` is told the time spent waiting for another process.
    Inside :func:`recompute_caches` of ``path`` the content is computed and returned, nothing
    else; inside :func:`record_cache_misses` a computed ``path`` is recorded.
    """
    if str(path) in _RECOMPUTE:  # once: a later use in the replay reads it, as the timed pass did
        _RECOMPUTE.discard(str(path))
        obj, counted = _measured(compute)
        _merge_cost(Path(path), {k: v for k, v in counted.items() if k not in ("wall_s", "cpu_s")})
        return obj
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(str(path) + ".lock", f"the {what}", log, on_wait):
        if path.exists():
            try:
                obj = load_verified(path)
                for reads in _READ_RECORDERS:
                    reads.add((str(path), what))
                return obj
            except CorruptFileError as exc:
                (log or _log.warning)(f"cached {what} is damaged, recomputing: {exc}")
                remove_verified(path)
        obj, cost = _measured(compute)
        save_verified(obj, path)
        write_cost(path, {"what": what, **cost})
        for misses in _MISS_RECORDERS:
            misses.add(str(path))
        return obj


# ----- what cached work cost when it was computed ----------------------------------------------
#: functions called around every computation of :func:`load_or_compute`: each returns a context
#: manager whose value is a dict it fills, on exit, with measurements of the computation (the
#: profiler counts FLOPs and the tensor-level peak this way while it counts a phase)
COMPUTE_METERS: list = []


def _measured(compute) -> tuple[Any, dict]:
    """``compute()`` and its cost: wall and CPU seconds (``wall_s``, ``cpu_s``) and what the
    :data:`COMPUTE_METERS` measured."""
    found: list[dict] = []
    with ExitStack() as stack:
        found = [stack.enter_context(meter()) for meter in COMPUTE_METERS]
        t0, c0 = time.perf_counter(), time.process_time()
        obj = compute()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    cost = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
    for measured in found:
        cost.update(measured)
    return obj, cost


def cost_path(path: str | Path) -> Path:
    """The JSON sidecar of a cached file that says what computing it cost (``<file>.cost.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".cost.json")


def write_cost(path: str | Path, cost: dict) -> None:
    """Write the cost sidecar of the cached file ``path``: what it holds (``what``), the wall and
    CPU seconds its computation took and, where they were counted, its FLOPs and tensor-level peak
    memory (``flops``, ``peak_mem_mb``). A failure to write it is not an error: the cached work
    then has no known cost."""
    try:
        atomic_write_bytes(cost_path(path), json.dumps(cost, sort_keys=True).encode())
    except OSError as exc:
        _log.warning(f"could not write the cost of {path}: {exc}")


def _merge_cost(path: Path, measured: dict) -> None:
    """Add ``measured`` (counted in a replay that computed ``path`` again) to its sidecar (a new
    one, without seconds, for work cached before costs were kept)."""
    if not measured or not path.exists():
        return
    cost = read_cost(path) or {}
    if any(cost.get(k) != v for k, v in measured.items()):
        write_cost(path, {**cost, **measured})


def read_cost(path: str | Path) -> dict | None:
    """The cost sidecar of the cached file ``path`` (:func:`write_cost`), or None when there is
    none or it is not a JSON object (work cached before costs were kept)."""
    try:
        cost = json.loads(cost_path(path).read_text())
    except (OSError, ValueError):
        return None
    return cost if isinstance(cost, dict) else None
