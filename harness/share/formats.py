"""The field's ground-truth formats written from a tdabench ground truth: dattri's benchmark
layout (``tdabench-gt export --format dattri``). What the layout holds and how it is read as a
run's ground truth is in :mod:`tdabench.harness.read.gt_formats`; in short, ``lds/indices_lds.pt``
holds the subsets' indices, ``lds/target_values_lds.pt`` minus the outcomes averaged over
retraining seeds (dattri negates its target function's values), ``models_full/0`` the reference
checkpoint, and ``loo/`` the leave-one-out pair where it was computed; tdabench's scores ``s``
[n_query, n_train] give dattri's ``lds(-s.T, ...)`` the record's per-query LDS.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch

from tdabench.harness.core.storage import atomic_write_bytes
from tdabench.harness.plugin.ground_truth import GroundTruth


def _save(obj, path: Path) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def write_dattri(target: str | Path, manifest: dict, gt: GroundTruth, model,
                 loo: tuple[torch.Tensor, torch.Tensor] | None = None) -> Path:
    """A tdabench ground truth in dattri's layout under ``target``, with ``tdabench.json`` naming what
    it holds (the bundle manifest's fields, the sign convention and every file's sha256); with
    ``loo`` (examples, outcomes of a leave-one-out builder) the leave-one-out pair too."""
    target = Path(target)
    indices = torch.stack([torch.nonzero(row)[:, 0] for row in gt.masks]).to(torch.int64)
    files = {"lds/indices_lds.pt": _save(indices, target / "lds" / "indices_lds.pt"),
             "lds/target_values_lds.pt": _save(-gt.mean_outcomes.float(), target / "lds" / "target_values_lds.pt"),
             "models_full/0/model_weights_0.pt": _save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                                       target / "models_full" / "0" / "model_weights_0.pt")}
    if loo is not None:
        files.update(write_dattri_loo(target, *loo))
    note = {"layout": "dattri benchmark (dattri 0.3.0)", "files_sha256": files,
            "target_values": f"minus the {manifest['ground_truth']['observable']} averaged over the "
                             f"{manifest['ground_truth']['retrainings']} retraining(s) of each subset (dattri's sign)",
            "scores": "dattri.metric.lds(-scores.T, (target_values, indices)) for tdabench scores [n_query, n_train]",
            "models_half": "not written: tdabench keeps outcomes, not the retrained models",
            "loo": "target_values_loo: the observable without each left-out example, averaged over seeds"
                   if loo is not None else "not written: the records computed no leave-one-out metric",
            **{k: v for k, v in manifest.items() if k != "files"}}
    atomic_write_bytes(target / "tdabench.json", (json.dumps(note, indent=1, sort_keys=True) + "\n").encode())
    return target


def write_dattri_loo(target: str | Path, examples: torch.Tensor, outcomes: torch.Tensor) -> dict:
    """dattri's leave-one-out pair under ``target/loo``: ``indices_loo.pt`` (long [S], the example
    each model left out) and ``target_values_loo.pt`` (float32 [S, n_query], the observable of the
    models trained without it, averaged over seeds, not negated, as ``calculate_loo_ground_truth``
    returns them), from a leave-one-out builder's ``outcomes`` [1 + S, K, n_query] (row 0: trained
    on every example). Returns the files' sha256."""
    target = Path(target)
    return {"loo/indices_loo.pt": _save(examples.long(), target / "loo" / "indices_loo.pt"),
            "loo/target_values_loo.pt": _save(outcomes[1:].mean(1).float(), target / "loo" / "target_values_loo.pt")}
