"""Which run a scores file belongs to, so that ``tdabench-insight`` never draws scores over the
data of other settings.

A scores file (``RESULTS_DIR/scores/<run_id>.pt``) holds its ``run_id`` and ``config_hash``; its
run's record (in ``RESULTS_DIR/runs.jsonl``) holds the resolved config. The settings that determine
the scores are the task's, the run's ``seed`` and the method's (:data:`SCORE_KEYS`): a command
whose settings differ from the record's in any of them is refused, naming the first differences.
Given no settings, the record's are taken (``--run RUN_ID``, or a scores file alone).
"""

from __future__ import annotations

from pathlib import Path

from tdabench.harness.core.storage import load_verified
from tdabench.harness.read.record import RunRecord, scores_path
from tdabench.harness.read.results import read_records

#: the config sections that determine a run's scores
SCORE_KEYS = ("task", "seed", "method")
#: the config keys that change where things are read or how fast, never the scores
NEUTRAL_KEYS = ("results_dir", "cache_dir", "data_root", "threads", "device", "wandb", "force", "sweep_name")


class ScoresMismatch(ValueError):
    """A scores file (or run) does not belong to the settings it would be drawn with."""


def _leaves(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def differences(cfg: dict, other: dict, keys=SCORE_KEYS) -> list[str]:
    """The settings among ``keys`` where ``cfg`` and ``other`` differ: ``key=a here, b there``."""
    mine = _leaves({k: cfg.get(k) for k in keys})
    theirs = _leaves({k: other.get(k) for k in keys})
    return [f"{k}={mine.get(k)!r} here, {theirs.get(k)!r} in the run" for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k)]


def record_of(run_id: str, folders) -> tuple[RunRecord, Path] | None:
    """The record of ``run_id`` and its results folder, searched in ``folders`` (the last record
    of that id), or None."""
    for folder in folders:
        found = [r for r in read_records(folder) if r.run_id == run_id] if folder is not None else []
        if found:
            return found[-1], Path(folder)
    return None


def scores_record(path: str | Path, results_dir: str | Path | None = None) -> tuple[dict, RunRecord | None]:
    """The content of the scores file ``path`` and its run's record (looked for in the folder
    above ``scores/`` and in ``results_dir``), or None where the record is not found."""
    data = load_verified(path)
    if not isinstance(data, dict) or "scores" not in data:
        raise ScoresMismatch(f"{path} holds no 'scores': give a RESULTS_DIR/scores/<run_id>.pt of a tdabench run")
    run_id = data.get("run_id")
    found = record_of(run_id, [Path(path).resolve().parent.parent, results_dir]) if isinstance(run_id, str) else None
    return data, (found[0] if found else None)


def run_scores_file(run_id: str, results_dir: str | Path) -> tuple[RunRecord, Path]:
    """The record of ``run_id`` in ``results_dir`` and its scores file; ScoresMismatch when either
    is missing."""
    found = record_of(run_id, [results_dir])
    if found is None:
        raise ScoresMismatch(f"--run {run_id}: no record of that run in {Path(results_dir) / 'runs.jsonl'}; "
                             "give results_dir=FOLDER of the run")
    record, folder = found
    if not isinstance(record.scores_file, str):
        raise ScoresMismatch(f"--run {run_id}: the run kept no scores (status {record.status}); choose an ok run")
    return record, scores_path(folder, record.scores_file)


def check_belongs(what: str, cfg: dict, data: dict, record: RunRecord | None, config_hash: str) -> None:
    """Raise ScoresMismatch when the scores ``data`` (with their ``record``, when found) were not
    computed with the settings ``cfg`` (whose hash is ``config_hash``)."""
    run = data.get("run_id", "?")
    if record is not None and isinstance(record.config, dict):
        diff = differences(cfg, record.config)
        if diff:
            raise ScoresMismatch(
                f"{what} belongs to run {run}, whose settings differ: {'; '.join(diff[:3])}"
                f"{f' (and {len(diff) - 3} more)' if len(diff) > 3 else ''}; give only the file (or --run {run}) "
                "to take the run's settings from its record")
    elif isinstance(data.get("config_hash"), str) and data["config_hash"] != config_hash:
        raise ScoresMismatch(
            f"{what} was computed with other settings (config_hash {data['config_hash']}, these give "
            f"{config_hash}) and its run's record is not beside it; give that run's settings, or keep the file "
            "in its results folder (RESULTS_DIR/scores/, beside runs.jsonl) and give only the file")


def same_queries(what: str, cfg: dict, record: RunRecord | None) -> None:
    """Raise ScoresMismatch when a second scores file's run used another task or seed (other
    queries and training examples) than ``cfg``."""
    if record is not None and isinstance(record.config, dict):
        diff = differences(cfg, record.config, keys=("task", "seed"))
        if diff:
            raise ScoresMismatch(f"{what} belongs to run {record.run_id} on other data: {'; '.join(diff[:3])}; "
                                 "compare two runs of the same task and seed")
