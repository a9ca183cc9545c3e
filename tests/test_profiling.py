"""Peak memory per phase is counted even when earlier work freed memory the process still holds."""

import numpy as np
import pytest

from tdabench.harness.profiling import Profiler


def _touch(n_mib: int) -> np.ndarray:
    a = np.empty(n_mib * 1024 * 1024, dtype=np.uint8)
    a[::4096] = 1  # touch every page so it becomes resident
    return a


def test_phase_peak_sees_memory_reused_from_an_earlier_phase():
    prof = Profiler(interval=10.0)  # sampler effectively off: the high-water mark must catch it
    pins = []
    with prof.phase("first"):
        # 1 MiB chunks interleaved with small live objects: once freed, the chunks' pages stay in
        # the process's heap (the live pins keep the heap from shrinking) unless handed back
        chunks = []
        for _ in range(300):
            chunks.append(_touch(1))
            pins.append(np.ones(1000))
        del chunks
    with prof.phase("second"):
        chunks = [_touch(1) for _ in range(200)]
        del chunks
    assert prof.peak_mem_mb["first"] > 250
    # without returning the first phase's pages, the second phase would read close to 0 MiB
    assert 150 < prof.peak_mem_mb["second"] < 400
    del pins


def test_short_spike_between_samples_is_counted():
    prof = Profiler(interval=10.0)
    with prof.phase("spike"):
        a = _touch(256)
        del a
    assert prof.peak_mem_mb["spike"] == pytest.approx(256, rel=0.25)
