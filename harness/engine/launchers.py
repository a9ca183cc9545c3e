"""What the command line checks about a launcher that submits jobs to other machines (SLURM),
before anything is created: that SLURM's commands are here, and that the device is judged where
each job runs, not on the submitting machine (a login node has no GPU)."""

from __future__ import annotations

import shutil

#: launchers that submit each job to another machine
REMOTE = {"slurm", "submitit_slurm"}


def launcher_of(overrides) -> str | None:
    """The ``hydra/launcher=`` choice of parsed Hydra ``overrides`` (the last one), or None."""
    chosen = [str(o.value()) for o in overrides if o.key_or_group == "hydra/launcher"]
    return chosen[-1] if chosen else None


def submits_elsewhere(overrides) -> bool:
    """Whether the runs of these overrides execute on other machines (checked there)."""
    return launcher_of(overrides) in REMOTE


def slurm_problem(launcher: str | None) -> str | None:
    """Why ``launcher``, one that submits through SLURM, cannot submit from this machine (SLURM's
    ``sbatch`` and ``srun`` are not on the PATH), or None."""
    missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
    if launcher not in REMOTE or not missing:
        return None
    return (f"hydra/launcher={launcher}: SLURM's {' and '.join(missing)} not found on this machine's PATH; "
            "submit from a login node of the SLURM cluster, or use hydra/launcher=submitit_local "
            "to run the same jobs here")
