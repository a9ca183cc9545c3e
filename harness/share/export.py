"""Bundles from a results folder, and bundles into a cache.

:func:`export_results` writes one bundle per ground truth the folder's ``ok`` records were scored
against (``OUT_DIR/<gt_key>/``), read from the cache the records name (or another one): the
assembled ground truth as the run used it, the task's data, query and checkpoint fingerprints,
the retraining design and seeds, the LDS ceiling the records report, and provenance. Nothing is
retrained; a reference checkpoint that is not cached is trained (it is what the fingerprints
name). :func:`import_bundle` writes a verified bundle into a cache, where a run of the same
config finds it as if it had computed it.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from tdabench.harness.core.data_paths import set_data_root
from tdabench.harness.core.registry import METRICS, TASKS
from tdabench.harness.core.storage import save_verified
from tdabench.harness.core.version import __version__, git_sha
from tdabench.harness.engine.ground_truth import GroundTruthBuilder, gt_mode
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.results import read_records
from tdabench.harness.share.bundle import (
    CHECKPOINT,
    OUTCOMES,
    SUBSETS,
    Bundle,
    BundleError,
    write_bundle,
)
from tdabench.harness.share.fingerprints import checkpoint_sha256, data_fingerprint
from tdabench.harness.share.formats import write_dattri
from tdabench.harness.share.reference import install_reference, reference_file

#: the settings of ``gt`` that determine a ground truth (those its cache key hashes)
GT_SETTINGS = ("subsets", "alpha", "seeds", "same_seed", "from_checkpoint", "finetune_epochs")


def build_task(cfg: dict, cache_dir: str | Path):
    """The task of a run's resolved config ``cfg``, caching under ``cache_dir``, on the CPU."""
    set_data_root(cfg.get("data_root"))
    return TASKS.get(cfg["task"]["name"])(cfg["task"], seed=cfg["seed"], cache_dir=cache_dir, device="cpu")


def ground_truths_of(results_dir: str | Path) -> dict[str, list[RunRecord]]:
    """The ``ok`` records of ``results_dir`` by the key of the (test) ground truth they were scored
    against, leaving out runs that read theirs from a bundle (it is already one)."""
    groups: dict[str, list[RunRecord]] = {}
    for r in read_records(results_dir):
        if r.is_ok and r.gt_key and r.lds is not None and r.split in (None, "test") and not r.gt_source:
            groups.setdefault(r.gt_key, []).append(r)
    return groups


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


def collect(records: list[RunRecord], cache_dir: str | Path | None, with_checkpoint: bool = False):
    """``(manifest, files, task, ground truth, checkpoint)`` of the ground truth ``records`` share,
    read from ``cache_dir`` (default: the first record's ``cache_dir``). Raises BundleError when it
    is not cached there or the records' config no longer gives its key."""
    cfg = records[0].config
    key = records[0].gt_key
    cache = Path(cache_dir or cfg["cache_dir"])
    task = build_task(cfg, cache)
    builder = GroundTruthBuilder(task, cfg["gt"], cache)
    if builder.dir.name != key:
        raise BundleError(f"{key}: the records' config gives the key {builder.dir.name} with this tdabench; "
                          "export with the version that computed it")
    gt = builder.cached()
    if gt is None:
        raise BundleError(f"{key}: not in the cache {cache} ({builder.dir / 'ground_truth.pt'} is missing); "
                          "pass the cache that holds it with --cache DIR")
    model = task.checkpoint()
    M, K = gt.outcomes.shape[:2]
    if gt_mode(cfg["gt"]) == "same_seed":
        seeds = torch.full((M, K), task.seed, dtype=torch.int64)
    else:
        seeds = torch.tensor([[builder.job_seed(j, k) for k in range(K)] for j in range(M)], dtype=torch.int64)
    indices = torch.stack([torch.nonzero(row)[:, 0] for row in gt.masks]) if M else torch.zeros(0, 0, dtype=torch.int64)
    outcomes = {"outcomes": gt.outcomes.float(), "query_ids": torch.tensor(task.query_ids(), dtype=torch.int64)}
    if gt.degenerate is not None:
        outcomes["degenerate"] = gt.degenerate.bool()
    files = {SUBSETS: {"indices": indices.to(torch.int64), "retrain_seeds": seeds}, OUTCOMES: outcomes}
    reference = {}
    if with_checkpoint:
        files[CHECKPOINT], reference = reference_file(task.models.reference_run())
    manifest = {
        "gt_key": key,
        "task": {"name": task.name, "config": cfg["task"], "seed": task.seed, "n_train": task.n_train,
                 "n_query": task.n_query, "observable": task.observable_kind},
        "data": data_fingerprint(task),
        "checkpoint": {"sha256": checkpoint_sha256(model), "file": CHECKPOINT if with_checkpoint else None,
                       **reference},
        "ground_truth": {"kind": "lds", "subsets": int(M), "subset_size": int(indices.shape[1]) if M else 0,
                         "retrainings": int(K), "mode": gt_mode(cfg["gt"]), "observable": task.observable_kind,
                         **{k: cfg["gt"].get(k) for k in GT_SETTINGS},
                         "outcomes_mean": "the LDS correlates with outcomes averaged over retrainings"},
        "lds_ceiling": _ceiling(records),
        "provenance": _provenance(records, builder.dir / "ground_truth.pt"),
    }
    return manifest, files, task, gt, model


def leave_one_out(records: list[RunRecord], task, cache_dir: str | Path | None):
    """``(examples, outcomes)`` of the leave-one-out outcomes the records' ``loo`` metric used, when
    they are cached (the metric's ``builder``, found through the registry), else None."""
    with_loo = [r for r in records if "loo" in ((r.metrics or {}).keys())]
    if not with_loo or "loo" not in METRICS.names() or not hasattr(METRICS.get("loo"), "builder"):
        return None
    cfg = {**with_loo[0].config, "cache_dir": str(cache_dir or with_loo[0].config["cache_dir"])}
    builder = METRICS.get("loo")().builder(task, cfg)
    out = builder.cached()
    return None if out is None else (builder.examples, out.outcomes)


def export_results(results_dir: str | Path, out_dir: str | Path, cache_dir: str | Path | None = None,
                   fmt: str = "tdabench", with_checkpoint: bool = False, log=print) -> list[Path]:
    """One bundle (``fmt='tdabench'``) or one dattri layout (``fmt='dattri'``) per ground truth of
    ``results_dir``'s records, in ``out_dir/<gt_key>/``; returns their folders."""
    groups = ground_truths_of(results_dir)
    if not groups:
        raise BundleError(f"{results_dir}: no ok record scored against a computed ground truth; nothing to export")
    written = []
    for key, records in groups.items():
        manifest, files, task, gt, model = collect(records, cache_dir, with_checkpoint and fmt == "tdabench")
        target = Path(out_dir) / key
        if fmt == "dattri":
            write_dattri(target, manifest, gt, model, leave_one_out(records, task, cache_dir))
        else:
            write_bundle(target, manifest, files)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        log(f"{target}: {fmt} ground truth of {len(records)} record(s), {manifest['ground_truth']['subsets']} "
            f"subsets x {manifest['ground_truth']['retrainings']} retrainings x {task.n_query} queries, "
            f"{size / 1024:.0f} KiB")
        written.append(target)
    return written


def import_bundle(bundle: Bundle, cache_dir: str | Path, check_task: bool = True, log=print) -> Path:
    """Write ``bundle``'s ground truth into ``cache_dir`` under its key, as a run computing it would
    have (``ground_truth/<gt_key>/ground_truth.pt``, checksummed), and its reference run where it
    holds one. With ``check_task`` the task the manifest names is built and its data and queries
    are compared first."""
    m = bundle.manifest
    if check_task or m["checkpoint"].get("file"):
        cfg = {"task": m["task"]["config"], "seed": m["task"]["seed"], "data_root": os.environ.get("TDABENCH_DATA")}
        task = build_task(cfg, cache_dir)
        problems = task_mismatches(bundle, task, checkpoint=False) if check_task else []
        if problems:
            raise BundleError("; ".join(problems))
        if m["checkpoint"].get("file"):
            log(install_reference(bundle, task))
    target = Path(cache_dir) / "ground_truth" / bundle.gt_key / "ground_truth.pt"
    save_verified({"masks": bundle.masks(), "outcomes": bundle.outcomes(), "degenerate": bundle.degenerate()}, target)
    return target


def task_mismatches(bundle: Bundle, task, checkpoint: bool = True) -> list[str]:
    """Why ``bundle`` is not a ground truth of ``task`` (one line each): task name, sizes,
    observable, training data, queries and, with ``checkpoint``, the reference checkpoint."""
    m, where = bundle.manifest, bundle.path / "manifest.json"
    t = m["task"]
    problems = []
    for field, want, have in (("task.name", t["name"], task.name), ("task.n_train", t["n_train"], task.n_train),
                              ("task.n_query", t["n_query"], task.n_query),
                              ("task.observable", t.get("observable", "loss"), task.observable_kind)):
        if want != have:
            problems.append(f"{where}: field {field}={want!r}, the run's task has {have!r}")
    if problems:
        return problems
    data = data_fingerprint(task)
    for field in ("train_sha256", "query_sha256", "query_ids"):
        if data[field] != m["data"][field]:
            what = {"train_sha256": "training data (inputs and labels in order)",
                    "query_sha256": "query inputs and targets", "query_ids": "query ids"}[field]
            return [f"{where}: field data.{field} differs from the run's {what}: the bundle was made for other data"]
    if checkpoint and checkpoint_sha256(task.checkpoint()) != m["checkpoint"]["sha256"]:
        return [f"{where}: field checkpoint.sha256 differs from the run's reference checkpoint (task.seed, recipe "
                "or the machine's arithmetic differ); the ground truth belongs to another model"]
    return []
