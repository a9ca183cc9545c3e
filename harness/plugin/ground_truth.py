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

A task's validation view (``task.queries == 'validation'``, for tuning) gets a ground truth of
its own: its key differs (the view's fingerprint names its queries, and the key starts with
``val-``), and its subsets and retraining seeds derive from :func:`validation_seed` instead of the
task's seed, so they are drawn independently of the test ground truth's.

Results are cached under a content hash of everything that determines them, written atomically
with a checksum, and computed in shards (``gt.shard`` / ``gt.num_shards``) that any process can
compute and any later run assembles. A file lock per shard keeps concurrent runs from computing
the same shard twice; the time a run spends waiting for another run's lock is kept apart
(:attr:`GroundTruthBuilder.wait_s`), as is whether this run produced anything itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tdabench.harness.core.settings import GroundTruthSettings, gt_settings
from tdabench.harness.core.storage import (
    CorruptFileError,
    content_hash,
    load_or_compute,
    load_verified,
    remove_verified,
    save_verified,
)
from tdabench.harness.plugin.quality import degenerate_reason

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class GroundTruth:
    masks: torch.Tensor  # bool [M, n_train]
    outcomes: torch.Tensor  # float [M, K, n_query]
    degenerate: torch.Tensor | None = None  # bool [M, K]: retrained model no better than chance;
    #                                         None for ground truths cached before it was kept

    @classmethod
    def read(cls, data: dict) -> GroundTruth:
        """The ground truth of a cached file's tensors (a dict of the field names)."""
        return cls(*(data.get(f.name) for f in fields(cls)))

    @property
    def mean_outcomes(self) -> torch.Tensor:
        """Outcomes averaged over retraining seeds: [M, n_query]."""
        return self.outcomes.mean(dim=1)

    @property
    def degenerate_share(self) -> float | None:
        """Fraction of the M x K retrained models that are no better than chance (None: unknown)."""
        return None if self.degenerate is None else float(self.degenerate.float().mean())


def make_masks(n: int, subsets: int, alpha: float, seed: int) -> torch.Tensor:
    """``subsets`` x ``n`` boolean masks, each with exactly round(alpha * n) ones."""
    k = int(round(alpha * n))
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for j in range(subsets):
        masks[j, torch.randperm(n, generator=g)[:k]] = True
    return masks


def validation_seed(seed: int) -> int:
    """The seed of a validation ground truth's subsets and retrainings, for data seed ``seed``."""
    return int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])


@dataclass
class ShardOutcomes:
    """One shard's retraining outcomes, as cached: the rows it retrained, their outcomes
    [len, K, n_query] and whether each retrained model is no better than chance [len, K] (None in
    shards cached before that was kept)."""

    ids: list[int]
    outcomes: torch.Tensor
    degenerate: torch.Tensor | None = None

    @classmethod
    def read(cls, data: dict) -> ShardOutcomes:
        """The outcomes of a cached file's tensors (a dict of the field names)."""
        return cls(*(data.get(f.name) for f in fields(cls)))


def retrain_seed(seed: int, subset: int, k: int) -> int:
    return int(np.random.SeedSequence([seed, subset, k]).generate_state(1)[0])


def shard_ids(subsets: int, shard: int, num_shards: int) -> list[int]:
    return list(range(shard, subsets, num_shards))


def gt_mode(gt: GroundTruthSettings | dict) -> str:
    """``same_seed`` (every subset retrained with the reference run's seed and data order) or
    ``fresh_seeds`` (K new seeds per subset)."""
    return "same_seed" if gt_settings(gt).same_seed else "fresh_seeds"


def effective_seeds(gt: GroundTruthSettings | dict) -> int:
    """Retrainings per subset: ``gt.seeds``, or 1 in the same-seed mode (they would be equal)."""
    gt = gt_settings(gt)
    return 1 if gt.same_seed else gt.seeds


def gt_key(task, gt: GroundTruthSettings | dict) -> str:
    """Cache key of a ground truth; the same-seed mode is named and hashed in it (the default
    mode's key is unchanged, so its caches stay valid)."""
    gt = gt_settings(gt)
    parts = {k: getattr(gt, k) for k in ("subsets", "alpha", "seeds", "from_checkpoint", "finetune_epochs")}
    if gt.same_seed:
        parts.update(seeds=1, mode="same_seed")
    key = content_hash({"task": task.fingerprint(), "gt": parts, "format": FORMAT_VERSION})
    key = f"same_seed-{key}" if gt.same_seed else key
    return key if getattr(task, "queries", "test") == "test" else f"val-{key}"


class GroundTruthBuilder:
    """Computes, caches and assembles the ground truth of one task and ``gt`` config.

    Other retraining designs (leave-one-out) reuse the caching, sharding and batched retraining by
    overriding :attr:`folder`, :meth:`key`, :meth:`make_masks` and :meth:`job_seed`; rows of
    different sizes are retrained in one batch per size."""

    #: the folder under ``cache_dir`` that holds these outcomes, and what progress messages call them
    folder = "ground_truth"
    label = "ground truth"

    def __init__(self, task, gt: GroundTruthSettings | dict, cache_dir: str | Path, log=None):
        self.task = task
        self.gt = gt = gt_settings(gt)
        self.log = log or _log.info
        #: the seed of the subsets and retrainings (the task's, or its validation seed)
        self.draw_seed = task.seed if getattr(task, "queries", "test") == "test" else validation_seed(task.seed)
        self.dir = Path(cache_dir) / self.folder / f"{task.name}-{self.key()}"
        self.masks = self.make_masks()
        #: seconds spent waiting for another process that held a ground-truth lock
        self.wait_s = 0.0
        #: whether this builder computed a shard or assembled the ground truth itself
        self.produced = False
        #: models trained at once by the last shard this builder computed (None: none computed)
        self.models_together: int | None = None
        self.mode = gt_mode(gt)
        self.seeds = effective_seeds(gt)
        if gt.same_seed and gt.seeds > 1:
            self.log(f"gt.same_seed: one retraining per subset (gt.seeds={gt.seeds} would "
                "repeat the same run)")

    def key(self) -> str:
        """The cache key of the outcomes (everything that determines them)."""
        return gt_key(self.task, self.gt)

    def make_masks(self) -> torch.Tensor:
        """bool [M, n_train]: the training examples each row retrains on."""
        return make_masks(self.task.n_train, self.gt.subsets, self.gt.alpha, self.draw_seed)

    def job_seed(self, row: int, k: int) -> int:
        """The seed of retraining ``k`` of row ``row`` (fresh-seeds mode)."""
        return retrain_seed(self.draw_seed, row, k)

    def outcome_width(self) -> int:
        """Numbers recorded per retrained model (the queries' observables)."""
        return self.task.n_query

    def observe(self, model) -> torch.Tensor:
        """What is recorded of one retrained model: [outcome_width] (every query's observable)."""
        return self.task.query_observables(model).cpu()

    def _waited(self, seconds: float) -> None:
        self.wait_s += seconds

    def retraining_start(self) -> tuple[dict | None, object | None]:
        """Where every retraining starts: (initial weights, recipe), both None for a task trained
        from scratch by its own recipe; from a checkpoint, its weights and the task's recipe run
        for ``gt.finetune_epochs``."""
        if not self.gt.from_checkpoint:
            return None, None
        recipe = self.task.recipe()
        recipe.epochs = self.gt.finetune_epochs
        return self.task.checkpoint().state_dict(), recipe

    def _retrain(self, subsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Observables of every query for each seed retrained on each subset, [len, K, n_query],
        and whether each retrained model is no better than chance, bool [len, K]."""
        task, gt = self.task, self.gt
        init, recipe = self.retraining_start()
        if self.mode == "same_seed":
            # the reference run's data order, with the removed examples at weight 0
            idx = torch.arange(task.n_train).expand(len(subsets), -1)
            seeds = [task.seed] * len(subsets)
            weights = self.masks[subsets].float()
            models = task.fit_many(idx, seeds, init, recipe, vectorize=gt.vectorize,
                                   weights=weights)
        else:
            jobs = [(j, k) for j in subsets for k in range(gt.seeds)]
            rows = [torch.nonzero(self.masks[j])[:, 0] for j, _ in jobs]
            models = [None] * len(jobs)
            for size in dict.fromkeys(len(r) for r in rows):  # fit_many takes rows of one size
                at = [i for i, r in enumerate(rows) if len(r) == size]
                fitted = task.fit_many(torch.stack([rows[i] for i in at]), [self.job_seed(*jobs[i]) for i in at],
                                       init, recipe, vectorize=gt.vectorize)
                for i, m in zip(at, fitted):
                    models[i] = m
        outs = torch.stack([self.observe(m) for m in models])
        degenerate = torch.tensor([degenerate_reason(task.evaluate(m)) is not None for m in models])
        return outs.view(len(subsets), self.seeds, -1), degenerate.view(len(subsets), self.seeds)

    def shard_path(self, shard: int, num_shards: int) -> Path:
        return self.dir / f"shard-{shard}-of-{num_shards}.pt"

    def partial_path(self, shard: int, num_shards: int) -> Path:
        return self.dir / f"shard-{shard}-of-{num_shards}.partial.pt"

    def _resume(self, path: Path, ids: list[int]) -> ShardOutcomes | None:
        """The finished part of an interrupted shard, if ``path`` holds a usable one."""
        if not path.exists():
            return None
        try:
            part = load_verified(path)
        except CorruptFileError as exc:
            self.log(f"partial ground truth is damaged, starting the shard afresh: {exc}")
            return None
        part = ShardOutcomes.read(part)
        done = list(part.ids or [])
        if done != ids[:len(done)] or part.outcomes.shape[1:2] != (self.seeds,):
            return None
        return part

    def compute_shard(self, shard: int, num_shards: int) -> ShardOutcomes:
        """Outcomes of the subsets of one shard: ``{"ids", "outcomes" [len, K, n_query],
        "degenerate" [len, K]}``. Retrainings are saved chunk by chunk to a partial file, so an
        interrupted shard continues where it stopped; the partial file goes once the shard is
        saved."""
        ids = shard_ids(self.gt.subsets, shard, num_shards)
        partial = self.partial_path(shard, num_shards)

        def compute():
            self.produced = True
            desc = f"{self.label} {self.task.name}" + (f" shard {shard}/{num_shards}" if num_shards > 1 else "")
            # models trained one at a time are saved after every subset; trained together, per batch
            together = self.gt.vectorize and self.task.vectorizable
            per_batch = max(1, self.gt.models_per_batch // self.seeds) if together else 1
            self.models_together = min(per_batch, len(ids)) * self.seeds if together else 1
            outs, degs = [], []
            part = self._resume(partial, ids)
            if part is not None:
                outs, degs = [part.outcomes], [part.degenerate]
                self.log(f"{desc}: continuing from {len(part.ids) * self.gt.seeds} "
                         f"retrained models of an interrupted run")
            start = len(part.ids) if part is not None else 0
            with tqdm(total=len(ids) * self.seeds, initial=start * self.seeds, desc=desc,
                      unit="model", mininterval=2) as bar:
                for i in range(start, len(ids), per_batch):
                    chunk = ids[i:i + per_batch]
                    out, deg = self._retrain(chunk)
                    outs.append(out)
                    degs.append(deg)
                    bar.update(len(chunk) * self.seeds)
                    if i + len(chunk) < len(ids):
                        save_verified(vars(ShardOutcomes(ids[:i + len(chunk)], torch.cat(outs), torch.cat(degs))),
                                      partial)
            if together and self.task.together_limit:  # halved where memory ran out
                self.models_together = min(self.models_together, self.task.together_limit)
            return vars(ShardOutcomes(ids, torch.cat(outs), torch.cat(degs)))

        data = load_or_compute(self.shard_path(shard, num_shards), compute,
                               f"ground truth shard {shard}/{num_shards}", self.log, self._waited)
        remove_verified(partial)
        return ShardOutcomes.read(data)

    def build(self) -> GroundTruth:
        """Load the assembled ground truth, assembling or computing missing shards first."""
        n = self.gt.num_shards

        def assemble():
            self.produced = True
            outcomes = torch.empty(self.gt.subsets, self.seeds, self.outcome_width())
            degenerate = torch.zeros(self.gt.subsets, self.seeds, dtype=torch.bool)
            known = True
            for s in range(n):
                part = self.compute_shard(s, n)
                outcomes[part.ids] = part.outcomes
                if part.degenerate is None:  # a shard cached before quality was kept
                    known = False
                else:
                    degenerate[part.ids] = part.degenerate
            return vars(GroundTruth(self.masks, outcomes, degenerate if known else None))

        gt = GroundTruth.read(load_or_compute(self.dir / "ground_truth.pt", assemble, "ground truth", self.log,
                                              self._waited))
        if not torch.equal(gt.masks, self.masks):
            raise RuntimeError(f"{self.dir}: cached masks differ from the config's; delete the folder")
        return gt

    def cached(self) -> GroundTruth | None:
        """The assembled ground truth if it is cached and intact; never computes anything."""
        path = self.dir / "ground_truth.pt"
        if not path.exists():
            return None
        gt = GroundTruth.read(load_verified(path))
        if not torch.equal(gt.masks, self.masks):
            raise RuntimeError(f"{self.dir}: cached masks differ from the config's; delete the folder")
        return gt
