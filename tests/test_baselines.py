import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from tdabench.harness.plugin.task import Split
from tdabench.methods.baselines import GradCos, GradDot, RandomScores
from tdabench.methods.exact_if import ExactIF
from tdabench.tasks.digits import DigitsMLP
from tests.conftest import SMALL_DIGITS


def test_shapes_and_determinism(small_digits):
    model = small_digits.checkpoint()
    for m in (RandomScores(seed=1), GradDot(), GradCos(), ExactIF()):
        m.fit(small_digits, model)
        s = m.score(small_digits, model)
        assert s.shape == (20, 200) and torch.isfinite(s).all()
        m.fit(small_digits, model)
        assert torch.equal(s, m.score(small_digits, model)), m.name


def test_sign_convention_same_class_examples_help(small_digits):
    """Training examples of the query's own class lower its loss: their scores are negative."""
    model = small_digits.checkpoint()
    y_q, y_t = small_digits.query_split.targets, small_digits.train_split.targets
    same = y_q[:, None] == y_t[None, :]
    for m in (GradDot(), ExactIF()):
        m.fit(small_digits, model)
        s = m.score(small_digits, model)
        assert s[same].mean() < 0, m.name
        assert s[same].mean() < s[~same].mean(), m.name


class LinearDigits(DigitsMLP):
    """Multinomial logistic regression on digits: with weight decay the objective is strongly
    convex, so the classical IF is the exact first-order effect of up-weighting."""

    def build_model(self):
        return torch.nn.Linear(64, 10).double()  # float64: the check needs a tight optimum

    def load_splits(self):
        return [Split(s.inputs.double(), s.targets) for s in super().load_splits()]


def test_exact_if_matches_the_true_effect_of_upweighting(digits_cache):
    task = LinearDigits(dict(SMALL_DIGITS, recipe=dict(SMALL_DIGITS["recipe"], weight_decay=0.01)),
                        seed=0, cache_dir=digits_cache, log=lambda m: None)
    wd = task.recipe().weight_decay
    tr, q = task.train_split, task.query_split

    def optimize(weights):
        mdl = task.checkpoint()
        opt = torch.optim.LBFGS(mdl.parameters(), lr=1, max_iter=1000, tolerance_grad=1e-9,
                                tolerance_change=1e-12, history_size=50, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (weights * F.cross_entropy(mdl(tr.inputs), tr.targets, reduction="none")).mean()
            loss = loss + 0.5 * wd * sum((p ** 2).sum() for p in mdl.parameters())
            loss.backward()
            return loss

        opt.step(closure)
        return mdl

    base = optimize(torch.ones(len(tr), dtype=torch.float64))
    m = ExactIF(damping=0.0)
    m.fit(task, base)
    scores = m.score(task, base)
    eps = 0.5
    for i in (0, 1, 2):
        w = torch.ones(len(tr), dtype=torch.float64)
        w[i] += eps
        with torch.no_grad():
            dq = (task.observable(optimize(w), q.inputs, q.targets)
                  - task.observable(base, q.inputs, q.targets)) / eps
        assert spearmanr(dq.numpy(), scores[:, i].numpy()).statistic > 0.95
        assert torch.allclose(dq, scores[:, i].double(), rtol=0.2, atol=1e-4)


def test_exact_if_refuses_large_models(small_digits):
    problems = ExactIF(max_params=100).check(small_digits)
    assert problems and "max_params=100" in problems[0] and "parameters" in problems[0]


def test_missing_reference_library_names_the_install_command():
    from tdabench.harness.plugin.method import Method

    class NeedsLib(Method):
        name = "needs_lib"
        extra = "reference"
        needs_module = "no_such_library_for_tdabench"

    msg = NeedsLib.available()
    assert "no_such_library_for_tdabench package" in msg and "pip install 'tdabench[reference]'" in msg
    assert "pip install -e '.[reference]'" in msg  # the source checkout's form too
    assert Method.available() is None

    class NeedsRenamed(NeedsLib):
        needs_distribution = "no_such_distribution"

    assert "needs the no_such_distribution package" in NeedsRenamed.available()


def test_streamed_training_gradient_dots_match_the_full_product(small_digits):
    from tdabench.methods.gradients import train_grad_dots, train_grads

    model = small_digits.checkpoint()
    gt = train_grads(small_digits, model)
    q = torch.randn(5, gt.shape[1], dtype=torch.float64)
    dots = train_grad_dots(small_digits, model, q, batch_size=7)  # chunks that do not divide n
    assert dots.shape == (5, small_digits.n_train) and dots.dtype == torch.float64
    assert torch.allclose(dots, q @ gt.double().T, rtol=1e-5, atol=1e-8)
    cos = train_grad_dots(small_digits, model, q, batch_size=64, normalize=True)
    unit = gt.double() / gt.double().norm(dim=1, keepdim=True)
    assert torch.allclose(cos, q @ unit.T, rtol=1e-5, atol=1e-8)


def test_streamed_dots_cast_in_slices_and_accumulate_in_place(small_digits, monkeypatch):
    from tdabench.methods import gradients
    from tdabench.methods.gradients import per_example_grads, train_grad_dots, train_grads

    model = small_digits.checkpoint()
    q = torch.randn(4, train_grads(small_digits, model).shape[1], dtype=torch.float64)
    whole = train_grad_dots(small_digits, model, q, batch_size=9)
    monkeypatch.setattr(gradients, "CAST_BLOCK_BYTES", 8 * 9 * 5)  # float64 slices of 5 columns
    sliced = train_grad_dots(small_digits, model, q, batch_size=9)
    assert torch.allclose(sliced, whole, rtol=1e-12, atol=1e-14)
    acc = torch.ones(4, small_digits.n_train, dtype=torch.float64)
    out = train_grad_dots(small_digits, model, q, batch_size=9, out=acc, alpha=-0.5)
    assert out is acc and torch.allclose(acc, 1 - 0.5 * whole, rtol=1e-12, atol=1e-14)
    # gradients written chunk by chunk into one matrix equal those of a single chunk
    s = small_digits.train_split
    one = per_example_grads(small_digits.per_example_loss, model, s.inputs, s.targets, chunk=len(s))
    chunked = per_example_grads(small_digits.per_example_loss, model, s.inputs, s.targets, chunk=7)
    assert torch.allclose(chunked, one, rtol=1e-6, atol=1e-7)


def test_chunks_computed_in_smaller_calls_equal_whole_chunks(small_digits, monkeypatch):
    """Where a chunk's workspace exceeds the budget, its gradients come from smaller vmap calls
    (or single-example backward passes) assembled in a buffer; the values do not change."""
    from tdabench.methods import gradients
    from tdabench.methods.gradients import (
        iter_per_example_grads,
        iter_per_example_parts,
        per_example_grads,
        train_grad_dots,
    )

    model = small_digits.checkpoint()
    s = small_digits.train_split
    whole = per_example_grads(small_digits.per_example_loss, model, s.inputs, s.targets)
    q = torch.randn(3, whole.shape[1], dtype=torch.float64)
    dots = train_grad_dots(small_digits, model, q, batch_size=16)
    for micro in (1, 5):  # a plain backward pass per example; vmap calls of 5 into chunks of 16
        chunks = list(gradients._iter_per_example(gradients.grad, small_digits.per_example_loss, model,
                                                  s.inputs, s.targets, 16, micro=micro))
        assert [list(tree) for _, tree in chunks[:1]] == [[""]]  # one [16, P] buffer
        flat = torch.cat([tree[""] for _, tree in chunks])
        assert torch.allclose(flat, whole, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(gradients, "WORKSPACE_FRACTION", 0.0)  # every call takes one example
    assert gradients.micro_batch(model, 1, 16, held_bytes=10**9) == 1
    assert torch.allclose(torch.cat(list(iter_per_example_grads(small_digits.per_example_loss, model,
                                                                s.inputs, s.targets, 16))), whole,
                          rtol=1e-5, atol=1e-7)
    parts = list(iter_per_example_parts(small_digits.per_example_loss, model, s.inputs, s.targets, 16))
    assert torch.allclose(torch.cat([torch.cat(p, 1) for p in parts]), whole, rtol=1e-5, atol=1e-7)
    assert torch.allclose(train_grad_dots(small_digits, model, q, batch_size=16), dots,
                          rtol=1e-5, atol=1e-6)  # float32 gradients by another route
    assert torch.allclose(per_example_grads(small_digits.per_example_loss, model, s.inputs, s.targets),
                          whole, rtol=1e-5, atol=1e-7)


def test_micro_batches_follow_the_workspace_of_the_model(small_digits):
    """An MLP's workspace is a fraction of its gradient, so a chunk is one call; a convolutional
    network keeps activations larger than its gradient, so its chunks are split."""
    from tdabench.methods.gradients import micro_batch, workspace_bytes

    model = small_digits.checkpoint()
    s = small_digits.train_split
    w = workspace_bytes(small_digits.per_example_loss, model, s.inputs, s.targets)
    assert 0 < w < 4 * sum(p.numel() for p in model.parameters())
    assert micro_batch(model, w, 64) == 64
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])

    def loss(m, xb, yb):
        return torch.nn.functional.cross_entropy(m(xb), yb, reduction="none")

    wc = workspace_bytes(loss, conv, x, y)
    grad_bytes = 4 * sum(p.numel() for p in conv.parameters())
    assert wc > 10 * grad_bytes  # 32x32 activations of 8 channels against 900 weights
    m = micro_batch(conv, wc, 64, held_bytes=0)
    assert 1 <= m < 64 and m * (grad_bytes + wc) <= 0.5 * 64 * grad_bytes or m == 1


def test_a_parameter_outside_the_graph_gets_zero_gradients_on_every_path():
    """vmap(grad) gives zeros for a parameter the loss does not use; so must the single-example
    backward pass (a last chunk of one example, or calls of one)."""
    from tdabench.methods.gradients import per_example_grads

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model.register_parameter("unused", torch.nn.Parameter(torch.ones(5)))
    x, y = torch.randn(7, 4), torch.tensor([0, 1, 0, 1, 1, 0, 1])

    def loss(m, xb, yb):
        return torch.nn.functional.cross_entropy(m(xb), yb, reduction="none")

    whole = per_example_grads(loss, model, x, y, chunk=7)
    tail = per_example_grads(loss, model, x, y, chunk=3)  # chunks 3, 3 and 1
    assert torch.allclose(tail, whole, rtol=1e-5, atol=1e-7)
    assert [n for n, _ in model.named_parameters()][0] == "unused"  # the first 5 columns
    assert torch.equal(whole[:, :5], torch.zeros(7, 5)) and whole[:, 5:].abs().sum() > 0


def test_chunks_are_larger_on_a_gpu_and_unchanged_on_a_cpu(monkeypatch):
    from types import SimpleNamespace

    from tdabench.methods.gradients import GRAD_CHUNK_BYTES, chunk_bytes

    assert chunk_bytes("cpu", GRAD_CHUNK_BYTES) == GRAD_CHUNK_BYTES
    for total, expected in ((80 * 2**30, 2**30), (16 * 2**30, 2**28), (2**28, GRAD_CHUNK_BYTES)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, t=total: SimpleNamespace(total_memory=t))
        assert chunk_bytes("cuda", GRAD_CHUNK_BYTES) == expected  # capped at 1 GiB, never below the CPU's
