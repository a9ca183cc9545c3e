"""Result records: one JSON line per run in ``RESULTS_DIR/runs.jsonl``, scores beside it.

Records are appended under an exclusive lock with a single write and an fsync, so concurrent
sweeps never interleave lines. Scores go to ``RESULTS_DIR/scores/<run_id>.pt`` (atomic, with a
checksum) so LDS can be recomputed without rerunning the method.

Lines are standard JSON (a non-finite number is written as null). A reader skips, with a count and
the reason, lines that are not complete JSON, JSON values that are not objects, and records that
are not valid (:func:`tdabench.harness.read.record.invalid_reason`: keys missing, a field of the
wrong type, an LDS out of range, an interval that does not hold its value...): such a record is
never ranked, plotted or taken as a finished pairing.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import math
import os
import platform
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tdabench.harness.core.version import __version__, git_sha
from tdabench.harness.read.record import RunRecord, validated

_log = logging.getLogger(__name__)
LIBRARIES = ("torch", "numpy", "scipy", "hydra-core", "wandb", "kronfluence", "traker", "devinterp",
             "transformers")


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
    """Where a record was computed; on a GPU also which one (``accelerator``) and the CUDA
    version, since GPU seconds and peak memory depend on them."""
    out = {"version": __version__, "git_sha": git_sha(), "libraries": library_versions(),
           "device": device, "host": platform.node(), "platform": platform.platform(),
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = int(str(device).partition(":")[2] or torch.cuda.current_device())
        out.update(accelerator=torch.cuda.get_device_name(index), cuda=torch.version.cuda)
    return out


def standard_json(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by None, so that ``json.dumps``
    writes standard JSON; containers are copied, other values returned as they are."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [standard_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return standard_json(obj.item())
    return obj


def record_line(record: dict) -> bytes:
    """One record as a line of standard JSON."""
    return (json.dumps(standard_json(record), default=str, allow_nan=False) + "\n").encode()


def append_record(results_dir: str | Path, record: dict) -> Path:
    path = Path(results_dir) / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record_line(record)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
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


class NoRecordsError(ValueError):
    """A results folder named for reading holds no records."""


def one_line_errors(prog: str):
    """Decorate a command's ``main`` so that an unreadable, unwritable or damaged file, or a folder
    without records, ends it with one line
    (``prog: error: file: reason; fix``) and exit status 1 instead of a traceback."""
    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            from tdabench.harness.core.storage import CorruptFileError

            try:
                return main(*args, **kwargs)
            except CorruptFileError as exc:
                sys.exit(f"{prog}: error: {exc}; rerun the run that wrote it")
            except NoRecordsError as exc:
                sys.exit(f"{prog}: error: {exc}")
            except OSError as exc:
                where = f"{exc.filename}: " if exc.filename else ""
                sys.exit(f"{prog}: error: {where}{exc.strerror or exc}; check the folder's permissions "
                         "and free space")
        return run
    return wrap


def read_records(results_dir: str | Path) -> list[RunRecord]:
    """All valid records, in the current schema, as typed records (:func:`tdabench.harness.read.record.validated`).
    Damaged lines (a torn last line), JSON values that are not objects and invalid records are
    skipped, with one warning per reason giving the count and the first line numbers. Raises
    OSError with the fix when ``runs.jsonl`` cannot be read or is not a file."""
    path = Path(results_dir) / "runs.jsonl"
    if not path.exists():
        return []
    if not path.is_file():
        raise OSError(errno.EISDIR, f"{path} is not a file; move it away (results are appended to a file of that name)")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise OSError(exc.errno, f"{path} cannot be read ({exc.strerror or exc}); check its permissions") from exc
    records = []
    skipped: dict[str, list[int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            skipped.setdefault("not a complete record", []).append(n)
            continue
        if not isinstance(rec, dict):
            skipped.setdefault(f"a JSON {type(rec).__name__}, not a record object", []).append(n)
            continue
        rec, reason = validated(rec)
        if reason:
            why = f"a record {reason}" if reason.startswith("missing") else f"an invalid record: {reason}"
            skipped.setdefault(why, []).append(n)
            continue
        records.append(rec)
    for why, lines in skipped.items():
        where = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        message = f"{path.resolve()}: {len(lines)} line(s) skipped, each {why} (line {where})"
        if message not in _WARNED:  # a command reads a folder several times; it says so once
            _WARNED.add(message)
            _log.warning(message.replace(str(path.resolve()), str(path), 1))
    return records


#: the warnings about skipped lines already given by this process
_WARNED: set[str] = set()
