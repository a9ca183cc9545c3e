"""Kronecker-factored curvature (methods/curvature.py), the ekfac / kfac methods, and their
agreement with kronfluence on an MLP and a small CNN."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tdabench.methods.curvature import (
    Curvature,
    CurvatureConfig,
    GradientLayout,
    LayerSelectionError,
    fit_curvature,
    fit_curvature_uncached,
    pairwise_scores,
    select_layers,
)
from tdabench.methods.ekfac import EKFAC, KFAC
from tdabench.methods.gradients import per_example_grads
from tdabench.tasks.digits import DigitsMLP


class DigitsCNN(DigitsMLP):
    """Digits as 1x8x8 images with a two-convolution network (a tiny CNN for the tests)."""

    name = "digits_cnn_test"

    def load_splits(self):
        return tuple(type(s)(s.inputs.reshape(-1, 1, 8, 8), s.targets) for s in super().load_splits())

    def build_model(self):
        return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 8, 3, stride=2),
                             nn.Tanh(), nn.Flatten(), nn.Linear(8 * 3 * 3, 10))


CNN_CFG = {"name": "digits_cnn_test", "n_train": 150, "n_query": 12, "observable": "loss",
           "trajectory_checkpoints": 1,
           "recipe": {"epochs": 15, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
                      "weight_decay": 0.001, "schedule": "cosine"}}


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    return DigitsCNN(dict(CNN_CFG), seed=0, cache_dir=tmp_path_factory.mktemp("cnn"), log=lambda m: None)


def mean_spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(spearmanr(a[q], b[q])[0] for q in range(len(a))) / len(a)


def dense_fisher_inverse_scores(task, model, curv: Curvature, strategy: str, damping: float):
    """The same scores from explicit Kronecker-product matrices (slow, small models only)."""
    layout = GradientLayout(model)
    gq = per_example_grads(task.observable, model, task.query_split.inputs, task.query_split.targets)
    gt = per_example_grads(task.per_example_loss, model, task.train_split.inputs, task.train_split.targets)
    total = 0
    for f in curv.layers.values():
        q = torch.kron(f.q_a, f.q_s)  # vec is column-major: vec(G) = G.T.reshape(-1)
        lam = f.eigenvalues(strategy).T.reshape(-1)
        inv = q @ torch.diag(1 / (lam + damping * lam.mean())) @ q.T
        vq = layout.view(gq, f).transpose(1, 2).reshape(len(gq), -1)
        vt = layout.view(gt, f).transpose(1, 2).reshape(len(gt), -1)
        total = total + vq @ inv @ vt.T
    return -total / task.n_train


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
def test_preconditioning_matches_dense_kronecker_inverse(small_digits, strategy):
    task = small_digits
    model = task.checkpoint()
    curv = fit_curvature_uncached(task, model, CurvatureConfig(strategy=strategy))
    pq = curv.precondition(per_example_grads(task.observable, model, task.query_split.inputs,
                                             task.query_split.targets), GradientLayout(model))
    fast = pairwise_scores(task, model, pq)
    dense = dense_fisher_inverse_scores(task, model, curv, strategy, 0.1)
    torch.testing.assert_close(fast, dense, rtol=1e-3, atol=1e-6 * dense.abs().max().item())


def test_kfac_factors_of_linear_layer_are_activation_and_gradient_covariances(small_digits):
    """With the empirical Fisher, A and S are the second moments of inputs (with a 1 for the
    bias) and of output gradients, and the EK-FAC eigenvalues are per-example gradient moments."""
    task = small_digits
    model = task.checkpoint()
    curv = fit_curvature_uncached(task, model, CurvatureConfig(strategy="ekfac", empirical_fisher=True))
    f = curv.layers["0"]
    x = task.train_split.inputs
    a = torch.cat([x, torch.ones(len(x), 1)], 1)
    torch.testing.assert_close(f.q_a @ torch.diag(f.eig_a) @ f.q_a.T, a.T @ a / len(x), atol=1e-5, rtol=1e-4)
    g = GradientLayout(model).view(
        per_example_grads(task.per_example_loss, model, x, task.train_split.targets), f)
    torch.testing.assert_close(f.corrected, (f.q_s.T @ g @ f.q_a).square().mean(0), atol=1e-7, rtol=1e-3)
    # the bias column of G_i is the output gradient, so S is E[g g^T]
    s = g[:, :, -1].T @ g[:, :, -1] / len(x)
    torch.testing.assert_close(f.q_s @ torch.diag(f.eig_s) @ f.q_s.T, s, atol=1e-7, rtol=1e-3)


def test_per_layer_scores_sum_to_total_and_helpful_examples_are_negative(small_digits):
    task = small_digits
    model = task.checkpoint()
    method = EKFAC(damping=0.1)
    method.fit(task, model)
    total = method.score(task, model)
    parts = method.score_per_layer(task, model)
    assert set(parts) == {"0", "2"}
    torch.testing.assert_close(sum(parts.values()), total, rtol=1e-4, atol=1e-6 * total.abs().max().item())
    # a query's own training duplicate would be helpful: the training example with the query's
    # label and the most similar input should on average score below the mean
    q = task.query_split
    t = task.train_split
    nearest = torch.cdist(q.inputs, t.inputs).argmin(1)
    same = t.targets[nearest] == q.targets
    assert (total[same, nearest[same]] < total[same].mean(1)).float().mean() > 0.8


def test_factors_are_cached_by_arguments(small_digits):
    task = small_digits
    model = task.checkpoint()
    cfg = CurvatureConfig(strategy="kfac", seed=3)
    first = fit_curvature(task, model, cfg)
    files = sorted((task.cache_dir / "curvature").glob("*.pt"))
    again = fit_curvature(task, model, cfg)
    assert sorted((task.cache_dir / "curvature").glob("*.pt")) == files
    torch.testing.assert_close(first.layers["2"].q_s, again.layers["2"].q_s)
    assert again.from_cache
    other = fit_curvature(task, model, CurvatureConfig(strategy="kfac", seed=4))
    assert len(list((task.cache_dir / "curvature").glob("*.pt"))) == len(files) + 1
    assert not other.from_cache


def test_layer_patterns_select_layers(small_digits):
    model = small_digits.new_model(0)
    assert list(select_layers(model)) == ["0", "2"]
    assert list(select_layers(model, include=["2"])) == ["2"]
    assert list(select_layers(model, include=["re:[02]"], exclude=["0"])) == ["2"]
    cnn = DigitsCNN(dict(CNN_CFG), seed=0).build_model()
    assert list(select_layers(cnn)) == ["0", "2", "5"]


def test_no_supported_layer_lists_module_names(small_digits):
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(64))
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(x * self.scale)[:, :10]

    with pytest.raises(LayerSelectionError, match=r"modules are: act \(Tanh\)"):
        select_layers(NoLayers())
    with pytest.raises(LayerSelectionError, match=r"0 \(Linear\), 1 \(Tanh\), 2 \(Linear\)"):
        select_layers(small_digits.new_model(0), include=["encoder.*"])
    problems = KFAC(layers=["nothing*"]).check(small_digits)
    assert len(problems) == 1 and "0 (Linear), 1 (Tanh), 2 (Linear)" in problems[0]


def test_bad_parameters_are_reported_by_check(small_digits):
    problems = EKFAC(damping=-1, damping_kind="weird", fisher_samples=0).check(small_digits)
    assert any("damping=-1" in p for p in problems)
    assert any("damping_kind" in p for p in problems)
    assert any("fisher_samples" in p for p in problems)


@pytest.mark.reference
@pytest.mark.parametrize("task_name", ["mlp", "cnn"])
def test_native_agrees_with_kronfluence(request, task_name):
    """Per-query Spearman of native vs kronfluence scores, EK-FAC and K-FAC, true Fisher. On the
    CNN, K-FAC is compared in kronfluence's convention for S (mean over conv positions); see
    test_kfac_position_sum_has_the_fisher_trace for why the native default sums."""
    pytest.importorskip("kronfluence")
    from tdabench.methods.reference.kronfluence import EKFACKronfluence, KFACKronfluence

    task = request.getfixturevalue("small_digits" if task_name == "mlp" else "small_cnn")
    model = task.checkpoint()
    kfac_positions = "sum" if task_name == "mlp" else "mean"
    for native, reference in ((EKFAC(), EKFACKronfluence()),
                              (KFAC(gradient_positions=kfac_positions), KFACKronfluence())):
        native.fit(task, model)
        ours = native.score(task, model)
        reference.fit(task, model)
        theirs = reference.score(task, model)
        rho = mean_spearman(ours, theirs)
        assert rho >= 0.95, f"{native.name} vs {reference.name} on {task_name}: Spearman {rho:.3f}"
    assert not list((task.cache_dir / "tmp").glob("kronfluence-*")), "kronfluence files were left behind"


def test_kfac_position_sum_has_the_fisher_trace(small_cnn):
    """Summing S over a Conv2d's output positions gives K-FAC eigenvalues whose total is close to
    the Fisher's trace (the EK-FAC eigenvalues' total, E||G_i||^2); averaging is off by T."""
    model = small_cnn.checkpoint()
    curv = fit_curvature_uncached(small_cnn, model, CurvatureConfig(strategy="ekfac"))
    for name, positions in (("0", 64), ("2", 9)):
        f = curv.layers[name]
        ratio = float(f.eigenvalues("kfac").sum() / f.corrected.sum())
        assert 0.5 < ratio < 2, (name, ratio)


def test_correct_eigenvalues_refits_in_a_given_basis(small_digits):
    """The public refit reproduces the fit's EK-FAC eigenvalues at the same model (empirical
    Fisher: no sampling), e.g. for a basis shared by several trajectory snapshots."""
    from tdabench.methods.curvature import correct_eigenvalues

    model = small_digits.checkpoint()
    curv = fit_curvature_uncached(small_digits, model, CurvatureConfig(strategy="ekfac", empirical_fisher=True))
    expected = {n: f.corrected.clone() for n, f in curv.layers.items()}
    correct_eigenvalues(small_digits, model, curv)
    for name, f in curv.layers.items():
        torch.testing.assert_close(f.corrected, expected[name])


def test_query_rows_preconditioned_in_slices_match_one_slice(small_digits, monkeypatch):
    from tdabench.methods import curvature as curv_mod

    task = small_digits
    model = task.checkpoint()
    curv = fit_curvature_uncached(task, model, CurvatureConfig(strategy="ekfac"))
    whole = curv_mod.precondition_queries(task, model, curv)
    direct = curv.precondition(per_example_grads(task.observable, model, task.query_split.inputs,
                                                 task.query_split.targets), GradientLayout(model))
    torch.testing.assert_close(whole, direct, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(curv_mod, "PRECONDITION_ROW_BYTES", 1)  # one row at a time
    torch.testing.assert_close(curv_mod.precondition_queries(task, model, curv), whole,
                               rtol=1e-5, atol=1e-7)
    # layer by layer, in blocks of per-example gradients as small as one example: the same
    # scores as the flat dot products with every parameter's gradient
    flat = pairwise_scores(task, model, whole)
    tol = {"rtol": 1e-4, "atol": 1e-5 * flat.abs().max().item()}
    torch.testing.assert_close(pairwise_scores(task, model, whole, curvature=curv), flat, **tol)
    torch.testing.assert_close(pairwise_scores(task, model, whole[:1], batch_size=7, curvature=curv),
                               flat[:1], **tol)
    parts = pairwise_scores(task, model, whole, batch_size=7, curvature=curv, per_layer=True)
    assert set(parts) == set(curv.layers)
    torch.testing.assert_close(sum(parts.values()), flat, **tol)


@pytest.mark.reference
def test_kronfluence_state_of_another_device_is_reset(small_digits):
    """kronfluence's device lives in a process-wide state made by its first analyzer: a CPU run
    after a GPU run in the same process must not inherit the GPU's."""
    pytest.importorskip("kronfluence")
    from kronfluence.utils.state import State

    from tdabench.methods.reference.kronfluence import _kronfluence_cpu

    State._reset_state()
    State(cpu=False)  # as a run on cuda would leave it
    try:
        assert _kronfluence_cpu(small_digits) is True
        assert not State._shared_state  # reset, so the next analyzer makes a CPU state
        State(cpu=True)
        assert _kronfluence_cpu(small_digits) is True and State._shared_state["cpu"] is True  # kept
    finally:
        State._reset_state()
