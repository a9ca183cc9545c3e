"""Per-phase wall time and peak memory.

Peak memory of a phase is measured above the phase's starting point: on CPU, the process resident
set size sampled by a background thread (every ``interval`` seconds, plus at the start and end);
on CUDA, ``torch.cuda.max_memory_allocated`` after a reset. Units: seconds and MiB.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import psutil
import torch

MIB = 1024 * 1024


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
                peak = (sampler.peak - start_rss) / MIB
            self.time_s[name] = round(time.perf_counter() - t0, 4)
            self.peak_mem_mb[name] = round(max(peak, 0.0), 2)
