"""The console commands' entry points. Each answers Ctrl-C in one line and exit status 130 from
its first moment: the command's module (and torch, Hydra, pandas behind it) is imported inside
the handler, so an interrupt during start-up prints no traceback either."""

from __future__ import annotations

import sys
from importlib import import_module


def _guarded(prog: str, module: str) -> None:
    """Import ``module`` and run its ``main``; Ctrl-C at any moment ends it with one line and exit
    status 130."""
    try:
        import_module(module).main()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        sys.exit(130)


def tdabench() -> None:
    _guarded("tdabench", "tdabench.harness.engine.cli")


def leaderboard() -> None:
    _guarded("tdabench-leaderboard", "tdabench.harness.read.leaderboard_cli")


def insight() -> None:
    _guarded("tdabench-insight", "tdabench.harness.views.insight")


def adequacy() -> None:
    _guarded("tdabench-adequacy", "tdabench.harness.views.adequacy")


def ground_truths() -> None:
    _guarded("tdabench-gt", "tdabench.harness.share.cli")
