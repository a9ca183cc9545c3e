"""``removal``: counterfactual removal of the examples a method blames (brittleness).

The test of the datamodels work (Ilyas et al. 2022): for each query, remove the k training
examples the method says help it most, retrain, and see whether the query gets worse. For each
query q and each fraction f of ``removal.fractions`` (k = max(1, round(f * n_train))), the k
examples with the largest help (``-scores[q]`` when the observable is a loss, ``scores[q]`` when
it is a margin: the sign convention makes ``scores[q, i]`` = d observable_q / d beta_i) leave the
training set, and the task's recipe retrains ``removal.seeds`` times through the ground truth's
batched trainer, caching and sharding (:class:`GroundTruthBuilder`). The same is done with k
random examples per query and fraction (seeded, the same draws for every method) and with the
whole training set, all with the same retraining seeds.

The rise of query q's loss is ``loss_q(without the k, seed s) - loss_q(whole set, seed s)``,
averaged over seeds and fractions. The metric is, per query, the method's rise minus random
removal's rise (so random removal is 0 and a method whose blamed examples matter is above it),
averaged over queries, with a bootstrap 95% interval over queries; in the loss's unit (nats).
Beside it: per fraction, the mean rises of both removals and, for classification tasks, the share
of (query, seed) pairs whose predicted class changes (``flips``). The retraining of random
removal is shared by every method of a task; the method's own removal is cached under its
blamed sets. Its seconds are the metric's phase, like every phase of a run.
"""

from __future__ import annotations

import torch

from tdabench.harness.core.storage import content_hash
from tdabench.harness.plugin import bootstrap_ci, sequence_scores
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder, retrain_seed
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun

FORMAT_VERSION = 1
#: the stream of the random removals and the retraining seeds, apart from the other ground truths'
STREAM = 1_000_033


def removal_sizes(n_train: int, fractions: list[float]) -> list[int]:
    """How many examples each fraction removes (at least 1)."""
    return [max(1, int(round(f * n_train))) for f in fractions]


def blamed(scores: torch.Tensor, sizes: list[int], loss_observable: bool) -> list[torch.Tensor]:
    """For each query and size (query-major), the indices of the ``size`` examples that help the
    query most; ties are broken by index."""
    help_ = sequence_scores(scores).double()
    help_ = -help_ if loss_observable else help_
    order = torch.sort(help_, dim=1, descending=True, stable=True).indices
    return [order[q, :k].sort().values for q in range(len(order)) for k in sizes]


def random_sets(n_train: int, n_query: int, sizes: list[int], seed: int) -> list[torch.Tensor]:
    """One seeded random set per query and size, in the order of :func:`blamed`."""
    g = torch.Generator().manual_seed(retrain_seed(seed, STREAM, 0))
    return [torch.randperm(n_train, generator=g)[:k].sort().values for _ in range(n_query) for k in sizes]


class RemovalBuilder(GroundTruthBuilder):
    """Per row (a set of removed examples; an empty set is the whole training set) and seed, every
    query's loss and, for classification, its predicted class: ``[rows, seeds, Q (+ Q)]``."""

    folder = "removal"
    label = "removal"

    def __init__(self, task, removed: list[torch.Tensor], seeds: int, gt: dict, cache_dir, log=None):
        self.removed = removed
        self.classes = "classification" in task.capabilities
        spec = {"subsets": len(removed), "seeds": seeds, "alpha": None, "same_seed": False,
                "from_checkpoint": False, "finetune_epochs": None, "vectorize": gt.get("vectorize", True),
                "models_per_batch": gt.get("models_per_batch", 64), "num_shards": 1}
        super().__init__(task, spec, cache_dir, log)

    def key(self) -> str:
        sets = content_hash({"removed": [r.tolist() for r in self.removed]})
        return content_hash({"task": self.task.fingerprint(), "format": FORMAT_VERSION, "sets": sets,
                             "seeds": self.gt.seeds})

    def make_masks(self) -> torch.Tensor:
        masks = torch.ones(len(self.removed), self.task.n_train, dtype=torch.bool)
        for row, r in enumerate(self.removed):
            masks[row, r] = False
        return masks

    def job_seed(self, row: int, k: int) -> int:
        return retrain_seed(self.task.seed, STREAM, k + 1)

    def outcome_width(self) -> int:
        return self.task.n_query * (2 if self.classes else 1)

    @torch.no_grad()
    def observe(self, model) -> torch.Tensor:
        task = self.task
        model.eval()
        loss = task.batched(task.per_example_loss, model, task.query_split).cpu().float()
        if not self.classes:
            return loss
        pred = task.batched(lambda m, x, y: m(x).argmax(-1), model, task.query_split).cpu().float()
        return torch.cat([loss, pred])


def _positive_list(v) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) > 0
            and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in v))


class Removal(Metric):
    def supports(self, task, method) -> str | None:
        return None if task.measures_lds else f"task {task.name} measures cost only (no retraining)"

    def config_problems(self, cfg: dict) -> list[str]:
        r = cfg.get("removal") or {}
        problems = []
        if not _positive_list(r.get("fractions")):
            problems.append(f"removal.fractions={r.get('fractions')!r} must be a list of fractions of the "
                            "training set in (0, 1), e.g. [0.01,0.05,0.1]")
        s = r.get("seeds")
        if not (isinstance(s, int) and not isinstance(s, bool) and s >= 1):
            problems.append(f"removal.seeds={s!r} must be an integer >= 1 (retrainings per removed set)")
        return problems

    def _builders(self, task, cfg: dict, scores: torch.Tensor) -> tuple[RemovalBuilder, RemovalBuilder]:
        r = cfg["removal"]
        sizes = removal_sizes(task.n_train, list(r["fractions"]))
        empty = torch.zeros(0, dtype=torch.long)
        base = RemovalBuilder(task, [empty] + random_sets(task.n_train, task.n_query, sizes, task.seed),
                              r["seeds"], cfg["gt"], cfg["cache_dir"])
        own = RemovalBuilder(task, blamed(scores, sizes, task.observable_kind == "loss"), r["seeds"],
                             cfg["gt"], cfg["cache_dir"])
        return base, own

    def evaluate(self, run: MetricRun) -> MetricResult:
        cfg, task = run.cfg, run.task
        fractions = list(cfg["removal"]["fractions"])
        base_b, own_b = self._builders(task, cfg, run.scores)
        base, own = base_b.build().outcomes, own_b.build().outcomes  # [rows, S, width]
        q, f = task.n_query, len(fractions)
        diag = torch.arange(q).repeat_interleave(f)  # the query of each removal row
        rows = torch.arange(q * f)

        def at(out, col):  # [Q * F, S]: column col[r] of row r, per seed
            return out.permute(0, 2, 1)[rows, col]

        def rise(out):  # [Q, F, S]: query loss after removal minus with the whole set
            return (at(out, diag) - base[0].T[diag]).view(q, f, -1).double()

        def flips(out):  # [Q, F, S]: whether the predicted class changed
            return (at(out, q + diag) != base[0].T[q + diag]).view(q, f, -1).double()

        mine, chance = rise(own), rise(base[1:])
        excess = (mine - chance).mean(dim=(1, 2)).numpy()  # [Q]
        n_boot, seed = cfg["lds"]["bootstrap"], cfg["seed"]
        value = float(excess.mean())
        per_fraction = []
        for j, frac in enumerate(fractions):
            entry = {"fraction": frac, "k": removal_sizes(task.n_train, [frac])[0],
                     "rise": float(mine[:, j].mean()), "random_rise": float(chance[:, j].mean()),
                     "excess": float((mine[:, j] - chance[:, j]).mean())}
            if own_b.classes:
                entry.update(flips=float(flips(own)[:, j].mean()), random_flips=float(flips(base[1:])[:, j].mean()))
            per_fraction.append(entry)
        random_rise = float(chance.mean())
        return MetricResult(value, bootstrap_ci(excess, n_boot, seed), None, extra={
            "unit": "nats of query loss above random removal",
            "rise": float(mine.mean()), "random_rise": random_rise,
            "relative": float(mine.mean()) / random_rise if random_rise > 0 else None,
            "per_fraction": per_fraction, "per_query": [round(float(v), 6) for v in excess],
            "seeds": own_b.seeds, "retrainings": (len(own_b.removed)) * own_b.seeds,
            "outcomes_key": base_b.dir.name})
