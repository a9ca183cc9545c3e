"""Retraining ground truth for the LDS.

M subset masks over the training set (each keeps exactly round(alpha * n) examples, seeded); for
each subset, K models are retrained (from scratch by default, or fine-tuned from the reference
checkpoint) and every query's observable is recorded. Outcomes are kept per seed, ``[M, K,
n_query]``, so the noise of retraining can be measured; the LDS uses their mean over seeds.

Results are cached under a content hash of everything that determines them, written atomically
with a checksum, and computed in shards (``gt.shard`` / ``gt.num_shards``) that any process can
compute and any later run assembles. A file lock per shard keeps concurrent runs from computing
the same shard twice; the time a run spends waiting for another run's lock is kept apart
(:attr:`GroundTruthBuilder.wait_s`), as is whether this run produced anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from harness.storage import content_hash, load_or_compute

FORMAT_VERSION = 1


@dataclass
class GroundTruth:
    masks: torch.Tensor  # bool [M, n_train]
    outcomes: torch.Tensor  # float [M, K, n_query]

    @property
    def mean_outcomes(self) -> torch.Tensor:
        """Outcomes averaged over retraining seeds: [M, n_query]."""
        return self.outcomes.mean(dim=1)


def make_masks(n: int, subsets: int, alpha: float, seed: int) -> torch.Tensor:
    """``subsets`` x ``n`` boolean masks, each with exactly round(alpha * n) ones."""
    k = int(round(alpha * n))
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for j in range(subsets):
        masks[j, torch.randperm(n, generator=g)[:k]] = True
    return masks


def retrain_seed(seed: int, subset: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, subset, k]).generate_state(1)[0])


def shard_ids(subsets: int, shard: int, num_shards: int) -> list[int]:
    return list(range(shard, subsets, num_shards))


def gt_key(task, gt: dict) -> str:
    parts = {k: gt[k] for k in ("subsets", "alpha", "seeds", "from_checkpoint", "finetune_epochs")}
    return content_hash({"task": task.fingerprint(), "gt": parts, "format": FORMAT_VERSION})


class GroundTruthBuilder:
    """Computes, caches and assembles the ground truth of one task and ``gt`` config."""

    def __init__(self, task, gt: dict, cache_dir: str | Path, log=print):
        self.task = task
        self.gt = gt
        self.log = log
        self.dir = Path(cache_dir) / "ground_truth" / f"{task.name}-{gt_key(task, gt)}"
        self.masks = make_masks(task.n_train, gt["subsets"], gt["alpha"], task.seed)
        #: seconds spent waiting for another process that held a ground-truth lock
        self.wait_s = 0.0
        #: whether this builder computed a shard or assembled the ground truth itself
        self.produced = False

    def _waited(self, seconds: float) -> None:
        self.wait_s += seconds

    def _retrain(self, subsets: list[int]) -> torch.Tensor:
        """Observables of every query for each seed retrained on each subset: [len, K, n_query]."""
        task, gt = self.task, self.gt
        init, recipe = None, None
        if gt["from_checkpoint"]:
            init = task.checkpoint().state_dict()
            recipe = task.recipe()
            recipe.epochs = gt["finetune_epochs"]
        jobs = [(j, k) for j in subsets for k in range(gt["seeds"])]
        idx = torch.stack([torch.nonzero(self.masks[j])[:, 0] for j, _ in jobs])
        seeds = [retrain_seed(task.seed, j, k) for j, k in jobs]
        models = task.fit_many(idx, seeds, init, recipe, vectorize=gt.get("vectorize", True))
        outs = torch.stack([task.query_observables(m).cpu() for m in models])
        return outs.view(len(subsets), gt["seeds"], -1)

    def shard_path(self, shard: int, num_shards: int) -> Path:
        return self.dir / f"shard-{shard}-of-{num_shards}.pt"

    def compute_shard(self, shard: int, num_shards: int) -> dict:
        ids = shard_ids(self.gt["subsets"], shard, num_shards)

        def compute():
            self.produced = True
            desc = f"ground truth {self.task.name}" + (f" shard {shard}/{num_shards}" if num_shards > 1 else "")
            per_batch = max(1, self.gt.get("models_per_batch", 64) // self.gt["seeds"])
            outs = []
            with tqdm(total=len(ids) * self.gt["seeds"], desc=desc, unit="model", mininterval=2) as bar:
                for i in range(0, len(ids), per_batch):
                    chunk = ids[i:i + per_batch]
                    outs.append(self._retrain(chunk))
                    bar.update(len(chunk) * self.gt["seeds"])
            return {"ids": ids, "outcomes": torch.cat(outs)}

        return load_or_compute(self.shard_path(shard, num_shards), compute,
                               f"ground truth shard {shard}/{num_shards}", self.log, self._waited)

    def build(self) -> GroundTruth:
        """Load the assembled ground truth, assembling or computing missing shards first."""
        n = self.gt["num_shards"]

        def assemble():
            self.produced = True
            outcomes = torch.empty(self.gt["subsets"], self.gt["seeds"], self.task.n_query)
            for s in range(n):
                part = self.compute_shard(s, n)
                outcomes[part["ids"]] = part["outcomes"]
            return {"masks": self.masks, "outcomes": outcomes}

        data = load_or_compute(self.dir / "ground_truth.pt", assemble, "ground truth", self.log,
                               self._waited)
        if not torch.equal(data["masks"], self.masks):
            raise RuntimeError(f"{self.dir}: cached masks differ from the config's; delete the folder")
        return GroundTruth(data["masks"], data["outcomes"])
