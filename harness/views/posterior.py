"""The insight views that sample around a model with a method that offers
``training_loss_draws`` (for example ``bif``): the ``kernel`` (the correlation over posterior
draws of the training losses) and ``stagewise`` attribution (the method's scores at every
trajectory snapshot)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tdabench.harness.read.lds import sequence_scores
from tdabench.harness.views.plotting import DPI, example_name, is_class_task, plt


def loss_kernel(task, sampler, model, idx: torch.Tensor) -> np.ndarray:
    """Correlation over the posterior draws of ``sampler`` (a method offering
    ``training_loss_draws``) of the training losses of examples ``idx``: [k, k]."""
    losses = sampler.training_loss_draws(task, model, idx).double().numpy()  # [draws, k]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(losses.T)
    corr = np.nan_to_num(corr)
    np.fill_diagonal(corr, 1.0)
    return corr


def kernel_view(task, sampler, model, out: Path, n_examples: int, seed: int) -> Path:
    """``bif_kernel.png``: the kernel sorted by class, and its PCA and t-SNE embeddings."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = task.n_train
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) if not n_examples or n_examples >= n else \
        torch.randperm(n, generator=g)[:n_examples].sort().values
    corr = loss_kernel(task, sampler, model, idx)
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
    axes[0].set_title(f"BIF kernel: loss correlation over {corr.shape[0]} examples,\nsorted by {what}",
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
    draws = sampler.chains * sampler.draws
    fig.suptitle(f"{task.name}: posterior correlation of training losses, {sampler.chains} chains x "
                 f"{sampler.draws} draws of {sampler.name} ({draws} draws)", fontsize=10)
    fig.tight_layout()
    path = out / "bif_kernel.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# ----- (c) stagewise attribution ------------------------------------------------------------------
def stagewise_scores(task, make) -> tuple[np.ndarray, torch.Tensor]:
    """Sequence scores of a fresh sampling method ``make()`` (e.g. the BIF) at every trajectory
    snapshot: cumulative steps [S] and scores [S, n_query, n_train] (NaN at a snapshot where the
    method diverged)."""
    from tdabench.harness.plugin.method import MethodDivergedError

    snaps = task.trajectory()
    steps = np.cumsum([s.steps for s in snaps])
    out = torch.full((len(snaps), task.n_query, task.n_train), float("nan"))
    for k, snap in enumerate(snaps):
        model = task.snapshot_model(snap)
        sampler = make()
        try:
            sampler.fit(task, model)
        except MethodDivergedError as exc:
            task.log(f"insight: snapshot {k} skipped: {exc}")
            continue
        out[k] = sequence_scores(sampler.score(task, model))
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
        label = example_name(task, task.train_split, int(i))
        ax.plot(steps, y, "-o", color=colour, ms=4, label=label)
        flips = np.where(np.sign(y[1:]) * np.sign(y[:-1]) < 0)[0]
        for f in flips:  # the sign changes between snapshots f and f + 1
            ax.plot((steps[f] + steps[f + 1]) / 2, (y[f] + y[f + 1]) / 2, "x", color=colour, ms=9, mew=2)
        p = int(np.nanargmax(np.abs(y)))
        ax.plot(steps[p], y[p], "*", color=colour, ms=14, mec="black")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("optimizer steps of the reference run (trajectory snapshot)")
    ax.set_ylabel("BIF score (< 0: helpful)")
    ax.set_title(f"{task.name}: stagewise influence on query {example_name(task, task.query_split, q)}; "
                 f"x = sign flip, \u2605 = peak", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    path = out / "stagewise.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
