"""The reference run in a bundle (``tdabench-gt export --checkpoint``): the reference checkpoint,
its trajectory snapshots and its training losses as safetensors, so that ``tdabench-gt import``
can put the very model the ground truth's records attributed into another cache. A machine whose
arithmetic differs (a laptop's CPU against a cluster's GPU) then evaluates methods on the same
model, and the checkpoint fingerprint matches."""

from __future__ import annotations

import torch

from tdabench.harness.core.bundle import CHECKPOINT, Bundle, BundleError
from tdabench.harness.core.fingerprints import checkpoint_sha256
from tdabench.harness.core.storage import load_verified, save_verified


def reference_file(run: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of ``checkpoint.safetensors`` (``state/<name>``, ``trajectory/<i>/<name>``,
    ``losses``) and the manifest's ``checkpoint.trajectory`` (each snapshot's lr and steps) of a
    reference run ``{"state", "losses", "trajectory"}``."""
    tensors = {f"state/{k}": v.detach().cpu() for k, v in run["state"].items()}
    for i, snap in enumerate(run["trajectory"]):
        tensors.update({f"trajectory/{i}/{k}": v.detach().cpu() for k, v in snap["state"].items()})
    tensors["losses"] = torch.tensor([float(x) for x in run["losses"]], dtype=torch.float64)
    return tensors, {"trajectory": [{"lr": float(s["lr"]), "steps": int(s["steps"])} for s in run["trajectory"]]}


def reference_run(bundle: Bundle) -> dict:
    """The reference run a bundle holds, as ``task.reference_run()``
    (:meth:`~tdabench.harness.plugin.models.TrainedModels.reference_run`) returns it."""
    tensors, meta = bundle.tensors[CHECKPOINT], bundle.manifest["checkpoint"]

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    return {"state": part("state/"), "losses": tensors["losses"].tolist(),
            "trajectory": [{"state": part(f"trajectory/{i}/"), **snap} for i, snap in enumerate(meta["trajectory"])]}


def install_reference(bundle: Bundle, task) -> str:
    """Put the bundle's reference run into ``task``'s cache; returns what happened. Refused when the
    cache already holds another reference model for the task, or the bundle's checkpoint is not the
    one its manifest fingerprints."""
    run = reference_run(bundle)
    want = bundle.manifest["checkpoint"]["sha256"]
    if checkpoint_sha256(run["state"]) != want:
        raise BundleError(f"{bundle.path / CHECKPOINT}: its weights are not the checkpoint the manifest's field "
                          "checkpoint.sha256 names")
    if len(run["trajectory"]) != task.trajectory_checkpoints:
        raise BundleError(f"{bundle.path / CHECKPOINT}: {len(run['trajectory'])} trajectory snapshots, the task "
                          f"has task.trajectory_checkpoints={task.trajectory_checkpoints}")
    path = task.reference_path()
    if path.exists():
        if checkpoint_sha256(load_verified(path)["state"]) == want:
            return f"{path}: the cache already holds this reference model"
        raise BundleError(f"{path}: the cache holds another reference model for this task (checkpoint.sha256 "
                          "differs); import into another cache, or move that file away")
    save_verified(run, path)
    return f"{path}: the reference model the ground truth belongs to"
