"""Where tasks find data files that need no download (archives, corpora).

Searched in order: the run's ``data_root`` setting (config key ``data_root``), the
environment variable ``TDABENCH_DATA``, and, in a source checkout, ``../shared/data`` beside the
project folder. Tasks fall back to their normal sources (a download, a user's folder) when a file
is in none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TDABENCH_DATA"
#: ``../shared/data`` beside a source checkout (absent, and harmless, in an installed copy)
CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
_configured: Path | None = None


def set_data_root(path: str | Path | None) -> None:
    """Use ``path`` (the run's ``data_root`` setting) before the other places; None clears it."""
    global _configured
    _configured = Path(path).expanduser() if path else None


def data_roots() -> list[Path]:
    """The folders searched for data files, in order."""
    dirs = [_configured] if _configured is not None else []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    return dirs + [CHECKOUT_DATA]


def find_data_file(name: str) -> Path | None:
    """The first ``<dir>/<name>`` that exists among :func:`data_roots`, else None."""
    for d in data_roots():
        if (d / name).exists():
            return d / name
    return None
