"""What the insight views share: the matplotlib backend (files, no display), the figure
resolution, and how scores, examples and tokens are shown."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["DPI", "STRIPS_RIGHT", "colour_scale", "decoder", "example_name", "image_of", "is_class_task", "plt",
           "token_strip"]

DPI = 80


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


def example_name(task, split, i: int) -> str:
    """``#<index>``, with the class for classification tasks."""
    return f"#{i} (y={int(split.targets[i])})" if split.targets[i].dim() == 0 else f"#{i}"


def token_strip(ax, tokens: list[str], values: np.ndarray | None, width: int, vmax: float,
                 title: str, colour: str = "black"):
    """Tokens in rows of ``width`` cells, each cell coloured by its value (blue < 0 < red, on
    [-vmax, vmax]); returns the image, for a colour bar (:func:`colour_scale`)."""
    rows = -(-len(tokens) // width)
    grid = np.full((rows, width), np.nan)
    if values is not None:
        grid.flat[: len(values)] = values
    image = ax.imshow(grid, cmap="coolwarm", vmin=-vmax, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    for j, t in enumerate(tokens):
        ax.text(j % width, j // width, t, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, loc="left", color=colour)
    return image


#: the right edge of a figure's strips when colour scales sit beside them (``tight_layout(rect=...)``)
STRIPS_RIGHT = 0.88


def colour_scale(fig, image, axes, label: str) -> None:
    """A colour bar beside the token strips ``axes`` coloured as ``image``, as tall as they are
    together, in the margin right of :data:`STRIPS_RIGHT` (call after the figure's layout)."""
    if image is None or not len(axes):
        return
    boxes = [ax.get_position() for ax in axes]
    low, high = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    bar = fig.colorbar(image, cax=fig.add_axes([max(b.x1 for b in boxes) + 0.01, low, 0.012, high - low]),
                       format="%.2g")
    vmax = image.get_clim()[1]
    bar.set_ticks([-vmax, 0.0, vmax])
    bar.ax.tick_params(labelsize=6)
    bar.set_label(label, fontsize=7)
