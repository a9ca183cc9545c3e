"""Weights & Biases logging: one wandb run per tdabench run.

Project ``tdabench`` by default, group = the sweep, name = task/method, config = the keys people
filter on at top level (task, method, n_train, ...) plus the whole resolved config under ``cfg``, summary = LDS, interval, times and memory.
Offline by default (runs land in ``RESULTS_DIR/wandb``; ``wandb sync`` uploads them later).
"""

from __future__ import annotations

import os
from pathlib import Path

FILTER_KEYS = ("task", "method", "n_train", "n_query", "gt_subsets", "gt_seeds", "num_params")


def summary_of(record: dict) -> dict:
    out = {"status": record["status"], "lds": record.get("lds")}
    if record.get("lds_ci"):
        out["lds_ci_low"], out["lds_ci_high"] = record["lds_ci"]
    for key in ("time_s", "cpu_time_s", "flops", "peak_mem_mb", "peak_rss_mb", "load_avg"):
        for phase, v in (record.get(key) or {}).items():
            out[f"{key}/{phase}"] = v
    out["overloaded"] = record.get("overloaded")
    for k, v in record.get("model_quality", {}).items():
        out[f"model/{k}"] = v
    return out


def log_run(record: dict, wandb_cfg: dict, results_dir: str | Path, group: str) -> str | None:
    """Log ``record`` as one wandb run; returns the run's local directory (None when disabled)."""
    if wandb_cfg.get("mode", "offline") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    config = {k: record.get(k) for k in FILTER_KEYS}
    config["cfg"] = record.get("config", {})  # the whole resolved config, nested
    run = wandb.init(project=wandb_cfg.get("project", "tdabench"), entity=wandb_cfg.get("entity"),
                     mode=wandb_cfg.get("mode", "offline"), group=group,
                     name=f"{record['task']}/{record['method']}", config=config,
                     dir=str(Path(results_dir)), reinit="finish_previous")
    try:
        for k, v in summary_of(record).items():
            run.summary[k] = v
        return run.dir
    finally:
        run.finish()


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
    import json

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
