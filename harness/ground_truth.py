"""Retraining ground truth for the LDS.

M subset masks over the training set (each keeps exactly round(alpha * n) examples, seeded); for
each subset, K models are retrained (from scratch by default, or fine-tuned from the reference
checkpoint) and every query's observable is recorded. Outcomes are kept per seed, ``[M, K,
n_query]``, so the noise of retraining can be measured; the LDS uses their mean over seeds.

With ``gt.same_seed`` every subset is retrained once, with the reference run's seed, data order
and augmentation draws, the removed examples kept in the same minibatches with weight 0 (mode
``same_seed``; outcomes ``[M, 1, n_query]``). Retraining noise is then absent, and the exact
derivative of the reference run's training (exact unrolling) is the first-order prediction of
every outcome. The default mode, ``fresh_seeds``, draws K new seeds per subset. Records carry the
mode as ``gt_mode``.

Results are cached under a content hash of everything that determines them, written atomically
with a checksum, and computed in shards (``gt.shard`` / ``gt.num_shards``) that any process can
compute and any later run assembles. A file lock per shard keeps concurrent runs from computing
the same shard twice.
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


def gt_mode(gt: dict) -> str:
    """``same_seed`` (every subset retrained with the reference run's seed and data order) or
    ``fresh_seeds`` (K new seeds per subset)."""
    return "same_seed" if gt.get("same_seed") else "fresh_seeds"


def effective_seeds(gt: dict) -> int:
    """Retrainings per subset: ``gt.seeds``, or 1 in the same-seed mode (they would be equal)."""
    return 1 if gt.get("same_seed") else gt["seeds"]


def gt_key(task, gt: dict) -> str:
    """Cache key of a ground truth; the same-seed mode is named and hashed in it (the default
    mode's key is unchanged, so its caches stay valid)."""
    parts = {k: gt[k] for k in ("subsets", "alpha", "seeds", "from_checkpoint", "finetune_epochs")}
    if gt.get("same_seed"):
        parts["seeds"] = 1
        parts["mode"] = "same_seed"
    key = content_hash({"task": task.fingerprint(), "gt": parts, "format": FORMAT_VERSION})
    return f"same_seed-{key}" if gt.get("same_seed") else key


class GroundTruthBuilder:
    """Computes, caches and assembles the ground truth of one task and ``gt`` config."""

    def __init__(self, task, gt: dict, cache_dir: str | Path, log=print):
        self.task = task
        self.gt = gt
        self.log = log
        self.dir = Path(cache_dir) / "ground_truth" / f"{task.name}-{gt_key(task, gt)}"
        self.masks = make_masks(task.n_train, gt["subsets"], gt["alpha"], task.seed)
        self.mode = gt_mode(gt)
        self.seeds = effective_seeds(gt)
        if gt.get("same_seed") and gt["seeds"] > 1:
            log(f"[tdabench] gt.same_seed: one retraining per subset (gt.seeds={gt['seeds']} would "
                "repeat the same run)")

    def _retrain(self, subsets: list[int]) -> torch.Tensor:
        """Observables of every query for each seed retrained on each subset: [len, K, n_query]."""
        task, gt = self.task, self.gt
        init, recipe = None, None
        if gt["from_checkpoint"]:
            init = task.checkpoint().state_dict()
            recipe = task.recipe()
            recipe.epochs = gt["finetune_epochs"]
        if self.mode == "same_seed":
            # the reference run's data order, with the removed examples at weight 0
            idx = torch.arange(task.n_train).expand(len(subsets), -1)
            seeds = [task.seed] * len(subsets)
            weights = self.masks[subsets].float()
        else:
            jobs = [(j, k) for j in subsets for k in range(gt["seeds"])]
            idx = torch.stack([torch.nonzero(self.masks[j])[:, 0] for j, _ in jobs])
            seeds = [retrain_seed(task.seed, j, k) for j, k in jobs]
            weights = None
        models = task.fit_many(idx, seeds, init, recipe, vectorize=gt.get("vectorize", True),
                               weights=weights)
        outs = torch.stack([task.query_observables(m).cpu() for m in models])
        return outs.view(len(subsets), self.seeds, -1)

    def shard_path(self, shard: int, num_shards: int) -> Path:
        return self.dir / f"shard-{shard}-of-{num_shards}.pt"

    def compute_shard(self, shard: int, num_shards: int) -> dict:
        ids = shard_ids(self.gt["subsets"], shard, num_shards)

        def compute():
            desc = f"ground truth {self.task.name}" + (f" shard {shard}/{num_shards}" if num_shards > 1 else "")
            per_batch = max(1, self.gt.get("models_per_batch", 64) // self.seeds)
            outs = []
            with tqdm(total=len(ids) * self.seeds, desc=desc, unit="model", mininterval=2) as bar:
                for i in range(0, len(ids), per_batch):
                    chunk = ids[i:i + per_batch]
                    outs.append(self._retrain(chunk))
                    bar.update(len(chunk) * self.seeds)
            return {"ids": ids, "outcomes": torch.cat(outs)}

        return load_or_compute(self.shard_path(shard, num_shards), compute,
                               f"ground truth shard {shard}/{num_shards}", self.log)

    def build(self) -> GroundTruth:
        """Load the assembled ground truth, assembling or computing missing shards first."""
        n = self.gt["num_shards"]

        def assemble():
            outcomes = torch.empty(self.gt["subsets"], self.seeds, self.task.n_query)
            for s in range(n):
                part = self.compute_shard(s, n)
                outcomes[part["ids"]] = part["outcomes"]
            return {"masks": self.masks, "outcomes": outcomes}

        data = load_or_compute(self.dir / "ground_truth.pt", assemble, "ground truth", self.log)
        if not torch.equal(data["masks"], self.masks):
            raise RuntimeError(f"{self.dir}: cached masks differ from the config's; delete the folder")
        return GroundTruth(data["masks"], data["outcomes"])
