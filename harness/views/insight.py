"""The ``tdabench-insight`` command: three views of what a method and the BIF see, as PNG files.

    tdabench-insight task=digits_mlp method=bif --out results/reference/insight/digits_mlp
    tdabench-insight task=digits_mlp --scores results/scores/<run_id>.pt --views top --out DIR

Positional arguments are Hydra overrides, composed as ``tdabench`` composes them.

``top`` (``top_examples.png`` or ``top_examples_q<Q>.png``): for each chosen query, its most
helpful training examples (most negative scores: up-weighting them lowers the query loss) and
its most harmful ones (most positive), with labels and scores. Images for vision tasks (inputs
of 64 values as 8x8, 3x32x32 as colour); highlighted text for language tasks, with the per-token
influence of the most helpful and most harmful example as a heat map over the query's tokens when
the scores are per token ([n_query, T, n_train], from ``bif`` on ``per_token`` tasks). Scores
come from ``--scores FILE`` (a ``RESULTS_DIR/scores/<run_id>.pt`` of a ``tdabench`` run) or are
computed now with the method of the overrides.

``kernel`` (``bif_kernel.png``): the BIF kernel of Adam et al. (2025), the correlation over SGLD
draws of the training losses of every pair of training examples ([n, n], by ``methods/bif.py``'s
sampler), shown sorted by class and embedded in 2-D by PCA and t-SNE (each example is its row of
the kernel; t-SNE uses the distance 1 - correlation), coloured by class (language tasks: by the
example's loss at the checkpoint).

``stagewise`` (``stagewise.png``): stagewise attribution (Lee et al. 2025), BIF scores of one
query at every snapshot of the reference run (``task.trajectory()``; more snapshots with
``task.trajectory_checkpoints=N``), for the examples with the largest influence at any stage and
those whose sign flips most strongly; crosses mark sign flips between consecutive snapshots and
stars each curve's peak.

``tokens`` (``token_agreement.png`` and ``token_agreement.json``): how far two methods' per-token
scores agree, e.g. the BIF's and EK-FAC's on the same queries of a language task. For every query
token, the Spearman correlation over training examples of the two methods' scores of that token
(``--scores`` and ``--compare``, both ``[n_query, T, n_train]``), against the same correlation of
their sequence scores (the mean over tokens): a histogram over all query tokens and, for the chosen
queries, the query text coloured by each token's agreement. The JSON file holds the summary
(mean, quantiles, per query) and the matrix of per-token correlations.

The views that sample (``kernel``, ``stagewise``, and ``top`` with ``method=bif``) use the task's
BIF settings with ``--chains`` x ``--draws`` (default 4 x 50: seconds per checkpoint on
``digits_mlp``). Runs on one thread unless ``threads=N`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tdabench.harness.read.results import one_line_errors  # noqa: E402

VIEWS = ("top", "kernel", "stagewise", "tokens")
DPI = 80


# ----- shared helpers ---------------------------------------------------------------------------
def sequence_scores(scores: torch.Tensor) -> torch.Tensor:
    """[n_query, n_train] scores; per-token scores [n_query, T, n_train] are averaged over T."""
    return scores.mean(1) if scores.dim() == 3 else scores


def is_class_task(task) -> bool:
    t = task.train_split.targets
    return t.dim() == 1 and not t.is_floating_point()


def image_of(x: torch.Tensor) -> np.ndarray | None:
    """A displayable image ([H, W] grey or [H, W, 3] in [0, 1]) of one input, or None when the
    input is not an image (flat inputs of a square length are shown as square grey images)."""
    x = x.detach().float().cpu()
    if x.dim() == 1 and int(round(x.numel() ** 0.5)) ** 2 == x.numel():
        side = int(round(x.numel() ** 0.5))
        x = x.view(side, side)
    elif x.dim() == 3 and x.shape[0] in (1, 3):
        x = x.permute(1, 2, 0).squeeze(-1)
    elif x.dim() != 2:
        return None
    lo, hi = x.min(), x.max()
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).numpy()


def decoder(task):
    """A function from token ids [T] to a list of T printable strings (one per token)."""

    def printable(c: str) -> str:
        return "\u21b5" if c == "\n" else (c if c.isprintable() else "\u00b7")

    return lambda ids: [printable(t) or "\u00b7" for t in task.decode_tokens(ids)]


def make_bif(overrides: list[str], chains: int, draws: int):
    """A ``bif`` method with the task's BIF settings (and any ``method.*`` overrides when the
    overrides choose ``method=bif``), sampling ``chains`` x ``draws``."""
    from tdabench.harness.core.registry import METHODS
    from tdabench.harness.engine.cli import compose
    from tdabench.harness.engine.config import method_params

    chosen = [o for o in overrides if o.startswith("method=")]
    is_bif = bool(chosen) and chosen[-1] == "method=bif"
    keep = [o for o in overrides if not o.lstrip("+~").startswith("method")] if not is_bif else \
        [o for o in overrides if not o.startswith("method=")]
    params = method_params(compose(keep + ["method=bif"]))
    params.update(chains=chains, draws=draws)
    return METHODS.get("bif")(**params)


# ----- (a) top influential training examples ----------------------------------------------------
def top_indices(row: torch.Tensor, top: int) -> tuple[list[int], list[int]]:
    """Training indices of the ``top`` most helpful (most negative) and most harmful scores."""
    order = torch.argsort(row)
    k = min(top, len(row))
    return order[:k].tolist(), order.flip(0)[:k].tolist()


def _label(task, split, i: int) -> str:
    """``y=<class>`` for classification tasks, ``#<index>`` otherwise."""
    t = split.targets[i]
    return f"y={int(t)}" if t.dim() == 0 else f"#{i}"


def _name(task, split, i: int) -> str:
    """``#<index>``, with the class for classification tasks."""
    return f"#{i} (y={int(split.targets[i])})" if split.targets[i].dim() == 0 else f"#{i}"


def plot_top_images(task, scores: torch.Tensor, queries: list[int], top: int, path: Path) -> Path:
    """One row pair per query: the query, then its ``top`` most helpful examples (upper row) and
    most harmful ones (lower row), each titled with label and score."""
    seq = sequence_scores(scores)
    train, query = task.train_split, task.query_split
    fig, axes = plt.subplots(2 * len(queries), top + 1, squeeze=False,
                             figsize=(1.15 * (top + 1), 2.5 * len(queries)))
    grey = image_of(train.inputs[0]).ndim == 2
    cmap = "gray_r" if grey else None
    for r, q in enumerate(queries):
        helpful, harmful = top_indices(seq[q], top)
        ax = axes[2 * r, 0]
        ax.imshow(image_of(query.inputs[q]), cmap=cmap)
        ax.set_title(f"query {q}\n{_label(task, query, q)}", fontsize=8, color="navy")
        axes[2 * r + 1, 0].text(0.5, 0.5, "helpful \u2191\nharmful \u2193", ha="center",
                                va="center", fontsize=8, transform=axes[2 * r + 1, 0].transAxes)
        for row, idx, colour in ((2 * r, helpful, "tab:green"), (2 * r + 1, harmful, "tab:red")):
            for c, i in enumerate(idx, start=1):
                ax = axes[row, c]
                ax.imshow(image_of(train.inputs[i]), cmap=cmap)
                ax.set_title(f"{_label(task, train, i)}\n{float(seq[q, i]):+.2g}", fontsize=7,
                             color=colour)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    fig.suptitle("Most helpful (score < 0: lowers the query loss) and most harmful training "
                 "examples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _token_strip(ax, tokens: list[str], values: np.ndarray | None, width: int, vmax: float,
                 title: str, colour: str = "black") -> None:
    """Tokens in rows of ``width`` cells, each cell coloured by its value (blue < 0 < red)."""
    rows = -(-len(tokens) // width)
    grid = np.full((rows, width), np.nan)
    if values is not None:
        grid.flat[: len(values)] = values
    ax.imshow(grid, cmap="coolwarm", vmin=-vmax, vmax=vmax, aspect="auto",
              interpolation="nearest")
    for j, t in enumerate(tokens):
        ax.text(j % width, j // width, t, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, loc="left", color=colour)


def plot_top_text(task, scores: torch.Tensor, q: int, top: int, path: Path, width: int = 48) -> Path:
    """Query ``q`` as highlighted text, the per-token influence of its most helpful and most
    harmful training example over its tokens (when ``scores`` are per token), and the text of its
    ``top`` most helpful and most harmful examples with their scores."""
    seq = sequence_scores(scores)
    decode = decoder(task)
    train, query = task.train_split, task.query_split
    helpful, harmful = top_indices(seq[q], top)
    per_token = scores.dim() == 3
    shown = [("helpful", helpful, "tab:green"), ("harmful", harmful, "tab:red")]
    q_tokens = decode(query.targets[q])
    width = min(width, len(q_tokens))
    lines = 1 + (2 if per_token else 0) + 2 * top
    rows_each = -(-len(q_tokens) // width)
    fig, axes = plt.subplots(lines, 1, squeeze=False,
                             figsize=(max(width * 0.2, 10.0), 0.25 + 0.45 * lines * rows_each))
    axes = axes[:, 0]
    vmax = float(scores[q].abs().max()) or 1.0
    _token_strip(axes[0], q_tokens, None, width, 1.0,
                 f"query {q}: the tokens it predicts")
    k = 1
    if per_token:
        for name, idx, colour in shown:
            i = idx[0]
            vals = scores[q, :, i].numpy()
            _token_strip(axes[k], q_tokens, vals, width, vmax,
                         f"per-token influence of the most {name} example #{i} "
                         f"(sequence score {float(seq[q, i]):+.3g}; blue lowers, red raises the "
                         f"token's loss)", colour)
            k += 1
    for name, idx, colour in shown:
        for i in idx:
            vals = np.full(train.targets.shape[1], float(seq[q, i]))
            _token_strip(axes[k], decode(train.targets[i]), vals, width, float(seq[q].abs().max()),
                         f"{name} #{i}: {float(seq[q, i]):+.3g}", colour)
            k += 1
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def top_examples_view(task, scores: torch.Tensor, queries: list[int], top: int, out: Path) -> list[Path]:
    """The ``top`` view: one image grid for vision tasks, one text figure per query otherwise."""
    if image_of(task.train_split.inputs[0]) is not None and is_class_task(task):
        return [plot_top_images(task, scores, queries, top, out / "top_examples.png")]
    return [plot_top_text(task, scores, q, top, out / f"top_examples_q{q}.png") for q in queries]


# ----- (d) agreement of two methods' per-token scores --------------------------------------------
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
    for k, (q, toks) in enumerate(strips, start=1):
        _token_strip(fig.add_subplot(grid[k]), toks, pt[q, : len(toks)], width, 1.0,
                     f"query {q}: each token coloured by the agreement of its scores (red: agree, "
                     f"blue: opposite; sequence-level {seq[q]:+.3f})")
    fig.tight_layout()
    png = out / "token_agreement.png"
    fig.savefig(png, dpi=DPI)
    plt.close(fig)
    summary = {k: v for k, v in agree.items() if k not in ("per_token", "sequence")}
    summary.update(methods=list(names), shape=list(a.shape), sequence=[float(v) for v in seq],
                   per_token=[[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in pt])
    js = out / "token_agreement.json"
    atomic_write_bytes(js, (json.dumps(summary, indent=1) + "\n").encode())
    return [png, js]


# ----- (b) the BIF kernel ------------------------------------------------------------------------
def bif_kernel(task, bif, model, idx: torch.Tensor) -> np.ndarray:
    """Correlation over SGLD draws of the training losses of examples ``idx``: [k, k]."""
    bif.fit(task, model, keep_train_losses=idx)
    losses = bif.train_loss_draws.double().numpy()  # [draws, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(losses.T)
    corr = np.nan_to_num(corr)
    np.fill_diagonal(corr, 1.0)
    return corr


def kernel_view(task, bif, model, out: Path, n_examples: int, seed: int) -> Path:
    """``bif_kernel.png``: the kernel sorted by class, and its PCA and t-SNE embeddings."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = task.n_train
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) if not n_examples or n_examples >= n else \
        torch.randperm(n, generator=g)[:n_examples].sort().values
    corr = bif_kernel(task, bif, model, idx)
    if is_class_task(task):
        colour = task.train_split.targets[idx].numpy()
        cmap, what = "tab10", "class"
    else:
        with torch.no_grad():
            colour = task.per_example_loss(model, task.train_split.inputs[idx],
                                           task.train_split.targets[idx]).numpy()
        cmap, what = "viridis", "loss at w* (nats)"
    order = np.argsort(colour, kind="stable")
    pca = PCA(2, random_state=seed).fit_transform(corr)
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    tsne = TSNE(2, metric="precomputed", init="random", random_state=seed,
                perplexity=min(30.0, (len(idx) - 1) / 3)).fit_transform(dist)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    im = axes[0].imshow(corr[np.ix_(order, order)], cmap="coolwarm", vmin=-1, vmax=1,
                        interpolation="nearest")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[0].set_title(f"BIF kernel (loss correlation over {corr.shape[0]} examples), sorted by {what}",
                      fontsize=9)
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, emb, name in ((axes[1], pca, "PCA"), (axes[2], tsne, "t-SNE (1 - correlation)")):
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=colour, cmap=cmap, s=8, alpha=0.8)
        ax.set_title(f"{name} of the kernel rows", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if cmap == "tab10":
        handles, labels = sc.legend_elements()
        axes[2].legend(handles, labels, title="class", fontsize=7, loc="center left",
                       bbox_to_anchor=(1, 0.5))
    else:
        fig.colorbar(sc, ax=axes[2], fraction=0.046, label=what)
    draws = bif.chains * bif.draws
    fig.suptitle(f"{task.name}: posterior correlation of training losses, {bif.chains} SGLD chains x "
                 f"{bif.draws} draws ({draws} draws)", fontsize=10)
    fig.tight_layout()
    path = out / "bif_kernel.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ----- (c) stagewise attribution ------------------------------------------------------------------
def stagewise_scores(task, make) -> tuple[np.ndarray, torch.Tensor]:
    """BIF sequence scores at every trajectory snapshot: cumulative steps [S] and scores
    [S, n_query, n_train] (NaN at a snapshot where SGLD diverged)."""
    from tdabench.harness.engine.method import MethodDivergedError

    snaps = task.trajectory()
    steps = np.cumsum([s.steps for s in snaps])
    out = torch.full((len(snaps), task.n_query, task.n_train), float("nan"))
    for k, snap in enumerate(snaps):
        model = task.snapshot_model(snap)
        bif = make()
        try:
            bif.fit(task, model)
        except MethodDivergedError as exc:
            task.log(f"insight: snapshot {k} skipped: {exc}")
            continue
        out[k] = sequence_scores(bif.score(task, model))
    return steps, out


def pick_trajectories(s: np.ndarray, top: int) -> np.ndarray:
    """Training indices to plot from scores [S, n_train]: the largest peaks |score|, with up to
    a third of the places given to the examples that change sign most strongly (ranked by the
    smaller of their largest positive and largest negative score)."""
    s = np.nan_to_num(s)
    swing = np.minimum(s.max(0), -s.min(0))  # > 0 only for examples whose sign flips
    flips = [i for i in np.argsort(-swing)[: max(1, top // 3)] if swing[i] > 0]
    peaks = [i for i in np.argsort(-np.abs(s).max(0)) if i not in flips]
    return np.array(peaks[: top - len(flips)] + flips)


def stagewise_view(task, make, q: int, top: int, out: Path) -> Path:
    """``stagewise.png``: influence trajectories of the ``top`` examples with the largest
    influence on query ``q`` at any snapshot."""
    steps, scores = stagewise_scores(task, make)
    s = scores[:, q].numpy()  # [S, n_train]
    chosen = pick_trajectories(s, top)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for j, i in enumerate(chosen):
        colour = plt.cm.tab10(j % 10)
        y = s[:, i]
        label = _name(task, task.train_split, int(i))
        ax.plot(steps, y, "-o", color=colour, ms=4, label=label)
        flips = np.where(np.sign(y[1:]) * np.sign(y[:-1]) < 0)[0]
        for f in flips:  # the sign changes between snapshots f and f + 1
            ax.plot((steps[f] + steps[f + 1]) / 2, (y[f] + y[f + 1]) / 2, "x", color=colour, ms=9, mew=2)
        p = int(np.nanargmax(np.abs(y)))
        ax.plot(steps[p], y[p], "*", color=colour, ms=14, mec="black")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("optimizer steps of the reference run (trajectory snapshot)")
    ax.set_ylabel("BIF score (< 0: helpful)")
    ax.set_title(f"{task.name}: stagewise influence on query {_name(task, task.query_split, q)}; "
                 f"x = sign flip, \u2605 = peak", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    path = out / "stagewise.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ----- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tdabench-insight", description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. task=digits_mlp method=bif")
    p.add_argument("--out", required=True, help="folder for the PNG files")
    p.add_argument("--views", default="top,kernel,stagewise",
                   help=f"comma list of {', '.join(VIEWS)} (default: all but tokens)")
    p.add_argument("--queries", default="0,1,2", help="query indices for the top view")
    p.add_argument("--top", type=int, default=8, help="examples per side in the top view")
    p.add_argument("--scores", help="scores file RESULTS_DIR/scores/<run_id>.pt (key 'scores') "
                   "instead of computing them with the method of the overrides")
    p.add_argument("--compare", help="a second scores file for the tokens view (per-token scores "
                   "of another method on the same queries)")
    p.add_argument("--chains", type=int, default=4, help="SGLD chains of the sampling views")
    p.add_argument("--draws", type=int, default=50, help="SGLD draws per chain of the sampling views")
    p.add_argument("--kernel-examples", type=int, default=0,
                   help="training examples in the kernel (0: all)")
    p.add_argument("--stage-query", type=int, default=None,
                   help="query of the stagewise view (default: the first of --queries)")
    p.add_argument("--stage-top", type=int, default=6, help="examples in the stagewise view")
    return p.parse_args(argv)


def _fail(msg: str) -> None:
    print(f"tdabench-insight: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(args: argparse.Namespace) -> list[Path]:
    """Produce the chosen views; returns the written files."""
    from tdabench.harness.core.storage import load_verified
    from tdabench.harness.engine.cli import compose
    from tdabench.harness.engine.config import ConfigError
    from tdabench.harness.engine.run import check_scores, prepare

    views = [v for v in args.views.split(",") if v]
    bad = [v for v in views if v not in VIEWS]
    if bad:
        _fail(f"--views {','.join(bad)}: choose from {', '.join(VIEWS)}")
    try:
        queries = [int(q) for q in args.queries.split(",") if q != ""]
    except ValueError:
        _fail(f"--queries {args.queries!r}: give comma-separated query indices, e.g. 0,1,2")
    cfg = compose(args.overrides)
    torch.set_num_threads(cfg.get("threads") or 1)
    try:
        task, method = prepare(cfg)
    except ConfigError as exc:
        _fail("; ".join(exc.problems))
    if any(not 0 <= q < task.n_query for q in queries) or not queries:
        _fail(f"--queries {args.queries!r}: indices must lie in 0..{task.n_query - 1}")
    stage_q = queries[0] if args.stage_query is None else args.stage_query
    if not 0 <= stage_q < task.n_query:
        _fail(f"--stage-query {stage_q}: must lie in 0..{task.n_query - 1}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    model = None

    def make():
        return make_bif(args.overrides, args.chains, args.draws)

    if "top" in views:
        if args.scores:
            scores = load_verified(args.scores)["scores"].float()
        else:
            model = task.checkpoint()
            method = make() if method.name == "bif" else method
            method.fit(task, model)
            scores = method.score(task, model).detach().float().cpu()
        check_scores(scores, task)
        written += top_examples_view(task, scores, queries, args.top, out)
        task.log(f"insight: top examples -> {', '.join(map(str, written))}")

    if "tokens" in views:
        if not (args.scores and args.compare):
            _fail("--views tokens compares two saved per-token score files: give --scores FILE "
                  "and --compare FILE (RESULTS_DIR/scores/<run_id>.pt of two runs on the same task)")
        files = [load_verified(f) for f in (args.scores, args.compare)]
        pair = [f["scores"].float() for f in files]
        for sc in pair:
            check_scores(sc, task)
        names = tuple(str(f.get("method") or Path(p).stem) for f, p in zip(files, (args.scores, args.compare)))
        try:
            written += token_agreement_view(task, pair[0], pair[1], names, queries, out)
        except ValueError as exc:
            _fail(str(exc))
        task.log(f"insight: per-token agreement -> {written[-2]}")

    if "kernel" in views:
        model = model if model is not None else task.checkpoint()
        written.append(kernel_view(task, make(), model, out, args.kernel_examples, cfg["seed"]))
        task.log(f"insight: BIF kernel -> {written[-1]}")
    if "stagewise" in views:
        written.append(stagewise_view(task, make, stage_q, args.stage_top, out))
        task.log(f"insight: stagewise attribution -> {written[-1]}")
    return written


@one_line_errors("tdabench-insight")
def main(argv: list[str] | None = None) -> None:
    import os

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    from tdabench.harness.core.logs import setup as setup_logging
    from tdabench.harness.core.logs import take_verbosity_flags

    verbosity, rest = take_verbosity_flags(sys.argv[1:] if argv is None else argv)
    setup_logging(verbosity)
    for path in run(parse_args(rest)):
        print(path)


if __name__ == "__main__":
    main()
