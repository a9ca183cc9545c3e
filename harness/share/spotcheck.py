"""Do a bundle's rows belong to its subsets? ``tdabench-gt verify BUNDLE --retrain N`` retrains N of
its subsets (spread over the bundle, with the seeds it records) with the task it names and
compares each retrained model's observables with the subset's row of outcomes.

Hashes prove that the files are the ones the manifest lists; only retraining shows that the
outcomes are what training on those subsets gives (rows shuffled, outcomes of another recipe or
another data order pass every hash but fail here). Retrained here, models match the bundle's to
the last bits where the arithmetic is the same (same device and libraries); elsewhere they differ
by training noise, so the comparison has a tolerance and reports the largest difference.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tdabench.harness.core.bundle import OUTCOMES, Bundle, BundleError
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.gt_sources import task_mismatches
from tdabench.harness.share.export import build_task

#: the largest difference allowed, relative to the spread of the row's outcomes over subsets
TOLERANCE = 0.05


def retrain_rows(bundle: Bundle, n: int, cache_dir: str | Path, log=print) -> list[tuple[int, float]]:
    """Retrain ``n`` subsets of ``bundle`` and compare; returns ``(row, largest difference)`` per
    row checked. Raises BundleError naming the first row whose outcomes retraining does not give."""
    m = bundle.manifest
    cfg = {"task": m["task"]["config"], "seed": m["task"]["seed"], "data_root": os.environ.get("TDABENCH_DATA")}
    task = build_task(cfg, cache_dir)
    problems = task_mismatches(bundle, task, checkpoint=bool(m["ground_truth"].get("from_checkpoint")))
    if problems:
        raise BundleError(problems[0])
    gt = {**{k: m["ground_truth"][k] for k in ("subsets", "alpha", "seeds", "same_seed", "from_checkpoint",
                                                "finetune_epochs")}, "vectorize": True, "models_per_batch": 64}
    builder = GroundTruthBuilder(task, gt, cache_dir, log=lambda msg: None)
    if not torch.equal(builder.masks, bundle.masks()):
        raise BundleError(f"{bundle.path / 'subsets.safetensors'}: the subsets are not those the manifest's task "
                          "and ground_truth settings draw")
    outcomes = bundle.outcomes()
    spread = outcomes.mean(1).std(0).clamp_min(1e-12)  # [n_query]: how much rows differ from each other
    M = outcomes.shape[0]
    rows = sorted({round(i * (M - 1) / max(1, n - 1)) for i in range(min(n, M))})
    checked = []
    for row in rows:
        got, _ = builder._retrain([row])
        diff = float(((got[0] - outcomes[row]).abs() / spread).max())
        log(f"row {row}: retrained {got.shape[1]} model(s), largest difference {diff:.2g} x the spread over subsets")
        if diff > TOLERANCE:
            raise BundleError(f"{bundle.path / OUTCOMES}: row {row} is not what retraining subset {row} gives "
                              f"(largest difference {diff:.2g} x the spread of outcomes over subsets, at most "
                              f"{TOLERANCE} allowed); the rows do not belong to the subsets")
        checked.append((row, diff))
    return checked
