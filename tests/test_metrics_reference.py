"""Each built-in metric against dattri's implementation on the same scores and outcomes: the LDS
(``dattri.metric.lds``), leave-one-out correlation (``loo_corr``) and mislabel detection
(``mislabel_detection_auc``). Skipped when dattri (the ``reference`` extra) is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import lds
from tdabench.methods.baselines import GradDot
from tdabench.metrics.loo import LeaveOneOutBuilder, loo_changes, loo_correlations

dattri = pytest.importorskip("dattri.metric.metrics", reason="dattri is not installed: pip install -e '.[reference]'")
pytestmark = pytest.mark.reference

GT = {"subsets": 12, "alpha": 0.5, "seeds": 2, "from_checkpoint": False, "finetune_epochs": 2, "shard": None,
      "num_shards": 1}


@pytest.fixture
def grad_dot_scores(small_digits):
    model = small_digits.checkpoint()
    method = GradDot()
    method.fit(small_digits, model)
    return method.score(small_digits, model).double()  # [n_query, n_train]


def test_lds_matches_dattri(small_digits, grad_dot_scores, tmp_path):
    gt = GroundTruthBuilder(small_digits, GT, tmp_path, log=lambda m: None).build()
    ours = lds(grad_dot_scores, gt.masks, gt.mean_outcomes, 100, 0)
    # dattri: scores [n_train, n_test]; ground truth (outcomes [M, n_test], kept indices [M, subset size])
    kept = torch.stack([torch.nonzero(m)[:, 0] for m in gt.masks])
    theirs, _ = dattri.lds(grad_dot_scores.T, (gt.mean_outcomes.double(), kept))
    assert np.allclose(ours.per_query, theirs.numpy(), atol=1e-6, equal_nan=True)


def test_loo_matches_dattri_loo_corr(small_digits, grad_dot_scores, tmp_path):
    builder = LeaveOneOutBuilder(small_digits, {"samples": 15, "seeds": 1}, {"num_shards": 1}, tmp_path,
                                 lambda m: None)
    change = loo_changes(builder.build().outcomes).mean(dim=1)  # [S, n_query]
    pearson, _ = loo_correlations(grad_dot_scores, builder.examples, change)
    # dattri: scores [n_sampled, n_test] correlated with the LOO outcomes [n_sampled, n_test]; by
    # the sign convention removing i predicts a change of -scores[q, i]
    theirs, _ = dattri.loo_corr(-grad_dot_scores[:, builder.examples].T, (change.double(), builder.examples))
    assert np.allclose(pearson, theirs.numpy(), atol=1e-6, equal_nan=True)


def test_mislabel_auc_matches_dattri(small_digits):
    variant, flipped = small_digits.mislabeled(0.1, seed=0)
    suspicion = GradDot().self_influence(variant, variant.checkpoint()).double().abs()  # [n_train]
    assert len(set(suspicion.tolist())) == len(suspicion)  # no ties: both AUCs are the same number
    auc, _ = dattri.mislabel_detection_auc(suspicion, flipped)
    ours = roc_auc_score(flipped.numpy(), suspicion.numpy())
    assert ours > 0.6 and float(auc) == pytest.approx(ours, abs=1e-6)


def test_removal_flips_match_dattri_brittleness(small_digits, grad_dot_scores, tmp_path):
    """dattri's brittleness (the smallest k of a search space whose top-k removal makes a query's
    prediction wrong), run on the removal metric's own retraining (same blamed sets, same seed),
    equals the smallest k at which the removal metric's recorded prediction is wrong, for every
    query the reference model gets right."""
    from dattri.metric import brittleness
    from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

    from tdabench.metrics.removal import RemovalBuilder, blamed

    task, sizes = small_digits, [2, 10, 40]
    sets = blamed(grad_dot_scores, sizes, loss_observable=True)
    builder = RemovalBuilder(task, sets, 1, {"vectorize": False}, tmp_path / "c")
    pred = builder.build().outcomes[:, 0, task.n_query:].long()  # [Q * F, Q]: each row's predictions
    labels = task.query_split.targets
    right = (task.checkpoint()(task.query_split.inputs).argmax(-1) == labels).nonzero()[:, 0][:4].tolist()

    train = task.train_split
    loader = DataLoader(TensorDataset(train.inputs, train.targets), batch_size=32,
                        sampler=SubsetRandomSampler(list(range(task.n_train))))

    def train_func(kept):  # the metric's retraining of the kept examples
        idx = torch.tensor(sorted(int(i) for i in kept.sampler.indices))
        return task.fit_model(idx, builder.job_seed(0, 0)).model

    def predict(model, test_loader):
        x, _ = next(iter(test_loader))
        with torch.no_grad():
            return model(x).argmax(-1)

    found = []
    for q in right:
        query = DataLoader(TensorDataset(task.query_split.inputs[q:q + 1], labels[q:q + 1]), batch_size=1)
        theirs = brittleness(loader, query, (-grad_dot_scores[q]).numpy(), train_func, predict,
                             search_space=sizes)
        mine = next((k for j, k in enumerate(sizes) if pred[q * len(sizes) + j, q] != labels[q]), None)
        assert theirs == mine, f"query {q}: dattri's brittleness {theirs}, the removal metric's {mine}"
        found.append(mine)
    assert right and any(k is not None for k in found), "no query flipped: the check compared nothing"
