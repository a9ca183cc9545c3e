"""Helpers for methods that attribute through the reference run's trajectory (TracIn, SOURCE)."""

from __future__ import annotations

from tdabench.harness.plugin.training import Snapshot


def effective_lr(task, lr: float) -> float:
    """Heavy-ball SGD's effective step size lr / (1 - momentum) under the task's recipe."""
    return lr / (1 - task.recipe().momentum)


def split_segments(snaps: list[Snapshot], segments: int) -> list[list[Snapshot]]:
    """Split consecutive snapshots into ``segments`` groups of (nearly) equal size, earlier groups
    taking the remainder; requires 1 <= segments <= len(snaps)."""
    if not 1 <= segments <= len(snaps):
        raise ValueError(f"cannot split {len(snaps)} trajectory snapshots into {segments} segments")
    size, extra = divmod(len(snaps), segments)
    out, start = [], 0
    for s in range(segments):
        end = start + size + (1 if s < extra else 0)
        out.append(snaps[start:end])
        start = end
    return out
