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
from pathlib import Path

from tdabench.harness.core.bundle import CHECKPOINT, Bundle, BundleError, write_bundle
from tdabench.harness.core.data_paths import set_data_root
from tdabench.harness.core.registry import METRICS, TASKS
from tdabench.harness.core.storage import save_verified
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.gt_manifest import bundle_content
from tdabench.harness.read.gt_sources import task_mismatches
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.results import read_records
from tdabench.harness.share.formats import write_dattri
from tdabench.harness.share.reference import install_reference, reference_file


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
    manifest, files = bundle_content(task, cfg, builder, gt, records)
    if with_checkpoint:
        files[CHECKPOINT], reference = reference_file(task.reference_run())
        manifest["checkpoint"].update(file=CHECKPOINT, **reference)
    model = task.checkpoint()
    return manifest, files, task, gt, model


def leave_one_out(records: list[RunRecord], task, cache_dir: str | Path | None):
    """``(examples, outcomes)`` of the leave-one-out outcomes the records' ``loo`` metric used, when
    they are cached (the metric's ``builder``, found through the registry), else None."""
    with_loo = [r for r in records if "loo" in r.metric_entries]
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
