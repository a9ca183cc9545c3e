"""Native ``bif`` against ``bif_devinterp`` on a tiny ``text_neox`` task: time and agreement.

    .venv/bin/python benchmarks/bif_devinterp_text.py [--n-train 32] [--seq-len 16] [--draws 200]
        [--eps 8e-3] [--chains 4] [--repeats 1] [--threads 1]

Both methods run with the same hyperparameters on the same checkpoint (a one-layer, width-16
GPT-NeoX trained on ``n_train`` character chunks of tiny Shakespeare). Prints the seconds of
``fit`` + ``score`` of each (fastest of ``repeats``), the ratio native/devinterp (below 1: the
native one is faster) and the Pearson correlation of the sequence-level scores over all
(query, training) pairs (the native per-token scores averaged over tokens).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from tdabench.methods.bif import BIF
from tdabench.methods.reference.devinterp import DevinterpBIF
from tdabench.tasks.text import TextNeoX


def tiny_text(n_train: int, n_query: int, seq_len: int) -> dict:
    return {"name": "text_neox", "n_train": n_train, "n_query": n_query, "n_test": 8,
            "seq_len": seq_len, "layers": 1, "width": 16, "heads": 2, "observable": "loss",
            "recipe": {"epochs": 10, "batch_size": 8, "lr": 0.5, "momentum": 0.9,
                       "schedule": "onecycle", "warmup": 0.2}}


def run(method, task, model) -> tuple[float, torch.Tensor]:
    """Seconds of fit + score, and the sequence-level scores [n_query, n_train]."""
    t0 = time.perf_counter()
    method.fit(task, model)
    scores = method.score(task, model)
    seconds = time.perf_counter() - t0
    return seconds, scores.mean(1) if scores.dim() == 3 else scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--n-query", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=200, help="draws per chain")
    ap.add_argument("--burn-in", type=int, default=50)
    ap.add_argument("--steps-between-draws", type=int, default=2)
    ap.add_argument("--eps", type=float, default=8e-3)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="timings repeated, fastest kept")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(chains=args.chains, draws=args.draws, burn_in=args.burn_in,
                    steps_between_draws=args.steps_between_draws, eps=args.eps, gamma=args.gamma,
                    batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as cache:
        task = TextNeoX(tiny_text(args.n_train, args.n_query, args.seq_len), seed=0,
                        cache_dir=cache, log=lambda m: None)
        model = task.checkpoint()
        task.query_split  # load data outside the timings
        print(f"text_neox: {task.n_train} chunks x {args.seq_len} tokens, {task.n_query} queries, "
              f"{sum(p.numel() for p in model.parameters())} parameters; {settings}")
        times = {"bif": [], "bif_devinterp": []}
        scores = {}
        for _ in range(args.repeats):  # alternate: the machine may be shared
            for name, cls in (("bif", BIF), ("bif_devinterp", DevinterpBIF)):
                seconds, scores[name] = run(cls(**settings), task, model)
                times[name].append(seconds)
    t_native, t_ref = min(times["bif"]), min(times["bif_devinterp"])
    a, b = scores["bif"].flatten(), scores["bif_devinterp"].flatten()
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    print(f"time: bif {t_native:.2f} s, bif_devinterp {t_ref:.2f} s")
    print(f"native/devinterp time {t_native / t_ref:.3f}")
    print(f"Pearson of sequence scores over all {a.numel()} pairs {r:.3f}; "
          f"std ratio native/devinterp {(a.std() / b.std()).item():.3f}")


if __name__ == "__main__":
    main()
