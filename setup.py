"""Build hook: a wheel records the git commit of the checkout it was built from.

Everything else about the package is in pyproject.toml. ``build_py`` writes
``tdabench/harness/core/_build_info.py`` (``GIT_SHA = "..."``, or None outside a git checkout) into
the build, never into the source tree; a checkout reads its commit live from git instead
(harness/core/version.py).
"""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def checkout_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class BuildWithCommit(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install runs from the checkout and asks git itself
            return
        target = Path(self.build_lib) / "tdabench" / "harness" / "core" / "_build_info.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'"""Written when this copy was built (setup.py)."""\n\nGIT_SHA = {checkout_sha()!r}\n')


setup(cmdclass={"build_py": BuildWithCommit})
