"""Writing a run's result: its scores file and its record in ``RESULTS_DIR/runs.jsonl``.

When ``results_dir`` is full or read-only the run says so in one line and keeps the record and
scores under :func:`pending_dirs`; the next run on that ``results_dir`` writes them
(:func:`complete_pending_writes`)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from tdabench.harness.core.storage import CorruptFileError, load_verified, remove_verified, save_verified
from tdabench.harness.read.results import append_record, read_records

log = logging.getLogger(__name__)

def _save(record: dict, scores: torch.Tensor | None, results_dir: Path) -> None:
    """Write the scores (for an ok record) and append the record; raises OSError."""
    if scores is not None:
        path = results_dir / "scores" / f"{record['run_id']}.pt"
        save_verified({"scores": scores.detach().cpu(), "run_id": record["run_id"],
                       "config_hash": record["config_hash"], "method": record["method"]}, path)
        record["scores_file"] = str(path.relative_to(results_dir))
    append_record(results_dir, record)


def pending_dirs(cache_dir: str | Path) -> list[Path]:
    """Where results that could not be written are kept, in order of preference."""
    return [Path(cache_dir) / "pending", Path(tempfile.gettempdir()) / "tdabench-pending"]


def write_result(record: dict, scores: torch.Tensor | None, results_dir: Path,
                 cache_dir: str | Path) -> bool:
    """Save ``scores`` and append ``record``; True when both are in ``results_dir``.

    On a write error (full disk, read-only folder) the run says so in one line, keeps the record
    and scores in the first of :func:`pending_dirs` that takes them, and the next run on
    ``results_dir`` writes them (:func:`complete_pending_writes`). ``record["write_error"]`` then
    holds the message.
    """
    try:
        _save(record, scores, results_dir)
        return True
    except OSError as exc:
        reason = f"{exc.strerror or exc} [errno {exc.errno}]" if exc.errno else str(exc)
        record.pop("scores_file", None)
    kept = None
    for folder in pending_dirs(cache_dir):
        try:
            kept = save_verified({"record": record, "scores": None if scores is None else scores.detach().cpu(),
                                  "results_dir": str(results_dir.resolve())}, folder / f"{record['run_id']}.pt")
            break
        except OSError:
            continue
    where = (f"the record and scores are kept in {kept}; the next run on {results_dir} writes them"
             if kept else "they could not be kept anywhere: free space and rerun")
    record["write_error"] = f"could not write to {results_dir} ({reason}); {where}"
    log.warning(f"{record['task']} / {record['method']}: {record['write_error']}")
    return False


def complete_pending_writes(results_dir: Path, cache_dir: str | Path) -> int:
    """Write the results an earlier run kept aside for ``results_dir``; return how many."""
    target = str(Path(results_dir).resolve())
    written = 0
    for folder in pending_dirs(cache_dir):
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            claimed = path.with_name(f"{path.name}.{os.getpid()}.claimed")
            try:
                data = load_verified(path)
                if data.get("results_dir") != target:
                    continue
                os.replace(Path(str(path) + ".sha256"), Path(str(claimed) + ".sha256"))
                os.replace(path, claimed)  # another run completing the same write skips it now
            except (OSError, CorruptFileError):
                continue
            record = data["record"]
            try:
                known = {r.get("run_id") for r in read_records(results_dir)}
                if record["run_id"] not in known:
                    record.pop("write_error", None)
                    _save(record, data["scores"], Path(results_dir))
            except OSError as exc:
                os.replace(claimed, path)
                os.replace(Path(str(claimed) + ".sha256"), Path(str(path) + ".sha256"))
                log.warning(f"still cannot write to {results_dir} ({exc.strerror or exc}); the result "
                    f"of run {record['run_id']} stays in {path}")
                continue
            remove_verified(claimed)
            written += 1
            log.info(f"wrote run {record['run_id']} ({record['task']} / {record['method']}), kept "
                f"in {folder} after an earlier write to {results_dir} failed")
    return written
