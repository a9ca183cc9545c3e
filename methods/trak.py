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
Shapes of scores: [n_query, n_train]; on tasks with per-token observables (output loss),
[n_query, T, n_train]: each query token's projected loss gradient in place of phi_q, whose mean
over tokens is the sequence's (its observable is the mean token loss).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from tdabench.harness.plugin.method import Method
from tdabench.harness.plugin.space import Categorical, Int
from tdabench.harness.plugin.task import margin
from tdabench.harness.plugin.training import num_params
from tdabench.methods.gradients import (
    CAST_BLOCK_BYTES,
    gives_token_scores,
    gradient_chunk,
    iter_per_example_parts,
    iter_per_token_grads,
)

OUTPUTS = ("auto", "margin", "loss")
PROJECTIONS = ("rademacher", "gaussian")


#: bytes of the slice of a projection matrix drawn and applied at once
PIECE_BYTES = 2**18
#: on a GPU, a projection matrix of at most this share of the device's free memory is kept there
#: after its first draw (drawn on the CPU, so the values are the CPU's, and copied once)
DEVICE_KEEP_SHARE = 0.25


class Projector:
    """A seeded random projection x -> x R / sqrt(k), R [dim, k] with i.i.d. Rademacher or
    standard Gaussian entries. R is split into blocks of ``block_rows`` rows, block j drawn from a
    generator seeded with ``(seed, j)``; a block is drawn in consecutive slices of at most
    ``piece_bytes`` (a multiple of 16 rows, so Gaussian draws come out as in one call) and each
    slice is applied and dropped at once. R is never held: memory is one slice besides the inputs
    and outputs, and every call draws R afresh. On a GPU the slices are drawn on the CPU (the same
    values on every device) and, where R takes at most ``keep_bytes`` (None: a quarter of the
    device's free memory), kept there after the first call instead of copied every call."""

    def __init__(self, dim: int, proj_dim: int, seed: int, kind: str = "rademacher",
                 block_rows: int = 4096, piece_bytes: int = PIECE_BYTES, keep_bytes: int | None = None):
        if kind not in PROJECTIONS:
            raise ValueError(f"projection {kind!r}: use one of {', '.join(PROJECTIONS)}")
        self.dim, self.proj_dim, self.seed, self.kind = dim, proj_dim, seed, kind
        self.block_rows = block_rows
        self.piece_bytes = piece_bytes
        self.keep_bytes = keep_bytes
        self._kept: dict[tuple[str, torch.dtype], list[tuple[int, torch.Tensor]]] = {}

    def _keeps(self, device, dtype) -> bool:
        """Whether R is kept on ``device`` after its first draw (see the class docstring)."""
        total = self.dim * self.proj_dim * torch.empty((), dtype=dtype).element_size()
        if self.keep_bytes is not None:
            return total <= self.keep_bytes
        if torch.device(device).type != "cuda":
            return False  # on the CPU memory is what the drawing per call saves
        return total <= DEVICE_KEEP_SHARE * torch.cuda.mem_get_info(device)[0]

    def _pieces(self, device, dtype) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, R[first row:first row + rows])`` slices of R, in row order (kept ones if
        R is kept on ``device``)."""
        key = (str(device), dtype)
        if key in self._kept:
            yield from self._kept[key]
            return
        kept = [] if self._keeps(device, dtype) else None
        for first, r in self._drawn(device, dtype):
            if kept is not None:
                kept.append((first, r))
            yield first, r
        if kept is not None:
            self._kept[key] = kept

    def _drawn(self, device, dtype) -> Iterator[tuple[int, torch.Tensor]]:
        """The slices of R, drawn on the CPU and moved to ``device``."""
        size = torch.empty((), dtype=dtype).element_size()
        piece_rows = max(16, self.piece_bytes // (size * self.proj_dim) // 16 * 16)
        for j in range(math.ceil(self.dim / self.block_rows)):
            first = j * self.block_rows
            rows = min(self.block_rows, self.dim - first)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
            for lo in range(0, rows, piece_rows):
                n = min(piece_rows, rows - lo)
                if self.kind == "rademacher":
                    # drawn directly in ``dtype``: the same values as int64 draws, without the copy
                    r = torch.randint(0, 2, (n, self.proj_dim), generator=gen, dtype=dtype).mul_(2).sub_(1)
                else:
                    r = torch.randn(n, self.proj_dim, generator=gen, dtype=dtype)
                yield first + lo, r.div_(math.sqrt(self.proj_dim)).to(device)
                del r

    def project_parts(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        """Project rows split by columns: ``parts`` are ``[B, n_p]`` tensors whose concatenation
        along dim 1 is ``x [B, dim]`` (e.g. per-example gradients parameter by parameter, never
        flattened); returns ``x R`` [B, proj_dim]."""
        spans, start = [], 0
        for part in parts:
            spans.append((start, part))
            start += part.shape[1]
        if start != self.dim:
            raise ValueError(f"inputs have {start} columns; this projection takes {self.dim}")
        first = spans[0][1]
        out = torch.zeros(first.shape[0], self.proj_dim, dtype=first.dtype, device=first.device)
        for lo, r in self._pieces(first.device, first.dtype):
            hi = lo + len(r)
            for off, part in spans:
                a, b = max(lo, off), min(hi, off + part.shape[1])
                if a < b:
                    out.addmm_(part[:, a - off:b - off], r[a - lo:b - lo])
            del r
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` [B, dim] to [B, proj_dim]."""
        return self.project_parts([x])


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


TRAK_SPACE = {"proj_dim": Int(16, 2048, log=True),
              "lambda_reg": Categorical((0.0, 1e-4, 1e-2, 1.0, 100.0))}


class TRAK(Method):
    """TRAK with ``models`` ensemble members (member 0 is the reference checkpoint).

    Parameters: ``proj_dim`` k; ``projection`` rademacher or gaussian; ``lambda_reg`` added to
    Phi^T Phi (in units of squared projected gradients; 0 as in the paper, then proj_dim must be at
    most n_train); ``output`` margin, loss or auto (loss for tasks with per-token observables,
    i.e. language models, margin otherwise); ``ensemble_mode`` full or half (members after the
    first train on random halves); ``batch_size`` examples per gradient chunk.
    """

    #: ensemble members (each one more model training), cheapest first, at the task's proj_dim
    cost_ladder = ({"models": 1}, {"models": 2}, {"models": 5}, {"models": 10}, {"models": 20})
    #: what TRAK's tuning searches (the ensemble size is its cost ladder): the projection size
    #: (too small loses the gradients' information, too large against n_train makes Phi^T Phi
    #: ill-conditioned: the digits frontier found 128 above 512 at 1000 images) and the ridge
    #: ``lambda_reg`` (0 in the paper; the choices are 0 and values two decades apart, in units
    #: of squared projected gradients)
    search_space = TRAK_SPACE

    def __init__(self, seed: int = 0, models: int = 1, proj_dim: int = 512,
                 projection: str = "rademacher", lambda_reg: float = 0.0, output: str = "auto",
                 ensemble_mode: str = "full", batch_size: int = 256):
        super().__init__(seed)
        self.keep_parameters(locals())
        self.requires = frozenset({"checkpoint", "ensemble"} if models > 1 else {"checkpoint"})
        self._train: list[torch.Tensor] = []  # per member: Phi [n_train, k]
        self._store: tempfile.TemporaryDirectory | None = None  # files behind Phi on the CPU
        self._gram_lu: list[tuple[torch.Tensor, torch.Tensor]] = []  # per member: LU of Phi^T Phi + lambda I
        self._out_to_loss: torch.Tensor | None = None
        self._projectors: dict[int, Projector] = {}  # per member (seeds only: R is drawn per call)

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickle) holds its features in memory: the files belong to
        this object's folder, which goes with it."""
        state = dict(self.__dict__)
        if state.get("_store") is not None:
            state["_train"] = [phi.clone() for phi in self._train]
            state["_store"] = None
        return state

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
    def _train_buffer(self, member: int, rows: int, device: torch.device) -> torch.Tensor:
        """Room for one member's Phi [rows, k] float32: on the CPU a tensor over a memory-mapped
        file in a temporary folder that lives as long as the fitted method (as traker keeps its
        features), so the members' features need not stay in memory between fit and score; on
        another device, a tensor there."""
        if device.type != "cpu":
            return torch.empty(rows, self.proj_dim, device=device)
        if self._store is None:
            self._store = tempfile.TemporaryDirectory(prefix="tdabench-trak-", ignore_cleanup_errors=True)
        path = Path(self._store.name) / f"phi_{member}.npy"
        return torch.from_numpy(np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                          shape=(rows, self.proj_dim)))

    def _features(self, task, model, split, member: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Projected output-function gradients of ``split`` under ``model``: [len(split), k]
        float32 (the precision of the gradients), one chunk of gradients at a time, written into
        ``out`` when given."""
        proj = self._projectors.get(member)
        if proj is None:
            proj = self._projectors[member] = member_projector(num_params(model), self.proj_dim,
                                                               self.seed, member, self.projection)
        start = 0
        for parts in iter_per_example_parts(self._output_fn(task), model, split.inputs,
                                            split.targets, self.batch_size):
            feats = proj.project_parts(parts)
            del parts
            if out is None:
                out = feats.new_empty(len(split), self.proj_dim)
            out[start:start + len(feats)] = feats
            start += len(feats)
            del feats
        return out

    def _token_features(self, task, model, member: int) -> torch.Tensor:
        """Projected gradients of each query token's loss: [n_query * T, k] float32 (rows query
        by query), a chunk of examples' token gradients at a time."""
        q = task.query_split
        n_tokens = q.targets.shape[1]
        proj = self._projectors[member]
        chunk = max(1, gradient_chunk(model, self.batch_size) // n_tokens)
        return torch.cat([proj(g.flatten(0, 1)) for g in
                          iter_per_token_grads(task.token_observables, model, q.inputs, q.targets, chunk)])

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task`` (its output is the loss)."""
        return gives_token_scores(task) and self._kind(task) == "loss"

    def _members(self, task, model):
        """The ensemble's models, one at a time (member 0 is ``model``)."""
        return [model] if self.models == 1 else task.ensemble_members(self.models, self.ensemble_mode)

    def fit(self, task, model) -> None:
        """Per member: Phi [n_train, k] (float32; on the CPU in a memory-mapped file) and the LU
        factors of Phi^T Phi + lambda I [k, k] (float64, the Gram matrix summed in float64 over
        row blocks); the mean out-to-loss term. Scoring applies (Phi^T Phi + lambda I)^-1 to the
        queries' features, so no [n_train, k] float64 matrix is held."""
        self._train, self._gram_lu, out_to_loss = [], [], []
        self._projectors = {}
        self._store = None  # a fresh folder: features of an earlier fit stay as they were
        for m, member in enumerate(self._members(task, model)):
            device = next(member.parameters()).device
            phi = self._features(task, member, task.train_split, m,
                                 out=self._train_buffer(m, task.n_train, device))
            gram = self.lambda_reg * torch.eye(self.proj_dim, dtype=torch.float64, device=phi.device)
            for lo in range(0, len(phi), self.batch_size):
                rows = phi[lo:lo + self.batch_size].double()
                gram.addmm_(rows.T, rows)
                del rows
            self._gram_lu.append(torch.linalg.lu_factor(gram))
            del gram
            self._train.append(phi)
            out_to_loss.append(self._out_to_loss_grad(task, member))
        self._out_to_loss = torch.stack(out_to_loss).mean(0)

    def score(self, task, model) -> torch.Tensor:
        """Scores [n_query, (T,) n_train] in the harness convention (d observable_q / d beta_i):
        per member, (Phi^T Phi + lambda I)^-1 phi_q^T [k, n_query] (float64), then that member's
        kernel in blocks of training columns (``CAST_BLOCK_BYTES`` of float64 features), added
        to the float32 result block by block. One member's solved queries are held at a time,
        so memory is the result, one chunk of query gradients (while projecting) and one block."""
        sign = -self._observable_sign(task)
        per_token = self.token_scores(task)
        rows = task.n_query * (task.query_split.targets.shape[1] if per_token else 1)
        out = torch.zeros(rows, task.n_train)
        step = max(1, CAST_BLOCK_BYTES // (8 * self.proj_dim))  # float64 copies of Phi's rows
        n_members = len(self._train)
        out_to_loss = None  # on the device the features live on, moved once
        for m, member in enumerate(self._members(task, model)):
            q = (self._token_features(task, member, m) if per_token
                 else self._features(task, member, task.query_split, m)).double()
            solved = torch.linalg.lu_solve(*self._gram_lu[m], q.T)  # [k, rows]
            del q
            phi = self._train[m]
            if out_to_loss is None:
                out_to_loss = self._out_to_loss.to(solved.device)
            for lo in range(0, task.n_train, step):
                hi = min(lo + step, task.n_train)
                kernel = solved.T @ phi[lo:hi].double().T  # [rows, block]
                kernel *= out_to_loss[lo:hi] * (sign / n_members)
                out[:, lo:hi] += kernel.float().cpu()
                del kernel
            del solved
        return out.view(task.n_query, -1, task.n_train) if per_token else out
