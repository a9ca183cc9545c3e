"""The classical influence function with the exact Hessian: a dense solve, or matrix-free.

The objective is J(w) = (1/n) sum_i beta_i l_i(w) + (wd/2) ||w||^2 (the recipe's weight decay), and
    scores[q, i] = d phi_q / d beta_i = -(1/n) grad phi_q^T (H + damping I)^-1 grad l_i   at w*,
with H the exact Hessian of J (Koh & Liang 2017). Helpful examples score negative.

``solver`` picks how (H + damping I) x = grad phi_q is solved for every query at once:

- ``dense``: H is built from Hessian-vector products in blocks of rows (float64, P x P) and solved
  by LU, the factors written over the matrix; memory about 1 float64 Hessian plus the model and
  one block's products, so models above ``max_params`` are refused.
- ``cg``: conjugate gradients on all queries' systems together, each iteration one batched
  Hessian-vector product (``torch.func``: forward-over-reverse over the training set); memory a
  few ``n_query x P`` blocks, so it runs on the CIFAR ResNet-9. Stops at relative residual
  ``tol`` or after ``max_iter`` iterations. An unfinished solve keeps its iterate in the task's
  cache (``solver/``, saved at most once a minute) and the next run with the same task, model and
  settings resumes from it, so a long solve can be spread over several runs (``limits.max_seconds``
  ends one cleanly); the record's diagnostics say from which iteration it resumed.
- ``lissa``: the Neumann-series iteration x <- v + x - (H + damping I) x / scale (Agarwal et al.
  2017, with full-batch products), ``max_iter`` terms; ``scale`` defaults to 1.1 x the largest
  eigenvalue of H + damping I from a few power iterations. Converges only where H + damping I is
  positive definite, and slowly (about scale / smallest eigenvalue terms).

``dtype`` sets the precision of the Hessian-vector products: float64 (default) or float32, about
2.7x cheaper on a CPU (CIFAR-10 ResNet-9, 500 images: 4.6 against 12.6 CPU seconds per vector) but
symmetric only to float32 rounding, which limits how far CG can reduce the residual.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, jvp, vmap
from tqdm import tqdm

from tdabench.harness.core.logs import Ticker
from tdabench.harness.core.storage import load_state, remove_verified, save_verified
from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.space import Float
from tdabench.methods.curvature import model_digest
from tdabench.methods.gradients import eval_mode, num_params, query_grads, train_grads, trainable_params

log = logging.getLogger(__name__)

SOLVERS = ("dense", "cg", "lissa")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


class TrainingHessian:
    """Products with H + (wd + damping) I of the training objective J at the model's parameters,
    for blocks of vectors ``V`` [r, P] (flattened in ``named_parameters`` order): ``V @ H`` [r, P]
    (H is symmetric). Evaluated in eval mode over the training set in batches of ``batch_size``,
    in ``dtype`` (float64 by default: the matrix-free solvers need products that are symmetric to
    rounding, which float32 products on a near-singular Hessian are not)."""

    def __init__(self, task, model, damping: float, batch_size: int,
                 dtype: torch.dtype = torch.float64):
        self.task, self.model, self.batch_size, self.dtype = task, model, batch_size, dtype
        self.params = {k: v.to(dtype) for k, v in trainable_params(model).items()}
        self.buffers = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach()
                        for k, v in model.named_buffers()}
        self.shapes = {k: v.shape for k, v in self.params.items()}
        self.sizes = [v.numel() for v in self.params.values()]
        self.flat = torch.cat([v.reshape(-1) for v in self.params.values()])
        self.shift = task.recipe().weight_decay + damping
        self.calls = 0

    @property
    def size(self) -> int:
        return len(self.flat)

    def _tree(self, flat: torch.Tensor) -> dict:
        return {k: c.view(self.shapes[k]) for k, c in zip(self.shapes, flat.split(self.sizes))}

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """(H + shift I) applied to each row of ``vectors`` [r, P] (any float dtype): same shape
        and dtype."""
        s = self.task.train_split
        n = len(s)
        task, model, buffers = self.task, self.model, self.buffers

        def objective(flat, x, y):
            def f(inp):
                return functional_call(model, (self._tree(flat), buffers), (inp,))
            return task.per_example_loss(f, x, y).sum() / n

        def hvp(v, x, y):
            return jvp(lambda w: grad(objective)(w, x, y), (self.flat,), (v,))[1]

        v = vectors.to(self.dtype)
        out = torch.zeros(vectors.shape, dtype=torch.float64, device=vectors.device)
        with eval_mode(model):
            for i in range(0, n, self.batch_size):
                x, y = s.inputs[i:i + self.batch_size], s.targets[i:i + self.batch_size]
                x = x.to(self.dtype) if x.is_floating_point() else x
                out += vmap(hvp, in_dims=(0, None, None))(v, x, y).double()
        self.calls += 1
        return (out + self.shift * vectors.double()).to(vectors.dtype)


def dense_hessian(op: TrainingHessian, block: int = 32) -> torch.Tensor:
    """H + shift I as a float64 [P, P] matrix, built in place in row blocks of ``block`` basis
    vectors (rows H e_i, symmetric up to rounding); beside the matrix only ``block`` rows and the
    Hessian-vector products' activations are held."""
    p = op.size
    h = torch.empty(p, p, dtype=torch.float64, device=op.flat.device)
    ticker = Ticker(log, "exact_if: Hessian rows", p)
    for i in range(0, p, block):
        rows = torch.zeros(min(block, p - i), p, dtype=torch.float64, device=op.flat.device)
        rows[:, i:i + block].fill_diagonal_(1.0)
        h[i:i + block] = op.matmul(rows)
        ticker.tick(min(i + block, p))
    return h


def conjugate_gradient(op, b: torch.Tensor, tol: float, max_iter: int, state_path: Path | None = None,
                       save_every_s: float = 60.0) -> tuple[torch.Tensor, dict]:
    """Solve op(x) = b for each row of ``b`` [r, P] (float64) by conjugate gradients, all rows
    together; returns x and {iterations, relative residual (max over rows), resumed_from}.

    With ``state_path``, the iterate (x, residual, direction) is saved there (atomically, verified)
    at most every ``save_every_s`` seconds, and a run that finds a state for the same ``b`` starts
    from it: a long solve resumes after an interruption or a time limit. The state is removed once
    the solve stops."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    b_norm = b.norm(dim=1).clamp_min(1e-300)
    it = start = 0
    st = load_state(state_path, ("b", "x", "r", "p", "rs", "iterations"),
                    lambda st: st["b"].shape == b.shape and torch.equal(st["b"], b), device=b.device)
    if st is not None:
        x, r, p, rs, start = st["x"], st["r"], st["p"], st["rs"], st["iterations"]
    bar = tqdm(total=max_iter, initial=start, desc="exact_if: conjugate gradients", unit="it",
               mininterval=5, leave=False, disable=len(b[0]) < 50_000)
    saved = time.monotonic()
    it = start
    for it in range(start + 1, max_iter + 1):
        bar.update()
        if state_path is not None and time.monotonic() - saved > save_every_s:
            save_verified({"b": b, "x": x, "r": r, "p": p, "rs": rs, "iterations": it - 1}, state_path)
            saved = time.monotonic()
        ap = op(p)
        curv = (p * ap).sum(1)
        alpha = torch.where(curv.abs() > 0, rs / curv, torch.zeros_like(rs))
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        rs_new = (r * r).sum(1)
        if float((rs_new.sqrt() / b_norm).max()) < tol:
            rs = rs_new
            break
        p = r + (rs_new / rs.clamp_min(1e-300))[:, None] * p
        rs = rs_new
        bar.set_postfix(residual=f"{float((rs.sqrt() / b_norm).max()):.2e}", refresh=False)
    bar.close()
    if state_path is not None:
        remove_verified(state_path)
    return x, {"iterations": it, "relative_residual": float((rs.sqrt() / b_norm).max()),
               "resumed_from": start}


def lissa(op, b: torch.Tensor, scale: float, max_iter: int, tol: float) -> tuple[torch.Tensor, dict]:
    """Neumann series for op(x) = b: x_{j+1} = b + x_j - op(x_j) / scale, answer x / scale."""
    x = b.clone()
    change = float("inf")
    it = 0
    for it in range(1, max_iter + 1):
        new = b + x - op(x) / scale
        change = float(((new - x).norm(dim=1) / new.norm(dim=1).clamp_min(1e-300)).max())
        x = new
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"LiSSA diverged after {it} iterations: method.scale={scale:.3g} "
                                     "is below the largest eigenvalue of H + damping; raise it")
        if change < tol:
            break
    return x / scale, {"iterations": it, "relative_change": change, "scale": scale}


def top_eigenvalue(op, p: int, iters: int = 20, seed: int = 0, device=None) -> float:
    """Largest-magnitude eigenvalue of op (a symmetric [P, P] operator on ``device``) by power
    iteration (the start vector is drawn on the CPU, so every device starts from the same one)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, p, generator=g, dtype=torch.float64).to(device)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = op(v)
        lam = float((v * w).sum())
        v = w / w.norm().clamp_min(1e-300)
    return abs(lam)


class ExactIF(Method):
    """Classical influence function with the exact Hessian of the training objective; see the
    module docstring for the solvers. ``max_params`` bounds the dense solve only."""

    #: the damping added to the Hessian (beyond the weight decay): a trained network's Hessian has
    #: small and negative eigenvalues, whose inverse the damping bounds; log scale
    search_space = {"damping": Float(1e-6, 1.0, log=True)}

    def __init__(self, seed: int = 0, damping: float = 1e-3, max_params: int = 20000,
                 batch_size: int = 256, solver: str = "dense", tol: float = 1e-6,
                 max_iter: int = 200, scale: float | None = None, dtype: str = "float64"):
        super().__init__(seed)
        self.keep_parameters(locals())
        self.h_inv_q: torch.Tensor | None = None
        self.diagnostics: dict | None = None

    def check(self, task) -> list[str]:
        if self.solver not in SOLVERS:
            return [f"method.solver={self.solver!r}: use one of {', '.join(SOLVERS)}"]
        if self.damping < 0:
            return [f"method.damping={self.damping} must be >= 0"]
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            return [f"method.max_iter={self.max_iter!r} must be a positive integer"]
        if self.dtype not in DTYPES:
            return [f"method.dtype={self.dtype!r}: use float64 (default) or float32 (Hessian-vector "
                    "products about 2.7x cheaper on a CPU, symmetric only to float32 rounding)"]
        if self.scale is not None and not self.scale > 0:
            return [f"method.scale={self.scale!r} must be null (from a power iteration) or positive"]
        p = num_params(task.new_model(task.seed))
        if self.solver == "dense" and p > self.max_params:
            return [f"exact_if needs a {p}x{p} Hessian: the {task.name} model has {p} parameters, "
                    f"above method.max_params={self.max_params}; use method.solver=cg (matrix-free), "
                    "ekfac or kfac, or raise method.max_params"]
        return []

    def hessian(self, task, model) -> torch.Tensor:
        """H + (weight decay + damping) I at the model's parameters: float64 [P, P]."""
        return dense_hessian(TrainingHessian(task, model, self.damping, self.batch_size))

    def state_path(self, task, model) -> Path:
        """Where an unfinished conjugate-gradient solve keeps its iterate (in the task's cache,
        keyed by the task, the model's parameters and the settings that change the iterates)."""
        return task.cache_path("solver", "exact_if-cg", {"model": model_digest(model), "damping": self.damping,
                                                         "dtype": self.dtype, "batch_size": self.batch_size})

    def fit(self, task, model) -> None:
        gq = query_grads(task, model, self.batch_size).double()  # [n_query, P]
        op = TrainingHessian(task, model, self.damping, self.batch_size, DTYPES[self.dtype])
        if self.solver == "dense":
            h = dense_hessian(op)
            # LU factors written over H itself: memory one Hessian, not two
            pivots = torch.empty(op.size, dtype=torch.int32, device=h.device)
            info = torch.empty((), dtype=torch.int32, device=h.device)
            torch.linalg.lu_factor_ex(h, out=(h, pivots, info))
            if int(info) > 0:
                raise torch.linalg.LinAlgError(
                    f"exact_if: H + damping I is singular (zero pivot {int(info)}) at "
                    f"method.damping={self.damping}; raise method.damping")
            self.h_inv_q = torch.linalg.lu_solve(h, pivots, gq.T)  # [P, n_query]
            del h
            self.diagnostics = {"solver": "dense", "hvp_calls": op.calls}
            return
        if self.solver == "cg":
            x, info = conjugate_gradient(op.matmul, gq, self.tol, self.max_iter, self.state_path(task, model))
        else:
            scale = self.scale or 1.1 * top_eigenvalue(op.matmul, op.size, seed=self.seed, device=gq.device)
            x, info = lissa(op.matmul, gq, scale, self.max_iter, self.tol)
        self.h_inv_q = x.T
        self.diagnostics = {"solver": self.solver, "hvp_calls": op.calls, **info}

    def score(self, task, model) -> torch.Tensor:
        gt = train_grads(task, model, self.batch_size).double()
        return (-(gt @ self.h_inv_q).T / task.n_train).float()
