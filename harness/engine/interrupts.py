"""Time limits and Ctrl-C during a run: :func:`time_limit` raises :class:`TimeLimitExceeded`,
:func:`user_interrupts` turns the user's SIGINT into :class:`UserInterrupt` (which stops a sweep),
so that a ``KeyboardInterrupt`` raised by a method's own code stays a failure of that pairing."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class TimeLimitExceeded(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`TimeLimitExceeded` after ``seconds`` (main thread only; no-op otherwise)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise TimeLimitExceeded(f"the run exceeded limits.max_seconds={seconds}")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
