"""Fingerprints that tie a ground truth to what it was made from: the training data (inputs and
labels, in order), the queries (inputs and targets, in order) and the reference checkpoint (every
tensor of its state dict, by name). Each is a sha256 over the tensors' dtypes, shapes and bytes, so
equal fingerprints mean bit-for-bit equal data or weights."""

from __future__ import annotations

import hashlib

import torch


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{list(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensors_sha256(named: dict[str, torch.Tensor]) -> str:
    """sha256 of the named tensors, in the order of their names."""
    h = hashlib.sha256()
    for name in sorted(named):
        _update(h, name, named[name])
    return h.hexdigest()


def data_fingerprint(task) -> dict:
    """``train_sha256`` (training inputs and labels in order), ``query_sha256`` (query inputs and
    targets in order) and ``query_ids`` (the queries' indices in the task's held-out pool)."""
    train, query = task.train_split, task.query_split
    return {"train_sha256": tensors_sha256({"inputs": train.inputs, "targets": train.targets}),
            "query_sha256": tensors_sha256({"inputs": query.inputs, "targets": query.targets}),
            "query_ids": [int(i) for i in task.query_ids()]}


def checkpoint_sha256(model) -> str:
    """sha256 of a model's state dict (or of a state dict)."""
    state = model if isinstance(model, dict) else model.state_dict()
    return tensors_sha256(dict(state))
