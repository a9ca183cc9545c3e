"""The local Bayesian influence function (BIF; Kreer et al. 2025), estimated with SGLD.

The local tempered posterior around the checkpoint w* is

    p(w) ∝ exp(-nbeta * L(w) - (gamma / 2) ||w - w*||^2),   L = mean training loss.

``chains`` SGLD chains start at w* and take the steps

    w <- w - (eps / 2) * (nbeta * grad L_batch(w) + gamma * (w - w*)) + N(0, eps I)

on minibatches of ``batch_size`` training examples (the whole training set, the exact gradient,
where it has fewer). After ``burn_in`` steps, every
``steps_between_draws`` steps a draw records the loss l_i of every training example and the
observable phi_q of every query (forward passes only). With the weight beta_i of example i in the
exponent (-nbeta/n * sum_i beta_i l_i), d E[phi_q] / d beta_i = -(nbeta / n) Cov(l_i, phi_q), so

    scores[q, i] = -Cov(phi_q, l_i)      (``normalize: covariance``; exact for nbeta = n)
    scores[q, i] = -Corr(phi_q, l_i)     (``normalize: correlation``, the Pearson form)

over all draws of all chains: harness sign (helpful examples negative). Tasks with capability
``per_token`` give per-token scores ``[n_query, T, n_train]`` from the same draws (the query
observable is recorded per token); the sequence score is their mean over T.

Speed: the chains run together (``torch.func.vmap`` over stacked chain parameters with
``functional_call``: one batched forward and backward per step), falling back to one chain at a
time when the model cannot be vectorized; draw-time forward passes run under ``no_grad`` in chunks
of ``draw_batch_size`` examples; the covariance is accumulated as running sums (memory does not
grow with the number of draws). ``parallel_chains`` bounds how many chains share one batched
call (memory grows with it).

Diagnostics (``self.diagnostics`` after ``fit``, saved with the run): per chain, the minibatch loss
of the SGLD steps and the full mean training loss at the draws (block means, at most
``TRACE_POINTS`` points each). A chain whose loss becomes non-finite or exceeds
``divergence_factor`` times its starting loss stops the run with :class:`SGLDDivergenceError`
before any score exists; a loss trace still drifting after burn-in logs a warning.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.func import functional_call, vmap

from tdabench.harness.core.logs import Ticker, apart
from tdabench.harness.plugin.method import Method, MethodDivergedError
from tdabench.methods.bif_spaces import BIF_SPACE, BIF_SPACE_WIDE
from tdabench.methods.gradients import trainable_params

log = logging.getLogger(__name__)

NORMALIZE = ("covariance", "correlation")
#: below this starting loss the divergence limit is divergence_factor * LOSS_FLOOR (nats), so a
#: checkpoint that fits its training data almost exactly does not trip the guard on normal noise
LOSS_FLOOR = 0.1
#: a trace has settled when its mean over the last half of the draws differs from the mean over
#: the first half by less than this fraction of its rise above the starting loss
SETTLE_TOLERANCE = 0.2


#: the loss traces kept in ``diagnostics`` have at most this many points per chain
TRACE_POINTS = 500


def _block_means(trace: torch.Tensor) -> list[list[float]]:
    """[C, S] -> block means over consecutive steps, at most TRACE_POINTS per chain, rounded."""
    block = -(-trace.shape[1] // TRACE_POINTS)
    n = trace.shape[1] // block * block
    means = trace[:, :n].reshape(len(trace), -1, block).mean(2)
    if n < trace.shape[1]:
        means = torch.cat([means, trace[:, n:].mean(1, keepdim=True)], 1)
    return [[round(v, 6) for v in row] for row in means.tolist()]


class SGLDDivergenceError(MethodDivergedError):
    """An SGLD chain's loss became non-finite or grew far beyond its starting value."""


class CovarianceAccumulator:
    """Streaming sums for the cross-covariance of two vectors observed together.

    ``add(x [k, n_x], y [k, n_y])`` adds k joint observations; ``covariance()`` returns the
    unbiased sample covariance ``[n_y, n_x]`` and ``correlation()`` the Pearson correlation.
    Values are shifted by fixed references (the values at w*) and summed in float64, so the
    result does not suffer cancellation when the spread is small next to the mean. Memory is
    O(n_x * n_y), independent of the number of observations.
    """

    def __init__(self, shift_x: torch.Tensor, shift_y: torch.Tensor):
        dev = shift_x.device
        self.shift_x = shift_x.double()
        self.shift_y = shift_y.double()
        self.n = 0
        self.sx = torch.zeros(len(shift_x), dtype=torch.float64, device=dev)
        self.sy = torch.zeros(len(shift_y), dtype=torch.float64, device=dev)
        self.sxx = torch.zeros_like(self.sx)
        self.syy = torch.zeros_like(self.sy)
        self.sxy = torch.zeros(len(shift_y), len(shift_x), dtype=torch.float64, device=dev)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.double() - self.shift_x
        y = y.double() - self.shift_y
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy.addmm_(y.T, x)

    def covariance(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 observations, got {self.n}")
        n = self.n
        return (self.sxy - torch.outer(self.sy, self.sx) / n) / (n - 1)

    def correlation(self) -> torch.Tensor:
        n = self.n
        var_x = ((self.sxx - self.sx ** 2 / n) / (n - 1)).clamp_min(0)
        var_y = ((self.syy - self.sy ** 2 / n) / (n - 1)).clamp_min(0)
        denom = torch.outer(var_y.sqrt(), var_x.sqrt())
        return torch.where(denom > 0, self.covariance() / denom.clamp_min(1e-300), 0.0)


class _ChainModel:
    """Evaluates a module's loss functions under C stacked parameter sets ``{name: [C, ...]}``.

    ``vectorized`` uses one ``vmap``-ed call for all chains; otherwise chains are evaluated one
    after another (models that ``vmap`` cannot trace).
    """

    def __init__(self, model, vectorized: bool):
        self.model = model
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}
        self.vectorized = vectorized

    def _call(self, params):
        return lambda x: functional_call(self.model, (params, self.buffers), (x,))

    def loss_and_grad(self, fn, params: dict, x: torch.Tensor, y: torch.Tensor):
        """Mean of ``fn`` over each chain's minibatch (``x``, ``y``: [C, B, ...]): gradients
        {name: [C, ...]} and losses [C]. ``params`` are leaves that require grad; chains are
        independent, so one backward pass of the summed losses gives every chain's gradient."""
        def mean_loss(p, xb, yb):
            return fn(self._call(p), xb, yb).mean()

        if self.vectorized:
            losses = vmap(mean_loss)(params, x, y)
        else:
            losses = torch.stack([mean_loss({k: v[c] for k, v in params.items()}, x[c], y[c])
                                  for c in range(len(x))])
        grads = torch.autograd.grad(losses.sum(), list(params.values()))
        return dict(zip(params, grads)), losses.detach()

    @torch.no_grad()
    def evaluate(self, fn, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``fn(model, x, y)`` under every chain's parameters: [C, B, ...] (no autograd)."""
        def one(p):
            return fn(self._call(p), x, y)

        if self.vectorized:
            return vmap(one)(params)
        n_chains = len(next(iter(params.values())))
        return torch.stack([one({k: v[c] for k, v in params.items()}) for c in range(n_chains)])


class BIF(Method):
    """Local Bayesian influence function by SGLD (see the module docstring)."""

    #: the kernel and stagewise views of tdabench-insight sample with it (see Method.offers)
    offers = frozenset({"training_loss_draws"})
    #: chains x draws per chain, cheapest first (the top rung is digits_mlp's default; burn-in and
    #: the spacing of draws keep their defaults)
    cost_ladder = ({"chains": 2, "draws": 50}, {"chains": 4, "draws": 100}, {"chains": 4, "draws": 200},
                   {"chains": 8, "draws": 400}, {"chains": 8, "draws": 800})
    search_space = BIF_SPACE
    earlier_search_space = BIF_SPACE_WIDE

    def __init__(self, seed: int = 0, chains: int = 4, draws: int = 100, burn_in: int = 100,
                 steps_between_draws: int = 5, eps: float = 1e-4, gamma: float = 100.0,
                 nbeta: float | None = None, batch_size: int = 64, normalize: str = "covariance",
                 divergence_factor: float = 10.0, parallel_chains: int | None = None,
                 draw_batch_size: int = 4096, vectorize: bool = True):
        super().__init__(seed)
        self.keep_parameters(locals())
        self.diagnostics: dict = {}
        self._acc: CovarianceAccumulator | None = None
        self._token_shape: tuple[int, int] | None = None
        #: training losses of the ``keep_train_losses`` examples at every draw (see ``fit``)
        self.train_loss_draws: torch.Tensor | None = None
        self._keep: torch.Tensor | None = None
        self._kept: list[torch.Tensor] = []

    # ----- configuration -----------------------------------------------------------------------
    def check(self, task) -> list[str]:
        p = []

        def positive_int(key, minimum=1):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                p.append(f"method.{key}={v!r} must be an integer >= {minimum}")

        for key in ("chains", "draws", "steps_between_draws", "batch_size", "draw_batch_size"):
            positive_int(key)
        positive_int("burn_in", 0)
        if self.parallel_chains is not None:
            positive_int("parallel_chains")
        if not isinstance(self.eps, (int, float)) or not self.eps > 0:
            p.append(f"method.eps={self.eps!r} must be a positive SGLD step size (e.g. 1e-4)")
        if not isinstance(self.gamma, (int, float)) or self.gamma < 0:
            p.append(f"method.gamma={self.gamma!r} must be >= 0 (localization strength, e.g. 100)")
        if self.nbeta is not None and (not isinstance(self.nbeta, (int, float)) or not self.nbeta > 0):
            p.append(f"method.nbeta={self.nbeta!r} must be null (= n_train) or a positive number")
        if self.normalize not in NORMALIZE:
            p.append(f"method.normalize={self.normalize!r}: use covariance or correlation")
        if not isinstance(self.divergence_factor, (int, float)) or not self.divergence_factor > 1:
            p.append(f"method.divergence_factor={self.divergence_factor!r} must be a number > 1")
        if not p and self.chains * self.draws < 2:
            p.append(f"method.chains x method.draws = {self.chains * self.draws}: a covariance needs "
                     "at least 2 draws")
        return p

    def trainings(self, task) -> int:
        return 1

    def token_scores(self, task) -> bool:
        """Whether :meth:`score` gives per-token scores on ``task``: on every per-token task."""
        return "per_token" in task.capabilities

    def total_steps(self) -> int:
        return self.burn_in + self.draws * self.steps_between_draws

    # ----- sampling ------------------------------------------------------------------------------
    def _query_fn(self, task):
        return task.token_observables if self.token_scores(task) else task.observable

    def _evaluate_split(self, chain_model, fn, params, split) -> torch.Tensor:
        """``fn`` on every example of ``split`` under every chain: [C, N * (T)] (flattened)."""
        n_chains = len(next(iter(params.values())))
        chunk = max(1, self.draw_batch_size // n_chains)
        outs = [chain_model.evaluate(fn, params, split.inputs[i:i + chunk], split.targets[i:i + chunk])
                for i in range(0, len(split), chunk)]
        return torch.cat(outs, dim=1).reshape(n_chains, -1)

    def _draw(self, task, chain_model, params):
        """Training losses [C, n_train] and query observables [C, n_query * (T)] at one draw."""
        train = self._evaluate_split(chain_model, task.per_example_loss, params, task.train_split)
        query = self._evaluate_split(chain_model, self._query_fn(task), params, task.query_split)
        return train, query

    def _diverged(self, chain: int, step: int, loss: float, start: float) -> SGLDDivergenceError:
        return SGLDDivergenceError(
            f"BIF SGLD chain {chain} diverged by step {step}: mean training loss {loss:.4g} "
            f"(started at {start:.4g}, limit method.divergence_factor={self.divergence_factor} x "
            f"max(start, {LOSS_FLOOR})); use a smaller method.eps (now {self.eps:g}) or a larger "
            f"method.gamma (now {self.gamma:g})")

    def _check_losses(self, losses: torch.Tensor, start: torch.Tensor, step: int, first: int) -> None:
        """Raise when any chain's loss ([C] or [steps, C]) is non-finite or above its limit."""
        limit = self.divergence_factor * start.clamp_min(LOSS_FLOOR)
        bad = ~torch.isfinite(losses) | (losses > limit)
        if bool(bad.any()):
            pos = bad.nonzero()[0].tolist()
            row, chain = (pos if losses.dim() == 2 else [0, pos[0]])
            raise self._diverged(first + chain, step, float(losses.reshape(-1, losses.shape[-1])[row, chain]),
                                 float(start[chain]))

    @torch.no_grad()
    def _langevin_step(self, weights: list, grads: list, centers: list, nbeta: float, gen) -> None:
        """In place: w <- w - (eps/2) (nbeta g + gamma (w - w*)) + sqrt(eps) N(0, I), for the
        stacked chain weights ``weights`` [C, ...] (``centers`` [1, ...] broadcast)."""
        # w - (eps/2) gamma (w - w*) is a linear interpolation towards w*
        torch._foreach_lerp_(weights, centers, self.eps * self.gamma / 2)
        torch._foreach_add_(weights, grads, alpha=-self.eps * nbeta / 2)
        noise = [torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype) for w in weights]
        torch._foreach_add_(weights, noise, alpha=math.sqrt(self.eps))

    def _run_group(self, task, model, center: dict, acc: CovarianceAccumulator, first: int,
                   n_chains: int, vectorized: bool, on_draw=None):
        """Run chains ``first .. first + n_chains - 1`` together; accumulate their draws."""
        dev = next(iter(center.values())).device
        gen = torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + first)
        perm_gen = torch.Generator().manual_seed(self.seed * 1_000_003 + first + 1)
        params = {k: v.unsqueeze(0).repeat(n_chains, *([1] * v.dim())).requires_grad_()
                  for k, v in center.items()}
        chain_model = _ChainModel(model, vectorized)
        train = task.train_split
        n = len(train)
        nbeta = float(self.nbeta) if self.nbeta is not None else float(n)
        weights = list(params.values())
        centers = [center[k].unsqueeze(0) for k in params]

        start_train, _ = self._draw(task, chain_model, params)
        start = start_train.mean(1)  # [C]
        steps = self.total_steps()
        step_trace = torch.empty(steps, n_chains, device=dev)
        draw_trace = torch.empty(self.draws, n_chains, device=dev)
        perms = torch.stack([torch.randperm(n, generator=perm_gen) for _ in range(n_chains)]).to(dev)
        cursor = 0
        last_checked = 0
        size = min(self.batch_size, n)  # a batch larger than the training set is all of it
        for step in range(steps):
            if cursor + size > n:
                perms = torch.stack([torch.randperm(n, generator=perm_gen) for _ in range(n_chains)]).to(dev)
                cursor = 0
            idx = perms[:, cursor:cursor + size]  # [C, B]
            cursor += size
            grads, loss = chain_model.loss_and_grad(task.per_example_loss, params,
                                                    train.inputs[idx], train.targets[idx])
            step_trace[step] = loss
            self._ticker.tick(self._steps_before + step + 1)
            self._langevin_step(weights, [grads[k] for k in params], centers, nbeta, gen)
            draw, offset = divmod(step + 1 - self.burn_in, self.steps_between_draws)
            if step + 1 >= self.burn_in and offset == 0 and draw >= 1:
                self._check_losses(step_trace[last_checked:step + 1], start, step, first)
                last_checked = step + 1
                tr, qu = self._draw(task, chain_model, params)
                draw_trace[draw - 1] = tr.mean(1)
                self._check_losses(draw_trace[draw - 1], start, step, first)
                acc.add(tr, qu)
                if self._keep is not None:
                    self._kept.append(tr[:, self._keep].cpu())
                if on_draw is not None:
                    on_draw(draw)
        return start.cpu(), step_trace.T.cpu(), draw_trace.T.cpu()

    def fit(self, task, model, on_draw=None, keep_train_losses: torch.Tensor | None = None) -> None:
        """Run the chains and accumulate the covariance sums. ``on_draw(d)``, if given, is called
        after the d-th draw of each group of parallel chains (``score`` then gives the estimate
        from the draws so far; used to trace accuracy against draws). ``keep_train_losses``
        (training indices [k]), if given, also keeps those examples' losses at every draw in
        ``self.train_loss_draws`` [chains * draws, k] (nats; rows grouped by draw, not by chain);
        by default nothing is kept."""
        model.eval()
        self._acc = None
        self.train_loss_draws = None
        self._kept = []
        self._keep = None if keep_train_losses is None else torch.as_tensor(keep_train_losses).long()
        center = trainable_params(model)
        dev = next(iter(center.values())).device
        group = self.parallel_chains or self.chains
        with torch.no_grad():
            ref = _ChainModel(model, vectorized=False)
            one = {k: v.unsqueeze(0) for k, v in center.items()}
            train0, query0 = self._draw(task, ref, one)
        if "per_token" in task.capabilities:
            self._token_shape = (task.n_query, query0.shape[1] // task.n_query)
        acc = CovarianceAccumulator(train0[0].to(dev), query0[0].to(dev))
        if on_draw is not None:  # score() reads the draws so far
            self._acc = acc
        vectorized = bool(self.vectorize)
        starts, steps, draws = [], [], []
        first = 0
        self._ticker = Ticker(log, "bif: SGLD steps", self.total_steps() * -(-self.chains // group))
        self._steps_before = 0
        while first < self.chains:
            size = min(group, self.chains - first)
            try:
                out = self._run_group(task, model, center, acc, first, size, vectorized, on_draw)
            except SGLDDivergenceError:
                raise
            except (RuntimeError, NotImplementedError) as exc:
                if not vectorized or acc.n:
                    raise
                task.log(f"bif: the model cannot be vectorized over chains "
                         f"({type(exc).__name__}: {str(exc)[:120]}); running chains one at a time")
                vectorized = False
                continue
            self._steps_before += self.total_steps()
            starts.append(out[0])
            steps.append(out[1])
            draws.append(out[2])
            first += size
        self._acc = acc
        if self._keep is not None:
            self.train_loss_draws = torch.cat(self._kept)
            self._kept = []
        start = torch.cat(starts)
        step_trace = torch.cat(steps)
        draw_trace = torch.cat(draws)
        self.diagnostics = {
            "loss_start": [round(v, 6) for v in start.tolist()],
            # [chains][<= TRACE_POINTS]: minibatch mean loss, averaged over blocks of steps
            "loss_trace": _block_means(step_trace),
            "loss_trace_block": -(-step_trace.shape[1] // TRACE_POINTS),
            # [chains][<= TRACE_POINTS]: full training mean loss at the draws, likewise
            "draw_loss_trace": _block_means(draw_trace),
            "draw_loss_trace_block": -(-draw_trace.shape[1] // TRACE_POINTS),
            "vectorized": vectorized, "settled": self._settled(task, start, draw_trace),
            "batch_size_used": min(self.batch_size, len(task.train_split)),
        }

    def training_loss_draws(self, task, model, idx: torch.Tensor) -> torch.Tensor:
        """Run the chains at ``model`` (as :meth:`fit`) and return the losses of training examples
        ``idx`` [k] at every draw: ``[chains * draws, k]`` (nats; rows grouped by draw, not by
        chain). :meth:`score` then gives the scores of the same draws."""
        self.fit(task, model, keep_train_losses=idx)
        return self.train_loss_draws

    def _settled(self, task, start: torch.Tensor, draw_trace: torch.Tensor) -> bool:
        """Whether the pooled draw-time training loss stopped drifting; logs a warning if not."""
        if draw_trace.shape[1] < 4:
            return True
        half = draw_trace.shape[1] // 2
        per_chain = draw_trace[:, half:].mean(1) - draw_trace[:, :half].mean(1)  # [C]
        first, last = draw_trace[:, :half].mean(), draw_trace[:, half:].mean()
        rise = (last - start.mean()).abs()
        drift = per_chain.mean().abs()
        noise = 2 * per_chain.std() / math.sqrt(len(per_chain)) if len(per_chain) > 1 else 0.0
        if drift > SETTLE_TOLERANCE * rise and drift > noise:
            early, late = apart(float(first), float(last))
            task.log(f"bif warning: the training loss is still drifting after burn-in "
                     f"(mean {early} over the first half of the draws, {late} over the second, "
                     f"start {float(start.mean()):.4g}); raise method.burn_in (now {self.burn_in}) or method.eps")
            return False
        return True

    # ----- scores --------------------------------------------------------------------------------
    def score(self, task, model) -> torch.Tensor:
        """Minus the covariance (or correlation) of query observables with training losses:
        ``[n_query, n_train]``, or ``[n_query, T, n_train]`` for per-token tasks."""
        if self._acc is None:
            raise RuntimeError("bif.score called before bif.fit")
        stat = self._acc.covariance() if self.normalize == "covariance" else self._acc.correlation()
        scores = (-stat).float().cpu()
        if self._token_shape is not None:
            return scores.reshape(*self._token_shape, -1)
        return scores
