"""Writing a run's result: its scores file and its record in ``RESULTS_DIR/runs.jsonl``.

When ``results_dir`` is full or read-only the run says so in one line and keeps the record and
scores under :func:`pending_dirs`; the next run on that ``results_dir`` writes them
(:func:`complete_pending_writes`). Pending folders are private to the user (the cache folder, or a
per-user folder of mode 0700 in the system's temporary folder, refused when someone else owns it),
and a pending file holds tensors and the record as JSON text: reading one runs no code."""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path

import torch

from tdabench.harness.core.storage import CorruptFileError, load_verified, remove_verified, save_verified
from tdabench.harness.read.record import RunRecord, invalid_reason
from tdabench.harness.read.results import append_record, read_records, record_line

log = logging.getLogger(__name__)

def _save(record: RunRecord, scores: torch.Tensor | None, results_dir: Path) -> None:
    """Write the scores (for an ok record) and append the record; raises OSError. A record that
    readers would skip as invalid is still written (nothing computed is lost), with a warning."""
    reason = invalid_reason(json.loads(record_line(record.as_dict())))  # as readers will see it
    if reason:
        log.warning(f"run {record.run_id}: its record is not valid ({reason}); readers will skip it")
    if scores is not None:
        path = results_dir / "scores" / f"{record.run_id}.pt"
        save_verified(dict(scores=scores.detach().cpu(), run_id=record.run_id, config_hash=record.config_hash,
                           method=record.method), path)
        record.update(scores_file=str(path.relative_to(results_dir)))
    append_record(results_dir, record.as_dict())


def private_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of this user that no one else can write (created 0700 if absent)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def pending_dirs(cache_dir: str | Path) -> list[Path]:
    """Where results that could not be written are kept, in order of preference: the cache
    folder's ``pending``, then ``tdabench-pending-<uid>`` in the system's temporary folder when it
    is this user's own (mode 0700; a folder of that name owned by someone else is never used)."""
    own = Path(tempfile.gettempdir()) / f"tdabench-pending-{os.getuid()}"
    return [Path(cache_dir) / "pending", *([own] if private_folder(own) else [])]


def _pending(cache_dir: str | Path, results_dir: Path):
    """The results kept aside for ``results_dir``: (path, record, scores) of every pending file
    that is intact data holding a valid record (a :class:`RunRecord`); anything else is left
    alone, never executed."""
    target = str(Path(results_dir).resolve())
    for folder in pending_dirs(cache_dir):
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            try:
                data = load_verified(path)
                if not isinstance(data, dict) or data.get("results_dir") != target:
                    continue
                record = json.loads(data["record_json"])
            except (OSError, CorruptFileError, KeyError, TypeError, ValueError) as exc:
                log.debug(f"{path}: not a pending result ({exc})")
                continue
            if isinstance(record, dict) and invalid_reason(record) is None:
                yield path, RunRecord.from_dict(record), data.get("scores")


def pending_records(results_dir: Path, cache_dir: str | Path) -> list[RunRecord]:
    """The records of results kept aside for ``results_dir``, not yet written there."""
    return [record for _, record, _ in _pending(cache_dir, results_dir)]


def write_result(record: RunRecord, scores: torch.Tensor | None, results_dir: Path,
                 cache_dir: str | Path) -> bool:
    """Save ``scores`` and append ``record``; True when both are in ``results_dir``.

    On a write error (full disk, read-only folder) the run says so in one line, keeps the record
    and scores in the first of :func:`pending_dirs` that takes them, and the next run on
    ``results_dir`` writes them (:func:`complete_pending_writes`). ``record.write_error`` then
    holds the message.
    """
    try:
        _save(record, scores, results_dir)
        return True
    except OSError as exc:
        reason = f"{exc.strerror or exc} [errno {exc.errno}]" if exc.errno else str(exc)
        record.drop("scores_file")
    kept = None
    for folder in pending_dirs(cache_dir):
        try:
            kept = save_verified(dict(record_json=record_line(record.as_dict()).decode(),
                                      scores=None if scores is None else scores.detach().cpu(),
                                      results_dir=str(results_dir.resolve())), folder / f"{record.run_id}.pt")
            break
        except OSError:
            continue
    where = (f"the record and scores are kept in {kept}; the next run on {results_dir} writes them"
             if kept else "they could not be kept anywhere: free space and rerun")
    record.update(write_error=f"could not write to {results_dir} ({reason}); {where}")
    log.warning(f"{record.task} / {record.method}: {record.write_error}")
    return False


def complete_pending_writes(results_dir: Path, cache_dir: str | Path) -> int:
    """Write the results an earlier run kept aside for ``results_dir``; return how many."""
    written = 0
    for path, record, scores in _pending(cache_dir, results_dir):
        folder = path.parent
        claimed = path.with_name(f"{path.name}.{os.getpid()}.claimed")
        try:
            os.replace(Path(str(path) + ".sha256"), Path(str(claimed) + ".sha256"))
            os.replace(path, claimed)  # another run completing the same write skips it now
        except OSError:
            continue
        try:
            known = {r.run_id for r in read_records(results_dir)}
            if record.run_id not in known:
                record.drop("write_error")
                _save(record, scores, Path(results_dir))
        except OSError as exc:
            os.replace(claimed, path)
            os.replace(Path(str(claimed) + ".sha256"), Path(str(path) + ".sha256"))
            log.warning(f"still cannot write to {results_dir} ({exc.strerror or exc}); the result "
                f"of run {record.run_id} stays in {path}")
            continue
        remove_verified(claimed)
        written += 1
        log.info(f"wrote run {record.run_id} ({record.task} / {record.method}), kept "
            f"in {folder} after an earlier write to {results_dir} failed")
    return written
