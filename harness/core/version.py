"""tdabench's version as installed (``0+unknown`` for a source tree that is not installed) and the
git commit it was built from.

A source checkout (the folder above ``harness/`` holds ``.git``) reads its commit live from git; an
installed wheel reads the commit that ``setup.py`` wrote into ``_build_info.py`` when it was built
(None when built outside a git checkout).
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("tdabench")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

#: the checkout's root when this module runs from one (harness/core/version.py -> root)
_ROOT = Path(__file__).resolve().parents[2]


def _live_sha(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The full commit SHA of this copy: live from git in a checkout, else the one recorded at build
    time, else None."""
    if (_ROOT / ".git").exists():
        return _live_sha(_ROOT)
    try:
        from tdabench.harness.core._build_info import GIT_SHA
    except ImportError:
        return None
    return GIT_SHA


def version_line() -> str:
    """``tdabench VERSION (git SHA)``, as ``tdabench --version`` prints it."""
    sha = git_sha()
    return f"tdabench {__version__} ({f'git {sha}' if sha else 'git commit unknown'})"
