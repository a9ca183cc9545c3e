"""Overhead of the native BIF above its physical floor, in time and memory.

    .venv/bin/python benchmarks/bif_overhead.py [--task digits_mlp] [--draws 200] [--hidden H]
        [--devinterp]

Prints, from one run on the same model and settings (the task's ``method_defaults.bif``):

- time ratio = total ``bif.fit`` + ``bif.score`` time / (time of the bare SGLD forward+backward
  passes on the chains' minibatches + time of the bare draw-time forward passes over train and
  query), each part timed alone with the same batched (vmap) evaluation; goal <= 1.3;
- memory ratio = peak tensor memory allocated during ``bif.fit`` / peak tensor memory of one
  training step (forward, backward and SGD-with-momentum update at the recipe's batch size);
  goal <= 1.5. Tensor memory is tracked exactly by a dispatch mode that adds up the storages
  created by every operation and still alive (inputs existing before the phase are not counted);
- with ``--devinterp``, the time and peak resident memory of ``bif_devinterp`` with the same
  settings against the native ones, and the Pearson correlation of its scores with the native
  ones (sequence level on per-token tasks). For the text task at a size both run in seconds, see
  ``benchmarks/bif_devinterp_text.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tdabench.harness.engine.compose import pairing_config
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.engine.run import prepare
from tdabench.methods.bif import _ChainModel
from tdabench.methods.gradients import trainable_params


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and alive at the same time."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                self.current -= nbytes
                del self.live[key]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.live:
                    self.live[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
        return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare_floor(task, model, method) -> tuple[float, float]:
    """Seconds of the bare SGLD forward+backward passes and of the bare draw-time forwards."""
    center = trainable_params(model)
    c = method.chains
    params = {k: v.unsqueeze(0).repeat(c, *([1] * v.dim())).requires_grad_() for k, v in center.items()}
    cm = _ChainModel(model, vectorized=True)
    train = task.train_split
    g = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, task.n_train, (c, method.batch_size), generator=g) for _ in range(16)]
    pool = [(train.inputs[i], train.targets[i]) for i in pool]

    def steps():
        for s in range(method.total_steps()):
            x, y = pool[s % len(pool)]
            cm.loss_and_grad(task.per_example_loss, params, x, y)

    def draws():
        for _ in range(method.draws + 1):  # + the evaluation at the start
            method._draw(task, cm, params)

    return timed(steps), timed(draws)


def training_step_peak(task) -> int:
    """Peak tensor bytes of the first training step of a fresh model with the task's recipe
    (forward, backward, SGD-with-momentum update that creates its momentum buffers)."""
    model = task.new_model(task.seed)
    recipe = task.recipe()
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    train = task.train_split
    x, y = train.inputs[:recipe.batch_size], train.targets[:recipe.batch_size]
    with PeakTensorMemory() as mem:
        task.per_example_loss(model, x, y).mean().backward()
        opt.step()
    return mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits_mlp")
    ap.add_argument("--draws", type=int, default=200, help="draws per chain (default 200)")
    ap.add_argument("--hidden", type=int, default=None, help="override task.hidden (a wider model)")
    ap.add_argument("--parallel-chains", type=int, default=None)
    ap.add_argument("--draw-batch-size", type=int, default=None)
    ap.add_argument("--eps", type=float, default=None, help="override the SGLD step size")
    ap.add_argument("--devinterp", action="store_true", help="also time bif_devinterp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="timings repeated, fastest kept")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    over = {"draws": args.draws, "parallel_chains": args.parallel_chains}
    if args.draw_batch_size:
        over["draw_batch_size"] = args.draw_batch_size
    if args.eps:
        over["eps"] = args.eps
    cfg = pairing_config(args.task, "bif", over)
    if args.hidden:
        cfg["task"]["hidden"] = args.hidden
    task, method = prepare(cfg)
    model = task.checkpoint()
    task.train_split  # load data outside the timings
    print(f"task {args.task} ({sum(p.numel() for p in model.parameters())} parameters), bif: "
          f"{method.chains} chains x {method.draws} draws, {method.total_steps()} steps, "
          f"batch {method.batch_size}, parallel_chains {method.parallel_chains}")

    # the machine may be shared: alternate the measurements and keep the fastest of each
    fits, scores, floors = [], [], []
    for _ in range(args.repeats):
        fits.append(timed(lambda: method.fit(task, model)))
        scores.append(timed(lambda: method.score(task, model)))
        floors.append(bare_floor(task, model, method))
    t_fit, t_score = min(fits), min(scores)
    t_steps, t_draws = min(f[0] for f in floors), min(f[1] for f in floors)
    ratio = (t_fit + t_score) / (t_steps + t_draws)
    print(f"time: bif fit {t_fit:.2f} s + score {t_score:.3f} s; bare SGLD fwd+bwd {t_steps:.2f} s + "
          f"bare draw forwards {t_draws:.2f} s")
    print(f"time ratio (goal <= 1.3): {ratio:.3f}")

    step_peak = training_step_peak(task)
    params = {k: v for k, v in cfg["method"].items() if k != "name"}
    fit_method = type(method)(**{**params, "draws": min(method.draws, 20)})  # memory is draw-independent
    with PeakTensorMemory() as mem:
        fit_method.fit(task, model)
    acc = fit_method._acc  # the running sums: the size of the scores themselves, as for any method
    sums = sum(t.numel() * t.element_size() for t in (acc.sx, acc.sy, acc.sxx, acc.syy, acc.sxy))
    print(f"memory: peak of fit {mem.peak / 2**20:.3f} MiB (of which {sums / 2**20:.3f} MiB are the "
          f"score-sized running sums), peak of one training step {step_peak / 2**20:.3f} MiB")
    print(f"memory ratio (goal <= 1.5): {mem.peak / step_peak:.3f}; without the running sums "
          f"{(mem.peak - sums) / step_peak:.3f}")

    if args.devinterp:
        from scipy.stats import pearsonr

        dcfg = pairing_config(args.task, "bif_devinterp", {k: v for k, v in over.items() if k in ("draws", "eps")})
        _, ref = prepare(dcfg)
        t_ref = timed(lambda: ref.fit(task, model))
        t_ref += timed(lambda: ref.score(task, model))
        native = method.score(task, model)
        if native.dim() == 3:  # per-token scores [n_query, T, n_train]: the sequence score is their mean
            native = native.mean(1)
        r = pearsonr(ref.score(task, model).flatten(), native.flatten())[0]
        print(f"devinterp: {t_ref:.2f} s, native/devinterp time {(t_fit + t_score) / t_ref:.3f}, "
              f"Pearson of scores over all pairs {r:.3f}")
        # peak resident memory of fit + score for both, alternating, smallest of each kept
        mems = {"native": [], "devinterp": []}
        for _ in range(args.repeats):
            for name, m in (("native", method), ("devinterp", ref)):
                prof = Profiler(count=False)  # resident set, no per-operator counting in the timing
                with prof.phase("run"):
                    m.fit(task, model)
                    m.score(task, model)
                mems[name].append(prof.peak_mem_mb["run"])
        nm, rm = min(mems["native"]), min(mems["devinterp"])
        print(f"devinterp peak memory: native {nm:.1f} MiB, devinterp {rm:.1f} MiB, native/devinterp "
              f"memory {max(nm, 1.0) / max(rm, 1.0):.3f} (resident set above the start, 1 MiB floor)")


if __name__ == "__main__":
    main()
