"""Console logging for the command-line tools: one logger per module under ``tdabench``, shown on
standard error as ``[tdabench] message``; ``-q`` shows warnings, errors and the per-run result
lines (level :data:`RESULT`) only, ``-v`` adds debugging detail.

The verbosity travels to launcher workers (joblib, submitit, SLURM jobs) in the environment
variable :data:`VERBOSITY_ENV`, so every worker sets up the same console with :func:`setup_worker`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stderr

#: between INFO and WARNING: one line per run with its result or status, shown also with -q
RESULT = 25
logging.addLevelName(RESULT, "RESULT")
LEVELS = {-1: RESULT, 0: logging.INFO, 1: logging.DEBUG}
VERBOSITY_ENV = "TDABENCH_VERBOSITY"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"[tdabench] {level}{record.getMessage()}"


#: the real standard error while :func:`silenced` sends everything else written there to nowhere
_held_stderr: list = []


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each message (the real
    one inside :func:`silenced`)."""

    @property
    def stream(self):
        return _held_stderr[-1] if _held_stderr else sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(verbosity: int = 0) -> None:
    """Send the ``tdabench`` loggers to standard error at the level for ``verbosity`` (-1 quiet,
    0 normal, 1 verbose), hand the verbosity on to processes started from here, and hide
    third-party deprecation warnings (``torch.jit.script``); quiet also silences wandb's console
    lines (``WANDB_SILENT``, whatever the environment said); idempotent."""
    verbosity = max(-1, min(1, verbosity))
    os.environ[VERBOSITY_ENV] = str(verbosity)
    if verbosity < 0:
        os.environ["WANDB_SILENT"] = "true"
    root = logging.getLogger("tdabench")
    root.setLevel(LEVELS[verbosity])
    if not any(getattr(h, "_tdabench", False) for h in root.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format())
        handler._tdabench = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    if verbosity < 1:  # torch deprecates TorchScript, which libraries the methods call still use
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)


def setup_worker() -> None:
    """:func:`setup` with the verbosity the launching process handed on (normal when none)."""
    try:
        verbosity = int(os.environ.get(VERBOSITY_ENV, "0"))
    except ValueError:
        verbosity = 0
    setup(verbosity)


@contextmanager
def silenced(level: int = logging.ERROR):
    """Hide, for the block, the ``tdabench`` loggers' messages below ``level`` (errors still show)
    and whatever else is written to standard error (third-party progress bars, warnings): for work
    that repeats work already reported, such as the counting replay."""
    root = logging.getLogger("tdabench")
    before = root.level
    root.setLevel(max(before, level))
    _held_stderr.append(sys.stderr)
    try:
        with open(os.devnull, "w") as sink, redirect_stderr(sink):
            yield
    finally:
        _held_stderr.pop()
        root.setLevel(before)


class Ticker:
    """A periodic progress line for a long phase: ``tick(done)`` logs ``what: done/total (pct,
    elapsed s)`` at most every ``every_s`` seconds (INFO), so a log file without a terminal (a
    launcher worker, a SLURM job) shows the phase advancing."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = 10.0):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.start = self.last = time.monotonic()

    def tick(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info(f"{self.what}: {done}/{self.total} ({done / max(self.total, 1):.0%}, "
                          f"{now - self.start:.0f} s)")


def apart(a: float, b: float, digits: int = 4) -> tuple[str, str]:
    """``a`` and ``b`` with ``digits`` significant digits, or as many more (up to 12) as tell
    them apart, so a message never quotes two different numbers as equal ones."""
    for d in range(digits, 13):
        pair = f"{a:.{d}g}", f"{b:.{d}g}"
        if pair[0] != pair[1] or a == b:
            return pair
    return pair


def take_verbosity_flags(argv: list[str]) -> tuple[int, list[str]]:
    """Remove ``-q/--quiet`` and ``-v/--verbose`` from ``argv``; return (verbosity, the rest)."""
    quiet = {"-q", "--quiet"}
    verbose = {"-v", "--verbose"}
    level = sum(1 for a in argv if a in verbose) - sum(1 for a in argv if a in quiet)
    return level, [a for a in argv if a not in quiet | verbose]
