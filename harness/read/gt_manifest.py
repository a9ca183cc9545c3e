"""The manifest and files of a ground-truth bundle, from a task, its ground truth and the records
scored against it (shared by ``tdabench-gt export`` and the run that logs its ground truth as a
wandb artifact).

The manifest names what the ground truth was made from: the task (name, full config, seed, sizes,
observable), fingerprints of the training data, the queries and the reference checkpoint, the
retraining design (subsets, subset size, alpha, seeds, mode), the LDS ceiling the records report,
and provenance (where and when it was computed, by which tdabench, with a command that recomputes
it, and where it was exported). The files: the subsets' indices and retraining seeds, the outcomes
with the query ids and the degenerate flags.
"""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from tdabench.harness.core.bundle import OUTCOMES, SUBSETS
from tdabench.harness.core.fingerprints import checkpoint_sha256, data_fingerprint
from tdabench.harness.core.version import __version__, git_sha
from tdabench.harness.read.gt_sources import GT_SETTINGS
from tdabench.harness.read.record import RunRecord


def _command(cfg: dict) -> str:
    """A ``tdabench`` command line whose ground truth is this one: the task, its seed and every
    task and ground-truth setting."""
    def flat(prefix: str, node: dict):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from flat(f"{prefix}{k}.", v)
            elif k != "name":
                yield f"{prefix}{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
    task = {k: v for k, v in cfg["task"].items() if k != "method_defaults"}
    gt = {k: cfg["gt"][k] for k in GT_SETTINGS if k in cfg["gt"]}
    return " ".join(["tdabench", f"task={cfg['task']['name']}", f"seed={cfg['seed']}", *flat("task.", task),
                     *flat("gt.", gt)])


def _provenance(records: list[RunRecord], assembled: Path) -> dict:
    """Where and when the ground truth was computed (the run that produced it, else the first
    record; its end is when the cache file was written, its start that minus the producing run's
    ground-truth phase), and where it was exported."""
    producer = next((r for r in records if r.gt_cached is False), None)
    first = producer or records[0]
    end = datetime.fromtimestamp(assembled.stat().st_mtime, timezone.utc)
    phase = (producer.time_s or {}).get("ground_truth") if producer else None
    return {"computed": {"version": first.version, "git_sha": first.git_sha, "host": first.host,
                         "platform": first.platform, "device": first.device, "command": _command(first.config),
                         "started": (end - timedelta(seconds=phase)).isoformat(timespec="seconds") if phase else None,
                         "finished": end.isoformat(timespec="seconds"), "by_this_run": producer is not None},
            "exported": {"version": __version__, "git_sha": git_sha(), "host": platform.node(),
                         "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
                         "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}}


def _ceiling(records: list[RunRecord]) -> dict | None:
    r = next((r for r in records if r.lds_ceiling is not None or r.gt_reliability is not None), None)
    if r is None:
        return None
    return {"ceiling": r.lds_ceiling, "ceiling_ci": r.lds_ceiling_ci, "reliability": r.gt_reliability,
            "reliability_ci": r.gt_reliability_ci, "bootstrap": r.config["lds"]["bootstrap"], "seed": r.config["seed"]}


def bundle_content(task, cfg: dict, builder, gt, records: list[RunRecord]) -> tuple[dict, dict]:
    """``(manifest, files)`` of the ground truth ``gt`` (masks, outcomes [M, K, n_query],
    degenerate) of ``task`` under the run config ``cfg``, computed by ``builder`` (its key
    ``dir.name``, its ``mode``, its ``job_seed(row, k)`` and its cache folder ``dir``), which
    ``records`` were scored against."""
    key = builder.dir.name
    model = task.checkpoint()
    M, K = gt.outcomes.shape[:2]
    if builder.mode == "same_seed":
        seeds = torch.full((M, K), task.seed, dtype=torch.int64)
    else:
        seeds = torch.tensor([[builder.job_seed(j, k) for k in range(K)] for j in range(M)], dtype=torch.int64)
    indices = torch.stack([torch.nonzero(row)[:, 0] for row in gt.masks]) if M else torch.zeros(0, 0, dtype=torch.int64)
    outcomes = {"outcomes": gt.outcomes.float(), "query_ids": torch.tensor(task.query_ids(), dtype=torch.int64)}
    if gt.degenerate is not None:
        outcomes["degenerate"] = gt.degenerate.bool()
    files = {SUBSETS: {"indices": indices.to(torch.int64), "retrain_seeds": seeds}, OUTCOMES: outcomes}
    manifest = {
        "gt_key": key,
        "task": {"name": task.name, "config": cfg["task"], "seed": task.seed, "n_train": task.n_train,
                 "n_query": task.n_query, "observable": task.observable_kind},
        "data": data_fingerprint(task),
        "checkpoint": {"sha256": checkpoint_sha256(model), "file": None},
        "ground_truth": {"kind": "lds", "subsets": int(M), "subset_size": int(indices.shape[1]) if M else 0,
                         "retrainings": int(K), "mode": builder.mode, "observable": task.observable_kind,
                         **{k: cfg["gt"].get(k) for k in GT_SETTINGS},
                         "outcomes_mean": "the LDS correlates with outcomes averaged over retrainings"},
        "lds_ceiling": _ceiling(records),
        "provenance": _provenance(records, builder.dir / "ground_truth.pt"),
    }
    return manifest, files
