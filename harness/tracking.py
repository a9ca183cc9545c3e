"""Weights & Biases logging: one wandb run per tdabench run.

Project ``tdabench`` by default, group = the sweep, name = task/method, config = the resolved
config plus the keys people filter on at top level, summary = LDS, interval, times and memory.
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
    for phase, v in record.get("time_s", {}).items():
        out[f"time_s/{phase}"] = v
    for phase, v in record.get("peak_mem_mb", {}).items():
        out[f"peak_mem_mb/{phase}"] = v
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
    config.update(record.get("config", {}))
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
