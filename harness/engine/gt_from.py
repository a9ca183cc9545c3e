"""A run's ground truth read instead of retrained (``gt.from``), and the ground truth and scores a
run logs as wandb artifacts (``wandb.artifacts``).

``gt.from`` names a tdabench bundle (folder or ``.tar``), a logged artifact
``wandb:ENTITY/PROJECT/NAME:VERSION``, ``dattri:FOLDER`` (dattri's benchmark layout) or
``trak:FOLDER`` (TRAK's datamodels arrays); :mod:`tdabench.harness.read.gt_sources` and
:mod:`tdabench.harness.read.gt_formats` read them. Before any work the bundle is verified (every
hash) and the run's ground-truth settings become the bundle's (:func:`adopt_settings`); then the
task's training data, queries and reference checkpoint are compared with the bundle's fingerprints
(:func:`ground_truth_source`), and a mismatch refuses the run in one line. Validation, the reference
model and the methods are as in any run: only the test ground truth is read, so the LDS equals the
one against the ground truth the bundle was exported from. The record names the source
(``gt_source``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from tdabench.harness.core.bundle import BundleError, open_bundle, write_bundle
from tdabench.harness.core.settings import RunSettings, settings_of
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.plugin.ground_truth import GroundTruth, GroundTruthBuilder, effective_seeds, gt_mode
from tdabench.harness.read.gt_formats import foreign_settings, read_foreign
from tdabench.harness.read.gt_manifest import bundle_content
from tdabench.harness.read.gt_sources import (
    ARTIFACT_PREFIX,
    FOREIGN,
    GT_SETTINGS,
    open_source,
    source_path,
    task_mismatches,
)
from tdabench.harness.read.record import RunRecord

log = logging.getLogger(__name__)


class ReadGroundTruth:
    """Stands where a :class:`GroundTruthBuilder` stands in a run, for a ground truth read from a
    file: ``build()`` returns it, nothing is retrained or waited for. ``source`` is the record's
    ``gt_source``; ``dir.name`` its ``gt_key``."""

    wait_s = 0.0
    produced = False

    def __init__(self, gt: GroundTruth, key: str, mode: str, seeds: int, source: dict):
        self.gt, self.mode, self.seeds, self.source = gt, mode, seeds, source
        self.dir = Path(key)

    def build(self) -> GroundTruth:
        return self.gt


def without_null_gt_from(cfg: dict) -> dict:
    """``cfg`` without ``gt.from`` where it is null: the setting came after records were first
    hashed, so a run that does not use it keeps the config hash of one written before it."""
    gt = cfg.get("gt")
    if not isinstance(gt, dict) or "from" not in gt or gt.get("from") is not None:
        return cfg
    return {**cfg, "gt": {k: v for k, v in gt.items() if k != "from"}}


def from_problems(s: RunSettings) -> list[str]:
    """Cheap checks of ``gt.from`` (no file is read but the path's existence)."""
    src = s.gt.source
    if src is None:
        return []
    if not isinstance(src, str) or not src:
        return [f"gt.from={src!r} must be null or the path of a ground-truth bundle (folder or .tar), "
                "dattri:FOLDER, trak:FOLDER or wandb:ENTITY/PROJECT/NAME:VERSION"]
    problems = []
    if not src.startswith(ARTIFACT_PREFIX) and not source_path(src).exists():
        problems.append(f"gt.from={src}: {source_path(src)} does not exist; give a bundle written by "
                        "tdabench-gt export")
    if s.gt.shard is not None:
        problems.append(f"gt.from={src} reads the ground truth; it cannot be combined with gt.shard "
                        "(nothing to compute)")
    return problems


def adopt_settings(s: RunSettings) -> RunSettings:
    """``s`` with the ground-truth settings of the bundle ``gt.from`` names (its subsets, alpha,
    seeds and mode) after verifying the bundle, or those a field format's subset file implies;
    ``s`` itself when ``gt.from`` is null. Raises ConfigError with the source's problem."""
    src = s.gt.source
    if src is None or from_problems(s):  # the run's config checks report them
        return s
    try:
        settings = (foreign_settings(src, s.task.get("n_train")) if src.startswith(FOREIGN)
                    else open_source(src, s.cache_dir).manifest["ground_truth"])
    except BundleError as exc:
        raise ConfigError([f"gt.from: {exc}"]) from None
    changed = {k: settings[k] for k in GT_SETTINGS if k in settings and getattr(s.gt, k) != settings[k]}
    if not changed:
        return s
    log.info("gt.from: the bundle's ground truth has " + ", ".join(f"gt.{k}={v}" for k, v in changed.items()))
    return s.replace(gt={**copy.deepcopy(s.config["gt"]), **changed})


def ground_truth_source(task, cfg: RunSettings | dict):
    """The run's ground truth: a :class:`GroundTruthBuilder` (computed and cached, as always) or,
    with ``gt.from``, a :class:`ReadGroundTruth` whose fingerprints match ``task`` (its data, its
    queries and its reference checkpoint, trained here if it is not cached). Raises ConfigError
    naming the mismatch before any ground-truth or method work."""
    s = settings_of(cfg)
    src, gt_cfg = s.gt.source, s.gt
    if src is None or not task.measures_lds:
        return GroundTruthBuilder(task, gt_cfg, s.cache_dir)
    try:
        if src.startswith(FOREIGN):
            read = read_foreign(src, task)
            gt = GroundTruth(read.masks, read.outcomes, None)
            return ReadGroundTruth(gt, read.source["gt_key"], "fresh_seeds", 1, read.source)
        bundle = open_source(src, s.cache_dir)
        problems = task_mismatches(bundle, task)
    except BundleError as exc:
        raise ConfigError([f"gt.from: {exc}"]) from None
    if problems:
        raise ConfigError([f"gt.from: {p}" for p in problems])
    gt = GroundTruth(bundle.masks(), bundle.outcomes(), bundle.degenerate())
    return ReadGroundTruth(gt, bundle.gt_key, gt_mode(gt_cfg), effective_seeds(gt_cfg), bundle.source())


def run_artifacts(rec: RunRecord, s: RunSettings, results_dir: Path, task, builder) -> list[dict]:
    """With ``wandb.artifacts`` set, the artifacts of an ``ok`` run (dicts of ``name``, ``type``,
    ``path``, ``metadata``): its ground truth as a bundle (type ``ground-truth``, ``gt-<gt_key>``,
    the manifest as metadata: the bundle ``gt.from`` named, else one written once per ground truth
    under ``cache_dir/bundles/<gt_key>/``) and its scores (type ``scores``, ``scores-<run_id>``);
    [] otherwise."""
    if not s.wandb.artifacts or not rec.is_ok or not rec.gt_key:
        return []
    if rec.gt_source:
        bundle = Path(rec.gt_source.get("path", "")) if rec.gt_source.get("format") == "tdabench-ground-truth" else None
    else:
        bundle = Path(s.cache_dir) / "bundles" / rec.gt_key
        try:
            open_bundle(bundle)
        except BundleError:  # absent or damaged: written (again) from the run's ground truth
            write_bundle(bundle, *bundle_content(task, s.config, builder, builder.build(), [rec]))
    out, manifest_sha = [], None
    if bundle is not None and bundle.exists():
        opened = open_bundle(bundle)  # verified, as every reader of it
        manifest_sha = opened.manifest_sha256
        out.append({"name": f"gt-{rec.gt_key}", "type": "ground-truth", "path": bundle,
                    "metadata": {**opened.manifest, "manifest_sha256": manifest_sha}})
    if rec.scores_file:
        out.append({"name": f"scores-{rec.run_id}", "type": "scores", "path": Path(results_dir) / rec.scores_file,
                    "metadata": {"run_id": rec.run_id, "task": rec.task, "method": rec.method, "gt_key": rec.gt_key,
                                 "manifest_sha256": manifest_sha, "lds": rec.lds, "lds_ci": rec.lds_ci,
                                 "shape": [rec.n_query, rec.n_train], "sign": "d observable_q / d beta_i"}})
    return out
