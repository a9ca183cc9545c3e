"""Ground truths and scores as Weights & Biases artifacts.

With ``wandb.artifacts=true`` a run logs, besides its wandb run, two artifacts
(:func:`run_artifacts`): its ground truth as a bundle (type ``ground-truth``, name
``gt-<gt_key>``, the bundle's manifest as metadata; the bundle is written once per ground truth
under ``cache_dir/bundles/<gt_key>/``, or is the bundle ``gt.from`` named) and its score matrix
(type ``scores``, name ``scores-<run_id>``, with the run id, method, ground-truth key, manifest
sha256 and LDS as metadata). Offline, the files are staged inside the offline run's folder and the
artifact, with its manifest and metadata, is in its ``run-*.wandb`` file; ``wandb sync`` uploads
them. :func:`download` fetches a logged bundle (``wandb:ENTITY/PROJECT/NAME:VERSION``, online
only) into the cache, where it is verified like any bundle.
"""

from __future__ import annotations

import re
from pathlib import Path

from tdabench.harness.read.record import RunRecord
from tdabench.harness.share.bundle import BundleError, open_bundle, write_bundle
from tdabench.harness.share.export import collect

ARTIFACT_PREFIX = "wandb:"


def _bundle_for_run(record: dict, cfg: dict) -> Path | None:
    """The bundle folder of the run's ground truth: the one ``gt.from`` named, else the one in
    ``cache_dir/bundles/<gt_key>/`` (written from the cache the first time). None for a ground truth
    read from a field format."""
    source = record.get("gt_source")
    if source:
        path = Path(source["path"])
        return path if source.get("format") == "tdabench-ground-truth" and path.exists() else None
    folder = Path(cfg["cache_dir"]) / "bundles" / record["gt_key"]
    try:
        open_bundle(folder)
    except BundleError:  # absent or damaged: written (again) from the cache
        manifest, files, *_ = collect([RunRecord.from_dict(record)], cfg["cache_dir"])
        write_bundle(folder, manifest, files)
    return folder


def run_artifacts(record: dict, cfg: dict, results_dir: Path) -> list[dict]:
    """The artifacts of an ``ok`` run with ``wandb.artifacts`` set: dicts of ``name``, ``type``,
    ``path`` (a folder or a file) and ``metadata``; [] otherwise."""
    if not (cfg.get("wandb") or {}).get("artifacts") or record.get("status") != "ok" or not record.get("gt_key"):
        return []
    out = []
    bundle = _bundle_for_run(record, cfg)
    manifest_sha = None
    if bundle is not None:
        opened = open_bundle(bundle)  # verified, as every reader of it
        manifest_sha = opened.manifest_sha256
        out.append({"name": f"gt-{record['gt_key']}", "type": "ground-truth", "path": bundle,
                    "metadata": {**opened.manifest, "manifest_sha256": manifest_sha}})
    if record.get("scores_file"):
        out.append({"name": f"scores-{record['run_id']}", "type": "scores",
                    "path": Path(results_dir) / record["scores_file"],
                    "metadata": {"run_id": record["run_id"], "task": record["task"], "method": record["method"],
                                 "gt_key": record["gt_key"], "manifest_sha256": manifest_sha,
                                 "lds": record.get("lds"), "lds_ci": record.get("lds_ci"),
                                 "shape": [record.get("n_query"), record.get("n_train")],
                                 "sign": "d observable_q / d beta_i"}})
    return out


def download(src: str, cache_dir: str | Path) -> Path:
    """The bundle of the logged artifact ``wandb:ENTITY/PROJECT/NAME:VERSION``, downloaded into
    ``cache_dir/bundles/wandb/`` (needs a network and a wandb login)."""
    import wandb

    name = src[len(ARTIFACT_PREFIX):]
    target = Path(cache_dir) / "bundles" / "wandb" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    try:
        wandb.Api().artifact(name, type="ground-truth").download(root=str(target))
    except Exception as exc:  # network, login, unknown name: one line
        raise BundleError(f"{src}: could not be downloaded ({type(exc).__name__}: {str(exc)[:200]}); "
                          "wandb artifacts need a network and `wandb login`") from exc
    return target
