"""The field's ground-truth formats, read as a run's ground truth (their writing is in
:mod:`tdabench.harness.share.formats`).

**dattri's benchmark layout** (dattri 0.3.0, ``dattri.benchmark.load``): a folder with
``lds/indices_lds.pt`` (int [M, k]: the training indices each subset model was trained on),
``lds/target_values_lds.pt`` (float [M, n_test]: the target function's values under each subset
model, averaged over its runs and negated, as ``dattri.metric.calculate_lds_ground_truth`` returns
them), ``models_full/<i>/model_weights_0.pt`` (full-data checkpoints) and
``models_half/<i>/model_weights_0.pt`` (one per subset). ``dattri.metric.lds(score, (target_values,
indices))`` takes scores [n_train, n_test] positive for helpful examples.

- Written (:func:`write_dattri`) from a tdabench ground truth: the indices of its subsets, the
  negated outcomes averaged over retraining seeds (what tdabench's LDS uses), and the reference
  checkpoint as ``models_full/0``. tdabench's scores ``s`` [n_query, n_train] (d observable /
  d beta_i) give dattri's ``lds(-s.T, ...)`` the record's per-query LDS.
- Read (``gt.from=dattri:FOLDER``) as a ground truth of a task whose training set the indices
  index and whose queries are the target columns: outcomes are the negated target values, one
  averaged retraining per subset. Where ``models_half`` is present, each subset's model is loaded
  into the task's model and must reproduce its row of target values, so rows that belong to other
  models (dattri issue #189) are refused, naming the row.

**TRAK's datamodels arrays** (``gt.from=trak:FOLDER``): ``mask.npy`` (bool [M, n_train], the
subset each model trained on) and ``val_margins.npy`` (float [M, n_query], each model's correct-class
margin on each query), as TRAK's examples load them; the observable is named ``margin``, so the
task must use it (``task.observable=margin``).

Every file is read as data only: ``torch.load(weights_only=True)`` and ``numpy.load(allow_pickle=False)``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tdabench.harness.core.bundle import BundleError
from tdabench.harness.core.fingerprints import checkpoint_sha256

#: relative and absolute tolerance of a half model's observables against its row of target values
ROW_RTOL, ROW_ATOL = 1e-4, 1e-5


@dataclass
class ForeignGroundTruth:
    """A ground truth read from a field format: masks bool [M, n_train], outcomes [M, 1, n_query]
    (one averaged retraining per subset) and what the record says of its source (``gt_source``,
    with its ``gt_key``)."""

    masks: torch.Tensor
    outcomes: torch.Tensor
    source: dict


def _load_pt(path: Path) -> tuple[torch.Tensor | dict, str]:
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # not plain data: refused, nothing ran
        raise BundleError(f"{path}: not plain tensors ({str(exc).splitlines()[0][:200]}); refused") from exc
    return obj, hashlib.sha256(data).hexdigest()


def _load_npy(path: Path) -> tuple[np.ndarray, str]:
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path}: not a numpy array file ({exc}); refused") from exc
    return arr, hashlib.sha256(path.read_bytes()).hexdigest()


def _half_models(folder: Path) -> list[list[Path]]:
    """``models_half/<i>/model_weights_*.pt`` by subset i (sorted by i, then by run)."""
    half = folder / "models_half"
    if not half.is_dir():
        return []
    subs = sorted((p for p in half.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    return [sorted(p.glob("model_weights_*.pt")) for p in subs]


def check_rows(folder: Path, task, targets: torch.Tensor, sign: float = -1.0) -> int:
    """Load each subset's half models into the task's model and compare the mean of ``sign`` x its
    query observables with the subset's row of ``targets``; returns the rows checked. Raises
    BundleError naming the first row that belongs to another model."""
    models = _half_models(folder)
    if not models:
        return 0
    if len(models) != targets.shape[0]:
        raise BundleError(f"{folder / 'models_half'}: {len(models)} subset models, lds/target_values_lds.pt has "
                          f"{targets.shape[0]} rows; rows and models cannot be matched")
    for i, runs in enumerate(models):
        values = []
        for path in runs:
            state, _ = _load_pt(path)
            values.append(sign * task.query_observables(task._model_from_state(state)).float().cpu())
        mean = torch.stack(values).mean(0)
        if not torch.allclose(mean, targets[i].float(), rtol=ROW_RTOL, atol=ROW_ATOL):
            worst = float((mean - targets[i].float()).abs().max())
            raise BundleError(f"{folder / 'lds/target_values_lds.pt'}: row {i} is not what models_half/{i} gives "
                              f"(largest difference {worst:.3g}); the ground-truth rows belong to other models")
    return len(models)


def read_dattri(folder: Path, task) -> ForeignGroundTruth:
    indices, idx_sha = _load_pt(folder / "lds" / "indices_lds.pt")
    targets, tv_sha = _load_pt(folder / "lds" / "target_values_lds.pt")
    for name, t in (("indices_lds.pt", indices), ("target_values_lds.pt", targets)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise BundleError(f"{folder / 'lds' / name}: expected a 2-d tensor, found {type(t).__name__}")
    if targets.shape[0] != indices.shape[0]:
        raise BundleError(f"{folder / 'lds/target_values_lds.pt'}: {targets.shape[0]} rows, indices_lds.pt has "
                          f"{indices.shape[0]} subsets")
    if targets.shape[1] != task.n_query:
        raise BundleError(f"{folder / 'lds/target_values_lds.pt'}: {targets.shape[1]} test columns, the task has "
                          f"task.n_query={task.n_query}")
    idx = indices.long()
    if idx.numel() and (idx.min() < 0 or idx.max() >= task.n_train):
        raise BundleError(f"{folder / 'lds/indices_lds.pt'}: indices outside [0, task.n_train={task.n_train})")
    masks = torch.zeros(idx.shape[0], task.n_train, dtype=torch.bool)
    masks.scatter_(1, idx, True)
    if bool((masks.sum(1) != idx.shape[1]).any()):
        raise BundleError(f"{folder / 'lds/indices_lds.pt'}: a subset repeats a training index")
    if not bool(torch.isfinite(targets).all()):
        raise BundleError(f"{folder / 'lds/target_values_lds.pt'}: values that are not finite")
    checked = check_rows(folder, task, targets)
    full = folder / "models_full" / "0" / "model_weights_0.pt"
    ckpt = None
    if full.is_file():
        state, _ = _load_pt(full)
        ckpt = "matches" if checkpoint_sha256(state) == checkpoint_sha256(task.checkpoint()) else "differs"
    source = {"format": "dattri", "path": str(folder.resolve()), "gt_key": f"{task.name}-dattri-{idx_sha[:12]}",
              "sha256": {"lds/indices_lds.pt": idx_sha, "lds/target_values_lds.pt": tv_sha},
              "rows_checked_against_models_half": checked, "models_full_0": ckpt,
              "outcomes": "minus target_values (dattri negates its target function's values)"}
    return ForeignGroundTruth(masks, -targets.float()[:, None, :], source)


def read_trak(folder: Path, task) -> ForeignGroundTruth:
    mask, mask_sha = _load_npy(folder / "mask.npy")
    margins, m_sha = _load_npy(folder / "val_margins.npy")
    if task.observable_kind != "margin":
        raise BundleError(f"{folder / 'val_margins.npy'}: TRAK's outcomes are correct-class margins; the task's "
                          f"observable is {task.observable_kind}: set task.observable=margin")
    if mask.ndim != 2 or mask.shape[1] != task.n_train:
        raise BundleError(f"{folder / 'mask.npy'}: shape {list(mask.shape)}, expected "
                          f"[models, task.n_train={task.n_train}]")
    if margins.ndim != 2 or margins.shape != (mask.shape[0], task.n_query):
        raise BundleError(f"{folder / 'val_margins.npy'}: shape {list(margins.shape)}, expected [{mask.shape[0]}, "
                          f"task.n_query={task.n_query}] (one row per mask)")
    if not np.isfinite(margins).all():
        raise BundleError(f"{folder / 'val_margins.npy'}: values that are not finite")
    source = {"format": "trak", "path": str(folder.resolve()), "gt_key": f"{task.name}-trak-{mask_sha[:12]}",
              "sha256": {"mask.npy": mask_sha, "val_margins.npy": m_sha}, "observable": "margin"}
    outcomes = torch.from_numpy(margins.astype(np.float32))[:, None, :]
    return ForeignGroundTruth(torch.from_numpy(mask.astype(bool)), outcomes, source)


def read_foreign(src: str, task) -> ForeignGroundTruth:
    """The ground truth of ``dattri:FOLDER`` or ``trak:FOLDER`` for ``task``."""
    kind, _, path = src.partition(":")
    folder = Path(path).expanduser()
    return (read_dattri if kind == "dattri" else read_trak)(folder, task)


def foreign_settings(src: str, n_train: int) -> dict:
    """The ground-truth settings a ``dattri:`` or ``trak:`` source implies (subsets, alpha, one
    averaged retraining per subset), read from its subset file alone, for the run's config and
    record; {} where that file is not as expected (reading the source says why)."""
    kind, _, path = src.partition(":")
    folder = Path(path).expanduser()
    if kind == "dattri":
        subsets, _ = _load_pt(folder / "lds" / "indices_lds.pt")
        shape = tuple(subsets.shape) if isinstance(subsets, torch.Tensor) else ()
        size = shape[1] if len(shape) == 2 else 0
    else:
        mask, _ = _load_npy(folder / "mask.npy")
        shape = mask.shape
        size = float(mask.sum(1).mean()) if mask.ndim == 2 and len(mask) else 0
    if len(shape) != 2 or shape[0] < 2 or not 0 < size < n_train:
        return {}
    return {"subsets": int(shape[0]), "alpha": round(size / n_train, 6), "seeds": 1, "same_seed": False,
            "from_checkpoint": False}
