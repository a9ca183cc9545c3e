"""``mislabel_auc``: how well self-influence finds flipped labels (dattri's ``mislabel_detection_auc``).

The labels of a seeded share ``mislabel.fraction`` of the training examples are flipped, each to
another class (:meth:`Task.mislabeled`; classification tasks only, capability
``classification``); the task's recipe trains the reference model on the flipped data (cached
under its own key), an unfitted copy of the method is fitted on it and gives every training
example's self-influence s_i = d l_i / d beta_i (:meth:`Method.self_influence`). An example that
is hard to fit moves its own loss most: the suspicion of i is ``|s_i|`` (self-influence is
usually negative, so this is ``-s_i`` wherever the method keeps the sign convention). The value is
the ROC AUC of suspicion against the flipped mask (0.5: chance, 1: every flipped example ranked
above every clean one), with a percentile bootstrap 95% interval over training examples. The
flipped model's test quality is reported beside it, and every example's suspicion
(``suspicion``) with the flipped ones (``flipped_idx``), so that two methods can be compared by a
paired bootstrap over the same examples (:mod:`tdabench.harness.read.metric_report`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from tdabench.harness.plugin.ground_truth import retrain_seed
from tdabench.harness.plugin.metric import Metric, MetricResult, MetricRun

#: the stream of the flipped examples, apart from every other seeded choice of the run
STREAM = 1_000_033


def bootstrap_auc(labels: np.ndarray, suspicion: np.ndarray, n_boot: int, seed: int,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC of ``suspicion`` [n] against bool ``labels``
    [n], resampling examples (resamples holding one class only are drawn again)."""
    rng = np.random.default_rng(seed)
    n, values = len(labels), []
    while len(values) < n_boot:
        idx = rng.integers(0, n, size=n)
        if labels[idx].any() and not labels[idx].all():
            values.append(roc_auc_score(labels[idx], suspicion[idx]))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


class MislabelAUC(Metric):
    def supports(self, task, method) -> str | None:
        if "classification" not in task.capabilities:
            return f"task {task.name} has no class labels to flip (capability classification)"
        if not method.gives_self_influence:
            return f"method {method.name} gives no self-influence: {method.no_self_influence}"
        return None

    def config_problems(self, cfg: dict) -> list[str]:
        f = cfg.get("mislabel", {}).get("fraction")
        n = cfg.get("task", {}).get("n_train")
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
            return [f"mislabel.fraction={f!r} must be a fraction strictly between 0 and 1 (default 0.1)"]
        if isinstance(n, int) and not 1 <= round(f * n) < n:
            return [f"mislabel.fraction={f} flips {round(f * n)} of task.n_train={n} examples: flip at "
                    "least one and leave at least one"]
        return []

    def evaluate(self, run: MetricRun) -> MetricResult:
        cfg = run.cfg
        fraction = cfg["mislabel"]["fraction"]
        task, flipped = run.task.mislabeled(fraction, retrain_seed(run.task.seed, STREAM, 0))
        model = task.checkpoint()
        quality = task.evaluate(model)
        s = run.new_method().self_influence(task, model).double().numpy()  # [n_train]
        if not np.isfinite(s).all():
            raise ValueError(f"{int((~np.isfinite(s)).sum())} self-influence values are NaN or infinite")
        labels, suspicion = flipped.numpy(), np.abs(s)
        auc = float(roc_auc_score(labels, suspicion))
        ci = bootstrap_auc(labels, suspicion, cfg["lds"]["bootstrap"], cfg["seed"])
        return MetricResult(auc, ci, None, extra={
            "flipped": int(labels.sum()), "fraction": fraction,
            "negative_share": float((s < 0).mean()),
            "model_quality": {k: quality[k] for k in ("test_acc", "test_loss")},
            # per example, for paired tests between methods on the same flipped labels
            "suspicion": [float(f"{v:.6g}") for v in suspicion],
            "flipped_idx": np.flatnonzero(labels).tolist()})
