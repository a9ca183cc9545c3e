"""``loo``: leave-one-out correlation (the classic target of influence functions; dattri's ``loo_corr``).

For a seeded sample of ``loo.samples`` training examples, the task's recipe retrains without each
of them, ``loo.seeds`` times, and once on the whole training set with the same seeds (row 0), all
through the ground truth's batched trainer (:meth:`Task.fit_many`), cached under its own key in
``cache_dir/leave_one_out`` and computed in the ground truth's shards (``gt.shard`` jobs compute
both). The actual change of query q's observable when example i leaves is

    change[i, q] = mean over seeds s of  obs_q(retrained without i, s) - obs_q(retrained with all, s)

By the sign convention (``scores[q, i]`` = d obs_q / d beta_i), removing i (beta_i: 1 -> 0) changes
obs_q by about ``-scores[q, i]``: the metric correlates ``-scores[q, sampled]`` with
``change[sampled, q]`` over the sampled examples, per query. The value is the mean over queries
of the Pearson correlation (as dattri's ``loo_corr``), with a bootstrap 95% interval over
queries; the Spearman correlation is reported beside it. A query on which the method's scores of
the sampled examples are all equal counts as 0 (no ranking), as in the LDS. The ceiling comes
from the seed split: the Pearson correlation between the change estimated from one half of the
seeds and from the other, stepped up to all seeds (Spearman-Brown), its square root averaged over
queries (:func:`noise_ceiling`); it needs ``loo.seeds >= 2``.
"""

from __future__ import annotations

import numpy as np
import torch

from tdabench.harness.core.storage import content_hash
from tdabench.harness.plugin import (
    bootstrap_ci,
    columnwise_pearson,
    columnwise_spearman,
    noise_ceiling,
    sequence_scores,
)
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder, retrain_seed
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun

FORMAT_VERSION = 1
#: the stream of the sample and of the retraining seeds, apart from the ground truth's subsets
STREAM = 1_000_003


def sample_examples(n_train: int, samples: int, seed: int) -> torch.Tensor:
    """``samples`` distinct training indices drawn with ``seed``, ascending: long [samples]."""
    g = torch.Generator().manual_seed(retrain_seed(seed, STREAM, 0))
    return torch.randperm(n_train, generator=g)[:samples].sort().values


class LeaveOneOutBuilder(GroundTruthBuilder):
    """Outcomes ``[1 + samples, K, n_query]``: row 0 retrains on every example, row 1 + s without
    ``examples[s]``; retraining k of every row uses the same seed (so the difference to row 0 is
    the example's effect, not the seed's)."""

    folder = "leave_one_out"
    label = "leave-one-out"

    def __init__(self, task, loo: dict, gt: dict, cache_dir, log=None):
        self.examples = sample_examples(task.n_train, loo["samples"], task.seed)
        spec = {"subsets": len(self.examples) + 1, "seeds": loo["seeds"], "alpha": None, "same_seed": False,
                "from_checkpoint": False, "finetune_epochs": None, "vectorize": gt.get("vectorize", True),
                "models_per_batch": gt.get("models_per_batch", 64), "num_shards": gt["num_shards"]}
        super().__init__(task, spec, cache_dir, log)

    def key(self) -> str:
        return content_hash({"task": self.task.fingerprint(), "format": FORMAT_VERSION,
                             "loo": {"samples": self.gt.subsets - 1, "seeds": self.gt.seeds}})

    def make_masks(self) -> torch.Tensor:
        masks = torch.ones(len(self.examples) + 1, self.task.n_train, dtype=torch.bool)
        masks[torch.arange(1, len(self.examples) + 1), self.examples] = False
        return masks

    def job_seed(self, row: int, k: int) -> int:
        return retrain_seed(self.task.seed, STREAM, k)

def loo_changes(outcomes: torch.Tensor) -> torch.Tensor:
    """The change of every query's observable when each sampled example leaves, per seed, from
    the builder's outcomes [1 + samples, K, n_query]: [samples, K, n_query] (retrained without it
    minus retrained with all)."""
    return outcomes[1:] - outcomes[:1]


def loo_correlations(scores: torch.Tensor, examples: torch.Tensor,
                     change: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-query Pearson and Spearman correlations ([n_query] each) between the predicted change
    ``-scores[:, examples]`` and the actual ``change`` [samples, n_query]. A query whose predicted
    changes are all equal gets 0; one whose actual changes are all equal gets NaN."""
    predicted = -sequence_scores(scores).double().cpu().numpy()[:, examples.numpy()].T  # [S, Q]
    actual = change.double().cpu().numpy()
    pearson, spearman = columnwise_pearson(predicted, actual), columnwise_spearman(predicted, actual)
    flat = np.ptp(predicted, axis=0) == 0
    varies = np.ptp(actual, axis=0) > 0
    pearson[flat & varies] = 0.0
    spearman[flat & varies] = 0.0
    return pearson, spearman


def _ints(cfg: dict, key: str, low: int, meaning: str) -> list[str]:
    v = cfg.get("loo", {}).get(key)
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
    return [] if ok else [f"loo.{key}={v!r} must be an integer >= {low} ({meaning})"]


class LeaveOneOut(Metric):
    def supports(self, task, method) -> str | None:
        return None if task.measures_lds else f"task {task.name} measures cost only (no retraining)"

    def config_problems(self, cfg: dict) -> list[str]:
        problems = _ints(cfg, "samples", 3, "training examples left out; default 100")
        problems += _ints(cfg, "seeds", 1, "retraining seeds per left-out example; default 2")
        n = cfg.get("task", {}).get("n_train")
        if not problems and isinstance(n, int) and cfg["loo"]["samples"] > n:
            problems.append(f"loo.samples={cfg['loo']['samples']} exceeds task.n_train={n}: leave out at most "
                            "every training example")
        return problems

    def builder(self, task, cfg: dict) -> LeaveOneOutBuilder:
        return LeaveOneOutBuilder(task, cfg["loo"], cfg["gt"], cfg["cache_dir"])

    def compute_shard(self, task, cfg: dict, shard: int, num_shards: int) -> None:
        self.builder(task, cfg).compute_shard(shard, num_shards)

    def evaluate(self, run: MetricRun) -> MetricResult:
        cfg = run.cfg
        builder = self.builder(run.task, cfg)
        outcomes = builder.build()
        per_seed = loo_changes(outcomes.outcomes)  # [S, K, Q]
        pearson, spearman = loo_correlations(run.scores, builder.examples, per_seed.mean(dim=1))
        n_boot, seed = cfg["lds"]["bootstrap"], cfg["seed"]
        ceiling = noise_ceiling(per_seed.numpy(), n_boot, seed, correlate=columnwise_pearson)
        value = float(np.nanmean(pearson)) if np.isfinite(pearson).any() else float("nan")
        if not np.isfinite(value):
            raise ValueError("no query's observable changes when the sampled examples leave: raise "
                             "loo.samples or check the task's recipe")
        degenerate = outcomes.degenerate
        return MetricResult(value, bootstrap_ci(pearson, n_boot, seed), ceiling.ceiling, extra={
            "ceiling_ci": None if ceiling.ceiling_ci is None else list(ceiling.ceiling_ci),
            "reliability": ceiling.reliability,
            "normalized": value / ceiling.ceiling if ceiling.ceiling else None,
            "spearman": float(np.nanmean(spearman)), "spearman_ci": list(bootstrap_ci(spearman, n_boot, seed)),
            "per_query": [None if v != v else round(float(v), 6) for v in pearson],
            "samples": len(builder.examples), "seeds": builder.seeds, "outcomes_key": builder.dir.name,
            "degenerate_share": None if degenerate is None else float(degenerate.float().mean())})
