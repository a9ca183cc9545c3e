"""Per-phase wall time and peak memory.

Peak memory of a phase is measured above the phase's starting point: on CPU, the process resident
set size; on CUDA, ``torch.cuda.max_memory_allocated`` after a reset. Units: seconds and MiB.

On CPU, memory that earlier work freed can stay in the process (glibc keeps freed heap pages), so a
later phase reusing it would look free. Each phase therefore starts by collecting garbage and
handing free heap pages back to the kernel (``malloc_trim``), then resets the kernel's resident
high-water mark (``/proc/self/clear_refs``) and reads it back (``VmHWM``) when the phase ends, so
short spikes count too. Where either is unavailable (not Linux/glibc), a background thread samples
the resident set every ``interval`` seconds instead; both are always combined (the larger wins).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import threading
import time
from contextlib import contextmanager

import psutil
import torch

MIB = 1024 * 1024


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def release_free_memory() -> None:
    """Collect garbage and return free heap pages to the kernel (glibc only; no-op elsewhere)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak resident set (VmHWM) of this process to its current value."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class _RssSampler:
    def __init__(self, interval: float):
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _inject_fault(phase: str) -> None:
    """Fault injection for the reliability suite: ``TDABENCH_FAULT=<phase>:<signal>`` makes the
    process send itself that signal (INT, TERM, KILL) when the phase starts."""
    spec = os.environ.get("TDABENCH_FAULT", "")
    if spec.partition(":")[0] == phase:
        os.kill(os.getpid(), getattr(signal, "SIG" + (spec.partition(":")[2] or "INT")))


class Profiler:
    """Collects ``time_s`` and ``peak_mem_mb`` per named phase.

    >>> prof = Profiler()
    >>> with prof.phase("fit"):
    ...     pass
    >>> sorted(prof.time_s)
    ['fit']
    """

    def __init__(self, device: str = "cpu", interval: float = 0.01):
        self.device = device
        self.interval = interval
        self.time_s: dict[str, float] = {}
        self.peak_mem_mb: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def phase(self, name: str):
        self.current = name
        _inject_fault(name)
        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        release_free_memory()
        hwm_reset = _reset_high_water_mark()
        start_rss = psutil.Process().memory_info().rss
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start_cuda = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        sampler = _RssSampler(self.interval)
        try:
            with sampler:
                yield self
        finally:
            if cuda:
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - start_cuda) / MIB
            else:
                hwm = _high_water_mark() if hwm_reset else None
                peak = (max(sampler.peak, hwm or 0) - start_rss) / MIB
            self.time_s[name] = round(time.perf_counter() - t0, 4)
            self.peak_mem_mb[name] = round(max(peak, 0.0), 2)
