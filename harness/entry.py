"""The console commands' entry points. Each answers Ctrl-C in one line and exit status 130 from
its first moment: the command's module (and torch, Hydra, pandas behind it) is imported inside
the handler, so an interrupt during start-up prints no traceback either."""

from __future__ import annotations

import sys


def _guarded(prog: str, load) -> None:
    """Import the command's ``main`` with ``load()`` and run it; Ctrl-C at any moment ends it
    with one line and exit status 130."""
    try:
        main = load()
        main()
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        sys.exit(130)


def tdabench() -> None:
    def load():
        from tdabench.harness.engine.cli import main
        return main
    _guarded("tdabench", load)


def leaderboard() -> None:
    def load():
        from tdabench.harness.read.leaderboard_cli import main
        return main
    _guarded("tdabench-leaderboard", load)


def insight() -> None:
    def load():
        from tdabench.harness.views.insight import main
        return main
    _guarded("tdabench-insight", load)


def adequacy() -> None:
    def load():
        from tdabench.harness.views.adequacy import main
        return main
    _guarded("tdabench-adequacy", load)
