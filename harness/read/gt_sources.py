"""Where a run's ground truth can be read from (``gt.from``), and whether it belongs to the task.

``gt.from`` names a tdabench bundle (a folder or ``.tar``, :mod:`tdabench.harness.core.bundle`),
a logged wandb artifact ``wandb:ENTITY/PROJECT/NAME:VERSION`` (downloaded into the cache first,
online only), ``dattri:FOLDER`` or ``trak:FOLDER`` (the field's formats,
:mod:`tdabench.harness.read.gt_formats`). A bundle is verified once per process and file state
(:func:`open_source`); :func:`task_mismatches` compares it with the task a run builds: name, sizes,
observable, training data, queries and reference checkpoint, each by its fingerprint.
"""

from __future__ import annotations

import re
from pathlib import Path

from tdabench.harness.core.bundle import Bundle, BundleError, open_bundle
from tdabench.harness.core.fingerprints import checkpoint_sha256, data_fingerprint

#: prefixes of ``gt.from`` for the field's formats, and for a logged wandb artifact
FOREIGN = ("dattri:", "trak:")
ARTIFACT_PREFIX = "wandb:"
#: the settings of ``gt`` that determine a ground truth (those its cache key hashes)
GT_SETTINGS = ("subsets", "alpha", "seeds", "same_seed", "from_checkpoint", "finetune_epochs")

_opened: dict[tuple, Bundle] = {}


def source_path(src: str) -> Path:
    """The local path ``gt.from`` names (without a format prefix)."""
    return Path(src.split(":", 1)[1] if src.startswith(FOREIGN) else src).expanduser()


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


def open_source(src: str, cache_dir: str | Path) -> Bundle:
    """The verified bundle ``src`` names (read once per process and file state)."""
    path = download(src, cache_dir) if src.startswith(ARTIFACT_PREFIX) else Path(src).expanduser()
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (a folder with manifest.json, or a .tar of one)")
    stamp = (str(path.resolve()), *((p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(
        path.iterdir() if path.is_dir() else [path])))
    if stamp not in _opened:
        _opened.clear()
        _opened[stamp] = open_bundle(path)
    return _opened[stamp]


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
