"""Time limits and Ctrl-C during a run: :func:`time_limit` raises :class:`TimeLimitExceeded`,
:func:`cpu_limit` raises :class:`CpuLimitExceeded` once the process has used its CPU seconds,
:func:`user_interrupts` turns the user's SIGINT into :class:`UserInterrupt` (which stops a sweep),
so that a ``KeyboardInterrupt`` raised by a method's own code stays a failure of that pairing."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class TimeLimitExceeded(Exception):
    pass


class CpuLimitExceeded(Exception):
    pass


@contextmanager
def _interval_timer(seconds: float | None, which: int, signum: int, error: Exception, repeat: float = 0.0):
    """Raise ``error`` once interval timer ``which`` has run ``seconds`` inside the block (its
    signal ``signum`` handled by a temporary handler), and again every ``repeat`` seconds (0:
    once) until the block ends. With ``repeat``, a signal that lands where Python cannot raise (a
    weakref callback, a finalizer) is dropped silently, not reported as unraisable: the next one
    raises. Main thread only; no-op otherwise."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise error

    outer_hook = sys.unraisablehook

    def hook(unraisable):
        if unraisable.exc_value is not error:
            outer_hook(unraisable)

    previous = signal.signal(signum, handler)
    if repeat:
        sys.unraisablehook = hook
    signal.setitimer(which, seconds, repeat)
    try:
        yield
    finally:
        signal.setitimer(which, 0)
        signal.signal(signum, previous)
        if sys.unraisablehook is hook:
            sys.unraisablehook = outer_hook


def time_limit(seconds: float | None):
    """Raise :class:`TimeLimitExceeded` after ``seconds`` of wall time (main thread only; no-op
    otherwise)."""
    return _interval_timer(seconds, signal.ITIMER_REAL, signal.SIGALRM,
                           TimeLimitExceeded(f"the run exceeded limits.max_seconds={seconds}"))


def cpu_limit(seconds: float | None, message: str = "the CPU time limit"):
    """Raise :class:`CpuLimitExceeded` (``message``) once the process has used ``seconds`` of CPU
    time (user + system, all threads: the clock of ``time.process_time``, which the profiler
    reads) inside the block. Main thread only; no-op otherwise. The signal is handled when the
    interpreter next runs, so a long native call (one large matrix product) ends first."""
    # repeated (every second, or a tenth of the limit if longer): a signal that lands where Python
    # cannot raise (a weakref callback, a finalizer) is lost, and the next one stops the block. The wall
    # limit fires once: a second signal while a timed-out run unwinds would turn its timeout into
    # an error.
    return _interval_timer(seconds, signal.ITIMER_PROF, signal.SIGPROF, CpuLimitExceeded(message),
                           repeat=max(seconds / 10, 1.0) if seconds else 0.0)


class UserInterrupt(KeyboardInterrupt):
    """Ctrl-C (SIGINT) from the user during a run: the sweep stops. A ``KeyboardInterrupt`` raised
    by a method's own code is a failure of that pairing instead, recorded like any other."""


@contextmanager
def user_interrupts():
    """While active (main thread only), SIGINT raises :class:`UserInterrupt`."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def handler(signum, frame):
        raise UserInterrupt("interrupted by the user (Ctrl-C)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
