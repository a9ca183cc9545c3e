"""The ``top`` insight view: each chosen query's most helpful and most harmful training examples
(images for vision tasks, highlighted text with per-token heat maps for language tasks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tdabench.harness.read.lds import sequence_scores
from tdabench.harness.views.plotting import (
    DPI,
    STRIPS_RIGHT,
    colour_scale,
    decoder,
    image_of,
    is_class_task,
    plt,
    token_strip,
)


def top_indices(row: torch.Tensor, top: int) -> tuple[list[int], list[int]]:
    """Training indices of the ``top`` most helpful (most negative scores) and most harmful (most
    positive) examples. Only a negative score is helpful and only a positive one harmful: when
    every score is negative the harmful list is empty (the least helpful examples are no harm)."""
    order = torch.argsort(row)
    helpful = [i for i in order[:top].tolist() if row[i] < 0]
    harmful = [i for i in order.flip(0)[:top].tolist() if row[i] > 0]
    return helpful, harmful


#: what an empty side of the top view says
NONE_OF_SIGN = {"helpful": "no training example lowers this query's loss (no score < 0)",
                "harmful": "no training example raises this query's loss (no score > 0)"}


def _label(task, split, i: int) -> str:
    """``y=<class>`` for classification tasks, ``#<index>`` otherwise."""
    t = split.targets[i]
    return f"y={int(t)}" if t.dim() == 0 else f"#{i}"



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
        for row, idx, colour, name in ((2 * r, helpful, "tab:green", "helpful"),
                                       (2 * r + 1, harmful, "tab:red", "harmful")):
            if not idx:
                axes[row, 1].text(0, 0.5, NONE_OF_SIGN[name], fontsize=8, va="center",
                                  transform=axes[row, 1].transAxes)
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
    lines = 1 + sum((1 if per_token and idx else 0) + max(len(idx), 1) for _, idx, _ in shown)
    rows_each = -(-len(q_tokens) // width)
    fig, axes = plt.subplots(lines, 1, squeeze=False,
                             figsize=(max(width * 0.2, 10.0), 0.25 + 0.45 * lines * rows_each))
    axes = axes[:, 0]
    vmax = float(scores[q].abs().max()) or 1.0
    token_strip(axes[0], q_tokens, None, width, 1.0,
                 f"query {q}: the tokens it predicts")
    k = 1
    token_image = seq_image = None
    if per_token:
        for name, idx, colour in [side for side in shown if side[1]]:
            i = idx[0]
            vals = scores[q, :, i].numpy()
            token_image = token_strip(axes[k], q_tokens, vals, width, vmax,
                         f"per-token influence of the most {name} example #{i} "
                         f"(sequence score {float(seq[q, i]):+.3g}; blue lowers, red raises the "
                         f"token's loss)", colour)
            k += 1
    first_seq = k
    for name, idx, colour in shown:
        if not idx:
            axes[k].text(0, 0.5, NONE_OF_SIGN[name], fontsize=9, va="center", transform=axes[k].transAxes)
            axes[k].axis("off")
            k += 1
        for i in idx:
            vals = np.full(train.targets.shape[1], float(seq[q, i]))
            seq_image = token_strip(axes[k], decode(train.targets[i]), vals, width, float(seq[q].abs().max()),
                                    f"{name} #{i}: {float(seq[q, i]):+.3g}", colour)
            k += 1
    fig.tight_layout(rect=(0, 0, STRIPS_RIGHT, 1))
    colour_scale(fig, token_image, axes[1:first_seq], "per-token score")
    colour_scale(fig, seq_image, axes[first_seq:], "sequence score")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def top_examples_view(task, scores: torch.Tensor, queries: list[int], top: int, out: Path) -> list[Path]:
    """The ``top`` view: one image grid for vision tasks, one text figure per query otherwise."""
    if image_of(task.train_split.inputs[0]) is not None and is_class_task(task):
        return [plot_top_images(task, scores, queries, top, out / "top_examples.png")]
    return [plot_top_text(task, scores, q, top, out / f"top_examples_q{q}.png") for q in queries]
