"""Exact unrolling (MAGIC; Ilyas & Engstrom 2025): metagradients through the whole training run.

Training is replayed step by step (``task.replay(seed)``, capability ``replayable``) with a weight
beta_i on every training example's loss in its minibatches (beta = 1 is the actual run). With
w_T the final parameters, ``scores[q, i] = d phi_q(w_T) / d beta_i`` at beta = 1, taken exactly
by reverse mode through every optimizer step: SGD with momentum and weight decay, the learning
rate schedule, the same minibatches and augmentation draws. Averaged over ``seeds`` training runs.

Reverse mode. One step maps (w_t, m_t) to (w_{t+1}, m_{t+1}) with m_{t+1} = mu m_t + grad L_t(w_t)
+ wd w_t and w_{t+1} = w_t - lr_t m_{t+1}, L_t = sum_{i in batch} beta_i l_i / B. Going backwards
from the adjoint grad phi_q(w_T), each step's vector-Jacobian product (one double backward through
the minibatch) gives the adjoints of (w_t, m_t) and d phi_q / d beta_i for the batch's examples,
which are summed over every step the example took part in. All queries go through at once as
batched cotangents (``query_batch`` at a time). Batch-norm running statistics are replayed but held
fixed in the derivative (the path through them is not differentiated); models without them
(digits_mlp, text_neox) get the exact derivative.

Memory. The forward replay keeps (w, m, buffers) every k steps; the backward pass recomputes each
segment of k steps from its checkpoint, so about (T/k + k) model states are held, minimized by
k = ceil(sqrt(T)) (``segment: null``); the adjoints add 2 x ``query_batch`` model-sized tensors.
Cost: one forward replay plus, per segment, a recompute and k double backwards: about 4-5
trainings per seed per query batch.

Sign convention: positive scores mean more weight on example i raises query q's observable
(with loss as the observable, helpful examples score negative). Shapes: ``[n_query, n_train]``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from tqdm import tqdm

from tdabench.harness.core.storage import load_state, remove_verified, save_verified
from tdabench.harness.plugin.method import Method

log = logging.getLogger(__name__)

SEED_STRIDE = 104729  # training seeds of magic: the reference seed, then seed + stride * s


class Magic(Method):
    requires = frozenset({"checkpoint", "replayable"})
    #: training runs averaged (one more replayed training each), cheapest first
    cost_ladder = ({"seeds": 1}, {"seeds": 2}, {"seeds": 3})

    #: by default, as many training runs as the ground truth has seeds, and the reference run
    #: alone when the ground truth is the same-seed one
    follows = {"seed": "seed", "seeds": "gt.seeds", "same_seed": "gt.same_seed"}

    def __init__(self, seed: int = 0, seeds: int = 1, same_seed: bool = False,
                 segment: int | None = None, query_batch: int = 64):
        super().__init__(seed)
        self.seeds = seeds
        self.same_seed = same_seed
        self.segment = segment
        self.query_batch = query_batch
        self.diagnostics: dict | None = None

    def check(self, task) -> list[str]:
        problems = []
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            problems.append(f"method.seeds={self.seeds!r} must be a positive integer (training runs "
                            "averaged)")
        if self.segment is not None and (not isinstance(self.segment, int) or self.segment < 1):
            problems.append(f"method.segment={self.segment!r} must be null (sqrt of the step count) "
                            "or a positive number of steps between checkpoints")
        if not isinstance(self.query_batch, int) or self.query_batch < 1:
            problems.append(f"method.query_batch={self.query_batch!r} must be a positive integer")
        return problems

    def training_seeds(self, task) -> list[int]:
        """The reference run's seed (the checkpoint), then seeds no ground truth uses; the
        reference run alone in the same-seed setting (the ground truth's own run)."""
        n = 1 if self.same_seed else self.seeds
        return [task.seed + SEED_STRIDE * s for s in range(n)]

    def trainings(self, task) -> int:
        return len(self.training_seeds(task))

    def score(self, task, model) -> torch.Tensor:
        scores = torch.zeros(task.n_query, task.n_train, dtype=torch.float64, device=task.device)
        seeds = self.training_seeds(task)
        for i, s in enumerate(seeds):
            log.info(f"magic: metagradients through training run {i + 1} of {len(seeds)} (seed {s})")
            replay = task.replay(s)
            for q0 in range(0, task.n_query, self.query_batch):
                q = slice(q0, min(q0 + self.query_batch, task.n_query))
                state = self.state_path(task, s, q)
                scores[q] += metagradient(task, replay, q, self.segment, self.diagnostics_for(replay), state)
        return (scores / len(seeds)).float()

    def state_path(self, task, seed: int, queries: slice) -> Path:
        """Where an unfinished reverse pass keeps its adjoints (the task's cache, keyed by the task,
        the training seed, the segment length and the queries)."""
        return task.cache_path("solver", "magic", {"seed": seed, "segment": self.segment,
                                                   "queries": [queries.start, queries.stop]})

    def diagnostics_for(self, replay) -> dict:
        k = self.segment or max(1, math.ceil(math.sqrt(replay.steps)))
        self.diagnostics = {"steps": replay.steps, "segment": k,
                            "states_held": math.ceil(replay.steps / k) + k}
        return self.diagnostics


def _detached(tree: dict, grad: bool = False) -> dict:
    return {k: v.detach().clone().requires_grad_(grad) for k, v in tree.items()}


def metagradient(task, replay, queries: slice, segment: int | None = None,
                 diagnostics: dict | None = None, state_path: Path | None = None) -> torch.Tensor:
    """d phi_q(w_T) / d beta_i of one replayed run for the queries ``queries``: float64
    ``[len(queries), n_train]``, by reverse mode through checkpointed segments of ``segment``
    steps (default ceil(sqrt(steps))).

    With ``state_path``, the adjoints and the partial result are saved there (atomically, verified)
    after every segment of the reverse pass, and a run that finds them continues from the last
    saved segment (the forward replay, a small part of the cost, is redone): a long reverse pass
    resumes after an interruption. The state is removed when the pass completes."""
    T = replay.steps
    k = segment or max(1, math.ceil(math.sqrt(T)))
    # forward replay, keeping a checkpoint at every segment start
    params, momentum, buffers = replay.initial()
    checkpoints = {}
    for t in range(T):
        if t % k == 0:
            checkpoints[t] = (_detached(params), _detached(momentum), _detached(buffers))
        params, momentum = replay.step(t, _detached(params, True), momentum, buffers)
    # adjoints of the final parameters: the query observables' gradients, one row per query
    split = task.query_split
    final = _detached(params, True)
    phi = task.observable(lambda x: replay.call(final, buffers, x, False),
                          split.inputs[queries], split.targets[queries])
    nq = len(phi)
    eye = torch.eye(nq, dtype=phi.dtype, device=phi.device)
    adj_w = dict(zip(final, torch.autograd.grad(phi, list(final.values()), eye, is_grads_batched=True)))
    adj_m = {key: torch.zeros_like(v) for key, v in adj_w.items()}
    out = torch.zeros(nq, task.n_train, dtype=torch.float64, device=phi.device)
    names = list(final)
    done_from = T  # the reverse pass has covered steps done_from .. T-1
    st = load_state(state_path, ("steps", "segment", "done_from", "adj_w", "adj_m", "out"),
                    lambda st: st["steps"] == T and st["segment"] == k and st["out"].shape == out.shape,
                    device=phi.device)
    if st is not None:
        adj_w, adj_m, out, done_from = st["adj_w"], st["adj_m"], st["out"], st["done_from"]
        if diagnostics is not None:
            diagnostics["resumed_from_step"] = done_from
    bar = tqdm(total=T, initial=T - done_from, desc=f"magic: reverse steps, {nq} queries", unit="step",
               mininterval=5, leave=False, disable=T < 50)
    for start in sorted((c for c in checkpoints if c < done_from), reverse=True):
        stop = min(start + k, T)
        p, m, b = (_detached(x) for x in checkpoints[start])
        states = []
        for t in range(start, stop):  # recompute the segment
            states.append((p, m, _detached(b)))
            p, m = replay.step(t, _detached(p, True), m, b)
            p = {key: v.detach() for key, v in p.items()}
            m = {key: v.detach() for key, v in m.items()}
        for t in range(stop - 1, start - 1, -1):
            p_t, m_t, b_t = states[t - start]
            p_in, m_in = _detached(p_t, True), _detached(m_t, True)
            batch = replay.batch(t)[0]
            beta = torch.ones(len(batch), dtype=phi.dtype, device=phi.device, requires_grad=True)
            new_p, new_m = replay.step(t, p_in, m_in, _detached(b_t), beta=beta, create_graph=True)
            outputs = [new_p[n] for n in names] + [new_m[n] for n in names]
            cotangents = [adj_w[n] for n in names] + [adj_m[n] for n in names]
            inputs = [p_in[n] for n in names] + [m_in[n] for n in names] + [beta]
            grads = torch.autograd.grad(outputs, inputs, cotangents, is_grads_batched=True,
                                        allow_unused=True, materialize_grads=True)
            adj_w = dict(zip(names, grads[:len(names)]))
            adj_m = dict(zip(names, grads[len(names):2 * len(names)]))
            out.index_add_(1, batch.to(out.device), grads[-1].double())
            bar.update()
        if state_path is not None and start > 0:
            save_verified({"steps": T, "segment": k, "done_from": start, "adj_w": adj_w,
                           "adj_m": adj_m, "out": out}, state_path)
    bar.close()
    if state_path is not None:
        remove_verified(state_path)
    return out
