"""A run's ground truth read instead of retrained: ``gt.from=BUNDLE`` (a tdabench bundle, folder
or ``.tar``, or a logged artifact ``wandb:ENTITY/PROJECT/NAME:VERSION``), ``gt.from=dattri:FOLDER``
(dattri's benchmark layout) or ``gt.from=trak:FOLDER``
(TRAK's datamodels arrays, ``mask.npy`` and ``val_margins.npy``).

Before any work the bundle is verified (every hash) and the run's ground-truth settings become
the bundle's (:func:`adopt_settings`); then the task's training data, queries and reference
checkpoint are compared with the bundle's fingerprints (:func:`ground_truth_source`), and a
mismatch refuses the run in one line. Validation, the reference model and the methods are as in
any run: only the test ground truth is read, so the LDS equals the one against the ground truth
the bundle was exported from. The record names the source (``gt_source``).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.ground_truth import GroundTruth, GroundTruthBuilder, effective_seeds, gt_mode
from tdabench.harness.share.artifacts import ARTIFACT_PREFIX, download
from tdabench.harness.share.bundle import Bundle, BundleError, open_bundle
from tdabench.harness.share.export import GT_SETTINGS, task_mismatches
from tdabench.harness.share.formats import read_foreign
from tdabench.harness.share.reading import ReadGroundTruth

log = logging.getLogger(__name__)

#: prefixes of ``gt.from`` for the field's formats
FOREIGN = ("dattri:", "trak:")


def gt_from(cfg: dict) -> str | None:
    return (cfg.get("gt") or {}).get("from")


def without_null_gt_from(cfg: dict) -> dict:
    """``cfg`` without ``gt.from`` where it is null: the setting came after records were first
    hashed, so a run that does not use it keeps the config hash of one written before it."""
    gt = cfg.get("gt")
    if not isinstance(gt, dict) or "from" not in gt or gt["from"] is not None:
        return cfg
    return {**cfg, "gt": {k: v for k, v in gt.items() if k != "from"}}


def from_problems(cfg: dict) -> list[str]:
    """Cheap checks of ``gt.from`` (no file is read but the path's existence)."""
    src = gt_from(cfg)
    if src is None:
        return []
    if not isinstance(src, str) or not src:
        return [f"gt.from={src!r} must be null or the path of a ground-truth bundle (folder or .tar), "
                "dattri:FOLDER or trak:FOLDER"]
    problems = []
    path = Path(src.split(":", 1)[1] if src.startswith(FOREIGN) else src).expanduser()
    if not src.startswith(ARTIFACT_PREFIX) and not path.exists():
        problems.append(f"gt.from={src}: {path} does not exist; give a bundle written by tdabench-gt export")
    if (cfg.get("gt") or {}).get("shard") is not None:
        problems.append(f"gt.from={src} reads the ground truth; it cannot be combined with gt.shard "
                        "(nothing to compute)")
    return problems


_opened: dict[tuple, Bundle] = {}


def _open(src: str, cache_dir: str | Path) -> Bundle:
    """The verified bundle at ``src`` (read once per process and file state); a logged wandb
    artifact (``wandb:ENTITY/PROJECT/NAME:VERSION``) is downloaded into the cache first."""
    path = download(src, cache_dir) if src.startswith(ARTIFACT_PREFIX) else Path(src).expanduser()
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (a folder with manifest.json, or a .tar of one)")
    stamp = (str(path.resolve()), *((p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(
        path.iterdir() if path.is_dir() else [path])))
    if stamp not in _opened:
        _opened.clear()
        _opened[stamp] = open_bundle(path)
    return _opened[stamp]


def adopt_settings(cfg: dict) -> dict:
    """``cfg`` with the ground-truth settings of the bundle ``gt.from`` names (its subsets, alpha,
    seeds and mode), after verifying the bundle; ``cfg`` itself when ``gt.from`` is null or names a
    field format (whose settings follow from its arrays). Raises ConfigError with the bundle's problem."""
    src = gt_from(cfg)
    if src is None or src.startswith(FOREIGN):
        return cfg
    try:
        bundle = _open(src, cfg["cache_dir"])
    except BundleError as exc:
        raise ConfigError([f"gt.from: {exc}"]) from None
    wanted = {k: bundle.manifest["ground_truth"].get(k) for k in GT_SETTINGS}
    changed = {k: v for k, v in wanted.items() if cfg["gt"].get(k) != v}
    if not changed:
        return cfg
    log.info("gt.from: the bundle's ground truth has " + ", ".join(f"gt.{k}={v}" for k, v in changed.items()))
    out = copy.deepcopy(cfg)
    out["gt"].update(changed)
    return out


def ground_truth_source(task, cfg: dict):
    """The run's ground truth: a :class:`GroundTruthBuilder` (computed and cached, as always) or,
    with ``gt.from``, a :class:`ReadGroundTruth` whose fingerprints match ``task`` (its data, its
    queries and its reference checkpoint, trained here if it is not cached). Raises ConfigError
    naming the mismatch before any ground-truth or method work."""
    src = gt_from(cfg)
    if src is None or not task.measures_lds:
        return GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"])
    try:
        if src.startswith(FOREIGN):
            return read_foreign(src, task)
        bundle = _open(src, cfg["cache_dir"])
        problems = task_mismatches(bundle, task)
    except BundleError as exc:
        raise ConfigError([f"gt.from: {exc}"]) from None
    if problems:
        raise ConfigError([f"gt.from: {p}" for p in problems])
    gt = GroundTruth(bundle.masks(), bundle.outcomes(), bundle.degenerate())
    return ReadGroundTruth(gt, bundle.gt_key, gt_mode(cfg["gt"]), effective_seeds(cfg["gt"]), bundle.source())
