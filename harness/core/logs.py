"""Console logging for the command-line tools: one logger per module under ``tdabench``, shown on
standard error as ``[tdabench] message``; ``-q`` shows warnings and errors only, ``-v`` adds
debugging detail."""

from __future__ import annotations

import logging
import sys

LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"[tdabench] {level}{record.getMessage()}"


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(verbosity: int = 0) -> None:
    """Send the ``tdabench`` loggers to standard error at the level for ``verbosity`` (-1 quiet,
    0 normal, 1 verbose); idempotent."""
    root = logging.getLogger("tdabench")
    root.setLevel(LEVELS[max(-1, min(1, verbosity))])
    if not any(getattr(h, "_tdabench", False) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format())
        handler._tdabench = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False


def take_verbosity_flags(argv: list[str]) -> tuple[int, list[str]]:
    """Remove ``-q/--quiet`` and ``-v/--verbose`` from ``argv``; return (verbosity, the rest)."""
    quiet = {"-q", "--quiet"}
    verbose = {"-v", "--verbose"}
    level = sum(1 for a in argv if a in verbose) - sum(1 for a in argv if a in quiet)
    return level, [a for a in argv if a not in quiet | verbose]
