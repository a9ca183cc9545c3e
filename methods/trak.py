"""TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale"), native.

For each of ``models`` independently trained checkpoints m (``task.ensemble``):

- features: per-example gradients of the model output function f, randomly projected to
  ``proj_dim`` dimensions: Phi_m [n_train, k] for training examples, phi_m [n_query, k] for queries;
- the kernel (Phi_m^T Phi_m + lambda I)^-1 [k, k];
- the out-to-loss derivative dl_i/df_i [n_train] (TRAK's "one minus probability" Q, with sign).

The model output function is the correct-class margin f = log(p / (1 - p)) for classification
(then dl/df = -(1 - p)), or the example's loss itself for language-model tasks (dl/df = 1).
Following the paper, the per-model kernel products and the out-to-loss terms are averaged over
the ensemble separately:

    d f_q / d beta_i  ~=  - mean_m[ phi_m,q K_m Phi_m,i^T ]  *  mean_m[ dl_i / df_i ],

and the harness score is that times the sign of d observable_q / d f_q (with the margin as f and
loss as the observable, -1: TRAK's raw scores, positive for helpful examples, get a minus).
Shapes of scores: [n_query, n_train].
"""

from __future__ import annotations

import math

import torch

from tdabench.harness.method import Method
from tdabench.harness.task import margin
from tdabench.harness.training import num_params
from tdabench.methods.gradients import iter_per_example_grads

OUTPUTS = ("auto", "margin", "loss")
PROJECTIONS = ("rademacher", "gaussian")


class Projector:
    """A seeded random projection x -> x R / sqrt(k), R [dim, k] with i.i.d. Rademacher or
    standard Gaussian entries, generated block of ``block_rows`` rows at a time from
    ``(seed, block index)``. Blocks are kept while ``dim * k <= cache_entries`` (the whole matrix
    is then small); otherwise each block is regenerated on every call, so memory stays at one
    ``block_rows x k`` block besides the inputs and outputs."""

    def __init__(self, dim: int, proj_dim: int, seed: int, kind: str = "rademacher",
                 block_rows: int = 4096, cache_entries: int = 2 ** 24):
        if kind not in PROJECTIONS:
            raise ValueError(f"projection {kind!r}: use one of {', '.join(PROJECTIONS)}")
        self.dim, self.proj_dim, self.seed, self.kind = dim, proj_dim, seed, kind
        self.block_rows = block_rows
        self.cache = {} if dim * proj_dim <= cache_entries else None

    def _block(self, j: int, device, dtype) -> torch.Tensor:
        if self.cache is not None and j in self.cache:
            return self.cache[j]
        rows = min(self.block_rows, self.dim - j * self.block_rows)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
        if self.kind == "rademacher":
            # drawn directly in ``dtype``: the same values as int64 draws, without the int64 copy
            r = torch.randint(0, 2, (rows, self.proj_dim), generator=gen, dtype=dtype).mul_(2).sub_(1)
        else:
            r = torch.randn(rows, self.proj_dim, generator=gen, dtype=dtype)
        r = r.div_(math.sqrt(self.proj_dim)).to(device)
        if self.cache is not None:
            self.cache[j] = r
        return r

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` [B, dim] to [B, proj_dim]."""
        out = torch.zeros(x.shape[0], self.proj_dim, dtype=x.dtype, device=x.device)
        for j in range(math.ceil(self.dim / self.block_rows)):
            lo = j * self.block_rows
            out += x[:, lo:lo + self.block_rows] @ self._block(j, x.device, x.dtype)
        return out


def member_projector(dim: int, proj_dim: int, seed: int, member: int,
                     kind: str = "rademacher") -> Projector:
    """The projection of ensemble member ``member`` (each member draws its own)."""
    return Projector(dim, proj_dim, seed + 100_003 * member, kind)


def check_trak_settings(method, task) -> list[str]:
    """Checks shared by ``trak`` and its traker adapter: ``models``, ``proj_dim``, ``batch_size``,
    ``ensemble_mode`` and ``lambda_reg`` (with lambda 0 the kernel needs proj_dim <= n_train)."""
    p = []
    for key in ("models", "proj_dim", "batch_size"):
        v = getattr(method, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            p.append(f"method.{key}={v!r} must be a positive integer")
    if method.ensemble_mode not in ("full", "half"):
        p.append(f"method.ensemble_mode={method.ensemble_mode!r}: use full or half")
    if not isinstance(method.lambda_reg, (int, float)) or method.lambda_reg < 0:
        p.append(f"method.lambda_reg={method.lambda_reg!r} must be a number >= 0")
    elif method.lambda_reg == 0 and isinstance(method.proj_dim, int) and method.proj_dim > task.n_train:
        p.append(f"method.proj_dim={method.proj_dim} exceeds task.n_train={task.n_train}, so "
                 "Phi^T Phi is singular; lower method.proj_dim or set method.lambda_reg > 0")
    return p


class TRAK(Method):
    """TRAK with ``models`` ensemble members (member 0 is the reference checkpoint).

    Parameters: ``proj_dim`` k; ``projection`` rademacher or gaussian; ``lambda_reg`` added to
    Phi^T Phi (in units of squared projected gradients; 0 as in the paper, then proj_dim must be at
    most n_train); ``output`` margin, loss or auto (loss for tasks with per-token observables,
    i.e. language models, margin otherwise); ``ensemble_mode`` full or half (members after the
    first train on random halves); ``batch_size`` examples per gradient chunk.
    """

    #: projection size, then ensemble members (each one more model training), cheapest first
    cost_ladder = ({"models": 1, "proj_dim": 128}, {"models": 1, "proj_dim": 512},
                   {"models": 2, "proj_dim": 512}, {"models": 5, "proj_dim": 512},
                   {"models": 10, "proj_dim": 512})

    def __init__(self, seed: int = 0, models: int = 1, proj_dim: int = 512,
                 projection: str = "rademacher", lambda_reg: float = 0.0, output: str = "auto",
                 ensemble_mode: str = "full", batch_size: int = 256):
        super().__init__(seed)
        self.models = models
        self.proj_dim = proj_dim
        self.projection = projection
        self.lambda_reg = lambda_reg
        self.output = output
        self.ensemble_mode = ensemble_mode
        self.batch_size = batch_size
        self.requires = frozenset({"checkpoint", "ensemble"} if models > 1 else {"checkpoint"})
        self._train: list[torch.Tensor] = []  # per member: Phi (Phi^T Phi + lambda I)^-1 [n_train, k]
        self._out_to_loss: torch.Tensor | None = None
        self._projectors: dict[int, Projector] = {}  # per member

    def check(self, task) -> list[str]:
        p = check_trak_settings(self, task)
        if self.projection not in PROJECTIONS:
            p.append(f"method.projection={self.projection!r}: use one of {', '.join(PROJECTIONS)}")
        if self.output not in OUTPUTS:
            p.append(f"method.output={self.output!r}: use one of {', '.join(OUTPUTS)}")
        return p

    def trainings(self, task) -> int:
        return self.models

    # ----- the model output function --------------------------------------------------------
    def _kind(self, task) -> str:
        if self.output != "auto":
            return self.output
        return "loss" if "per_token" in task.capabilities else "margin"

    def _output_fn(self, task):
        """f(model, x, y) -> [B]."""
        if self._kind(task) == "margin":
            return lambda model, x, y: margin(model(x), y)
        return task.per_example_loss

    @torch.no_grad()
    def _out_to_loss_grad(self, task, model) -> torch.Tensor:
        """dl_i/df_i for every training example: -(1 - p_i) for the margin, 1 for the loss. [n]"""
        if self._kind(task) == "loss":
            return torch.ones(task.n_train)
        s = task.train_split
        logits = task.batched(lambda m, x, y: m(x), model, s, self.batch_size)
        p = logits.softmax(-1).gather(1, s.targets[:, None])[:, 0]
        return -(1 - p).double().cpu()

    def _observable_sign(self, task) -> float:
        """Sign of d observable / d f for one query (observable loss or margin)."""
        same = (self._kind(task) == "margin") == (task.observable_kind == "margin")
        return 1.0 if same else -1.0

    # ----- features ---------------------------------------------------------------------------
    def _features(self, task, model, split, member: int) -> torch.Tensor:
        """Projected output-function gradients of ``split`` under ``model``: [len(split), k]."""
        proj = self._projectors.get(member)
        if proj is None:  # kept for score: a small projection matrix is drawn once, in fit
            proj = self._projectors[member] = member_projector(num_params(model), self.proj_dim,
                                                               self.seed, member, self.projection)
        chunks = iter_per_example_grads(self._output_fn(task), model, split.inputs, split.targets,
                                        self.batch_size)
        out = torch.empty(len(split), self.proj_dim, dtype=torch.float64)
        start = 0
        for g in chunks:
            out[start:start + len(g)] = proj(g)
            start += len(g)
        return out

    def _members(self, task, model):
        return [model] if self.models == 1 else task.ensemble(self.models, self.ensemble_mode)

    def fit(self, task, model) -> None:
        """Per member: Phi (Phi^T Phi + lambda I)^-1 [n_train, k]; the mean out-to-loss term."""
        self._train, out_to_loss = [], []
        self._projectors = {}
        for m, member in enumerate(self._members(task, model)):
            phi = self._features(task, member, task.train_split, m)
            gram = phi.T @ phi + self.lambda_reg * torch.eye(self.proj_dim, dtype=phi.dtype)
            self._train.append(torch.linalg.solve(gram, phi.T).T)
            out_to_loss.append(self._out_to_loss_grad(task, member))
        self._out_to_loss = torch.stack(out_to_loss).mean(0)

    def score(self, task, model) -> torch.Tensor:
        """Scores [n_query, n_train] in the harness convention (d observable_q / d beta_i)."""
        kernel = torch.zeros(task.n_query, task.n_train, dtype=torch.float64)
        for m, member in enumerate(self._members(task, model)):
            kernel += self._features(task, member, task.query_split, m) @ self._train[m].T
        kernel /= len(self._train)
        return (-self._observable_sign(task) * kernel * self._out_to_loss).float()
