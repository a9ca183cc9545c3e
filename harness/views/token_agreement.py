"""The ``tokens`` insight view: how far two methods' per-token scores agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tdabench.harness.views.plotting import DPI, STRIPS_RIGHT, colour_scale, decoder, plt, token_strip


def token_agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-token and sequence-level Spearman agreement of two per-token score tensors
    ``[n_query, T, n_train]``: ``per_token`` [n_query, T] (correlation over training examples of
    each query token's scores; NaN where one method's scores of the token are constant),
    ``sequence`` [n_query] (the same for the mean over tokens), and their summaries."""
    from tdabench.harness.read.lds import columnwise_spearman

    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(f"per-token agreement needs two score tensors of the same shape "
                         f"[n_query, T, n_train]; got {tuple(a.shape)} and {tuple(b.shape)}: give the "
                         "scores of per-token methods (bif, ekfac) on a language task")
    nq, t, n = a.shape
    pt = columnwise_spearman(a.reshape(nq * t, n).T.double().numpy(),
                             b.reshape(nq * t, n).T.double().numpy()).reshape(nq, t)
    seq = columnwise_spearman(a.mean(1).T.double().numpy(), b.mean(1).T.double().numpy())
    finite = pt[np.isfinite(pt)]
    q = np.quantile(finite, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(finite) else [float("nan")] * 5
    return {"per_token": pt, "sequence": seq,
            "per_token_mean": float(finite.mean()) if len(finite) else float("nan"),
            "per_token_quantiles": dict(zip(("p10", "p25", "median", "p75", "p90"), map(float, q))),
            "sequence_mean": float(np.nanmean(seq)),
            "per_query_token_mean": [float(v) for v in np.nanmean(pt, 1)],
            "constant_tokens": int((~np.isfinite(pt)).sum())}


def token_agreement_view(task, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str],
                         queries: list[int], out: Path, width: int = 48) -> list[Path]:
    """Histogram of per-token agreement and the chosen queries coloured by it; JSON summary."""
    import json

    from tdabench.harness.core.storage import atomic_write_bytes

    agree = token_agreement(a, b)
    pt, seq = agree["per_token"], agree["sequence"]
    decode = decoder(task)
    strips = [(q, decode(task.query_split.targets[q])) for q in queries]
    width = min(width, max(len(toks) for _, toks in strips))
    rows = sum(-(-len(toks) // width) for _, toks in strips)
    fig = plt.figure(figsize=(max(width * 0.2, 10.0), 3.2 + 0.45 * rows + 0.35 * len(strips)))
    grid = fig.add_gridspec(1 + len(strips), 1, height_ratios=[3.0] + [
        0.45 * -(-len(toks) // width) + 0.35 for _, toks in strips])
    ax = fig.add_subplot(grid[0])
    finite = pt[np.isfinite(pt)]
    ax.hist(finite, bins=40, range=(-1, 1), color="tab:blue", alpha=0.8,
            label=f"per query token (mean {agree['per_token_mean']:.3f}, n={len(finite)})")
    ax.axvline(agree["per_token_mean"], color="tab:blue", ls="--")
    ax.axvline(agree["sequence_mean"], color="black", ls="-",
               label=f"sequence scores, mean over queries {agree['sequence_mean']:.3f}")
    ax.set_xlabel(f"Spearman over training examples, {names[0]} vs {names[1]}")
    ax.set_ylabel("query tokens")
    ax.set_xlim(-1, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"{task.name}: agreement of per-token attributions", fontsize=9)
    strip_axes, image = [], None
    for k, (q, toks) in enumerate(strips, start=1):
        strip_axes.append(fig.add_subplot(grid[k]))
        image = token_strip(strip_axes[-1], toks, pt[q, : len(toks)], width, 1.0,
                            f"query {q}: each token coloured by the agreement of its scores (red: agree, "
                            f"blue: opposite; sequence-level {seq[q]:+.3f})")
    fig.tight_layout(rect=(0, 0, STRIPS_RIGHT, 1))
    colour_scale(fig, image, strip_axes, "Spearman agreement")
    png = out / "token_agreement.png"
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
    summary = {k: v for k, v in agree.items() if k not in ("per_token", "sequence")}
    summary.update(methods=list(names), shape=list(a.shape), sequence=[float(v) for v in seq],
                   per_token=[[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in pt])
    js = out / "token_agreement.json"
    atomic_write_bytes(js, (json.dumps(summary, indent=1) + "\n").encode())
    return [png, js]
