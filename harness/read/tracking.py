"""Weights & Biases logging: one wandb run per tdabench run, named and numbered like the leaderboard.

Project and entity from ``wandb.project`` / ``wandb.entity``; group = the sweep (``sweep_name``,
see :func:`sweep_group`); name = ``task/method`` plus ``[setting]`` when the method's parameters
differ from its defaults. Config: the keys people filter on at top level (task, method, n_train,
...), the ids that match a wandb run to its record and scores file (``run_id``, ``config_hash``,
``gt_key``, ``git_sha``, ``version``), the ``ground_truth`` and ``setting`` labels, and the whole
resolved config under ``cfg``. Summary: the leaderboard's numbers under the leaderboard's names
(see :func:`summary_of`). Offline by default (runs land in ``RESULTS_DIR/wandb``; ``wandb sync``
uploads them later).
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from tdabench.harness.core.storage import content_hash
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import ground_truth_label, record_setting, run_cost

FILTER_KEYS = ("task", "method", "n_train", "n_query", "gt_subsets", "gt_seeds", "num_params")
ID_KEYS = ("run_id", "config_hash", "gt_key", "git_sha", "version", "group")
#: the file in a results folder that holds its sweep's wandb group, so a resumed sweep keeps it
GROUP_FILE = "wandb_group.json"


def sweep_group(results_dir: str | Path, sweep_name: str | None, today: date | None = None) -> str:
    """The wandb group of runs written to ``results_dir``: ``sweep_name`` when given (and stored
    for later runs into the folder), else the group stored in ``RESULTS_DIR/wandb_group.json`` by
    the folder's first run, else a new readable name, ``<folder>-<YYYY-MM-DD>``, stored there.
    So every run into one results folder, a resumed sweep's included, lands in one group."""
    from tdabench.harness.core.storage import atomic_write_bytes

    path = Path(results_dir) / GROUP_FILE
    if sweep_name:
        stored = _stored_group(path)
        if stored != str(sweep_name):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, json.dumps({"group": str(sweep_name)}).encode())
            except OSError:  # an unwritable results_dir is reported by the config checks
                pass
        return str(sweep_name)
    stored = _stored_group(path)
    if stored:
        return stored
    name = f"{Path(results_dir).resolve().name}-{(today or date.today()).isoformat()}"
    tmp = path.with_name(f".{GROUP_FILE}.{os.getpid()}.tmp")
    try:  # complete file first, then linked into place only if absent: of several parallel runs
        path.parent.mkdir(parents=True, exist_ok=True)  # the first one names the group
        tmp.write_text(json.dumps({"group": name}))
        os.link(tmp, path)
    except FileExistsError:
        return _stored_group(path) or name
    except OSError:  # an unwritable results_dir is reported by the config checks
        return name
    finally:
        tmp.unlink(missing_ok=True)
    return name


def _stored_group(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("group") or None
    except (OSError, ValueError, AttributeError):
        return None


def summary_of(record: RunRecord) -> dict:
    """The record's numbers under the leaderboard's column names: status, lds, lds_ci_low,
    lds_ci_high, normalized_lds, lds_ceiling (+ _ci_low / _ci_high), gt_reliability, trainings,
    fit_s, score_s, total_s, peak_mem_mb, flops (fit + score, once recorded), test_acc; per phase
    ``<phase>_s`` (wall seconds), ``<phase>_cpu_s``, ``<phase>_peak_mem_mb``, ``<phase>_flops``;
    ``overloaded``; the per-query LDS as a list ``lds_per_query``; for a tuned run ``val_lds``
    (its best trial's validation LDS) and ``tune_trials``; and per metric of the record's
    ``metrics`` with a value ``metric/<name>`` (+ ``_ci_low``, ``_ci_high``, ``_ceiling``)."""
    out = {"status": record.status, "lds": record.lds, "normalized_lds": record.normalized_lds,
           "lds_ceiling": record.lds_ceiling, "gt_reliability": record.gt_reliability,
           "trainings": record.trainings}
    if record.lds_ci:
        out["lds_ci_low"], out["lds_ci_high"] = record.lds_ci
    if record.lds_ceiling_ci:
        out["lds_ceiling_ci_low"], out["lds_ceiling_ci_high"] = record.lds_ceiling_ci
    out.update({k: v for k, v in run_cost(record).items() if v is not None and k != "from_cache"})
    for field, suffix in (("time_s", "_s"), ("cpu_time_s", "_cpu_s"), ("peak_mem_mb", "_peak_mem_mb"),
                          ("flops", "_flops"), ("peak_rss_mb", "_peak_rss_mb"), ("load_avg", "_load_avg")):
        for phase, v in (getattr(record, field) or {}).items():
            out[f"{phase}{suffix}"] = v
    for k, v in (record.model_quality or {}).items():
        out[k] = v
    if record.has("overloaded"):
        out["overloaded"] = bool(record.overloaded)
    if record.lds_per_query:
        out["lds_per_query"] = record.lds_per_query
    if record.tuning:
        out["val_lds"], out["tune_trials"] = record.tuning.val_lds, record.tuning.trials
    for name, m in record.metric_entries.items():
        if m.value is not None:
            low, high = m.interval
            out.update({f"metric/{name}": m.value, f"metric/{name}_ci_low": low,
                        f"metric/{name}_ci_high": high, f"metric/{name}_ceiling": m.ceiling})
    return {k: v for k, v in out.items() if v is not None}


def run_name(record: RunRecord, setting: str) -> str:
    return f"{record.task}/{record.method}" + (f" [{setting}]" if setting else "")


def log_run(record: RunRecord, wandb_cfg: dict, results_dir: str | Path, group: str,
            artifacts: list[dict] = ()) -> str | None:
    """Log ``record`` as one wandb run, with ``artifacts`` (dicts of ``name``, ``type``, ``path`` of a
    folder or file, ``metadata``); returns the run's local directory (None when disabled)."""
    if wandb_cfg.get("mode", "offline") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    setting = record_setting(record)
    config = {k: getattr(record, k) for k in FILTER_KEYS + ID_KEYS}
    config.update(ground_truth=ground_truth_label(record), setting=setting)
    config["cfg"] = record.config or {}  # the whole resolved config, nested
    run = wandb.init(project=wandb_cfg.get("project", "tdabench"), entity=wandb_cfg.get("entity"),
                     mode=wandb_cfg.get("mode", "offline"), group=group,
                     name=run_name(record, setting), config=config,
                     dir=str(Path(results_dir)), reinit="finish_previous")
    try:
        for k, v in summary_of(record).items():
            run.summary[k] = v
        for spec in artifacts:
            log_artifact(run, spec)
        return run.dir
    finally:
        run.finish()


def log_artifact(run, spec: dict) -> None:
    """Log one artifact of ``run``; its files are staged inside the run's own folder (offline, they
    stay there until ``wandb sync`` uploads them)."""
    import wandb

    before = os.environ.get("WANDB_DATA_DIR")
    os.environ["WANDB_DATA_DIR"] = str(Path(run.dir).parent / "artifacts")
    try:
        art = wandb.Artifact(spec["name"], type=spec["type"], metadata=spec["metadata"])
        path = Path(spec["path"])
        art.add_dir(str(path)) if path.is_dir() else art.add_file(str(path))
        run.log_artifact(art)
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def offline_artifacts(run_dir: str | Path) -> list[dict]:
    """The artifacts an offline run folder logged: name, type, metadata and manifest entries
    (path, digest, staged file), read back from its ``.wandb`` file."""
    run_file = next(Path(run_dir).glob("run-*.wandb"))
    out = []
    for rec in _offline_records(run_file):
        if rec.WhichOneof("record_type") == "artifact":
            a = rec.artifact
            out.append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                        "files": {c.path: {"digest": c.digest, "local_path": c.local_path}
                                  for c in a.manifest.contents}})
    return out


def _offline_records(path: Path):
    """Yield the protobuf records of an offline ``run-*.wandb`` file (a LevelDB-style log:
    a 7-byte header, then 32 KiB blocks of [crc32 (4), length (2, little-endian), type (1)] chunks
    whose payloads, joined over FIRST/MIDDLE/LAST chunks, are ``Record`` messages)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file")
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a chunk header: skip it
            pos += block - pos % block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 and length == 0:
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec
            pending = b""


def read_offline_run(run_dir: str | Path) -> dict:
    """Config and summary of an offline wandb run folder, read back from its ``.wandb`` file."""

    run_file = next(Path(run_dir).glob("run-*.wandb"))
    config, summary, name, group = {}, {}, None, None
    for rec in _offline_records(run_file):
        which = rec.WhichOneof("record_type")
        if which == "run":
            name, group = rec.run.display_name, rec.run.run_group
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif which == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif which == "summary":
            for item in rec.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                summary[key] = json.loads(item.value_json)
    return {"name": name, "group": group, "config": config, "summary": summary}


def summary_run_id(out: str | Path, ground_truth: str, groups: list[str]) -> str:
    """The wandb id of the leaderboard's summary run of ``ground_truth`` written into ``out`` for
    the runs of ``groups``: the same at every call, so wandb resumes (updates) that run."""
    return "leaderboard-" + content_hash({"out": str(Path(out).resolve()), "gt": ground_truth, "groups": groups})
