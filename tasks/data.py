"""Where tasks find their data: the shared data folder beside the project, and helpers to unpack
archives into a cache once and to draw seeded, class-balanced subsamples.

Data files are looked up by :func:`tdabench.harness.core.data_paths.find_data_file`: the run's
``data_root`` setting, ``$TDABENCH_DATA``, then ``../shared/data`` beside a source checkout. They
are optional: tasks fall back to their normal sources (a download, a user's folder).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch

from tdabench.harness.core.data_paths import find_data_file

_log = logging.getLogger(__name__)


def shared_file(name: str) -> Path | None:
    """The data file ``name`` from the configured data folders, or None when none has it."""
    return find_data_file(name)


def unpack_once(archive: Path, dest: Path, log=None) -> Path:
    """Unpack the tar archive ``archive`` into ``dest`` unless ``dest`` already exists.

    The archive is unpacked into a temporary folder beside ``dest`` and renamed into place, under
    a file lock, so readers never see a half-unpacked folder and concurrent callers unpack once.
    """
    from filelock import FileLock

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            return dest
        (log or _log.info)(f"unpacking {archive} into {dest}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            if shutil.which("tar"):  # several times faster than tarfile on many small files
                subprocess.run(["tar", "-xf", str(archive), "-C", str(tmp)], check=True,
                               capture_output=True)
            else:
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def balanced_sample(labels: torch.Tensor, n: int, classes: int, gen: torch.Generator,
                    exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices of ``n`` examples drawn without replacement, as equal per class as possible
    (the first ``n % classes`` get one more). ``labels`` [N] holds class ids 0..classes-1 (other
    values are never drawn); ``exclude`` [N] bool marks examples that may not be drawn."""
    allowed = torch.ones_like(labels, dtype=torch.bool) if exclude is None else ~exclude
    picked = []
    for c in range(classes):
        want = n // classes + (1 if c < n % classes else 0)
        pool = torch.nonzero((labels == c) & allowed)[:, 0]
        if want > len(pool):
            raise ValueError(f"class {c} has {len(pool)} examples left, {want} requested")
        picked.append(pool[torch.randperm(len(pool), generator=gen)[:want]])
    return torch.cat(picked).sort().values
