"""Per-phase cost: tensor-level peak memory that does not depend on what ran before, FLOPs, CPU
time, load, and the resident set kept apart."""

import threading
import time

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from tdabench.harness.core.storage import load_or_compute, save_verified
from tdabench.harness.engine.profiling import CostMode, Profiler, warm_up

MIB = 1024 * 1024


def _touch(n_mib: int) -> np.ndarray:
    a = np.empty(n_mib * 1024 * 1024, dtype=np.uint8)
    a[::4096] = 1  # touch every page so it becomes resident
    return a


def _workload():
    """Peaks at two live 8 MiB tensors (a and b), then frees both."""
    a = torch.ones(1024, 2048)
    b = a @ torch.ones(2048, 2048)[:, :2048]
    del a
    c = b.sum()
    del b
    return c


def test_tensor_peak_is_the_same_first_and_after_freed_memory_is_reused():
    prof = Profiler()
    with prof.phase("first"):
        _workload()
    keep = [torch.ones(256, 1024) for _ in range(20)]  # allocated between phases: not counted
    with prof.phase("second"):
        _workload()
    del keep
    # a (8 MiB), ones(2048, 2048) (16 MiB), b (8 MiB) are live at once
    assert prof.peak_mem_mb["first"] == pytest.approx(32, abs=0.1)
    assert prof.peak_mem_mb["second"] == prof.peak_mem_mb["first"]


def test_views_and_in_place_updates_of_older_tensors_are_not_new_memory():
    old = torch.zeros(1024, 1024)
    prof = Profiler()
    with prof.phase("views"):
        old.t()[:10].add_(1)
        old.view(-1).mul_(2)
    assert prof.peak_mem_mb["views"] == 0


def test_flops_of_matrix_products_and_per_example_gradients_are_counted():
    mode = CostMode()
    with mode:
        torch.ones(30, 40) @ torch.ones(40, 50)
    assert mode.flops == 2 * 30 * 40 * 50
    w, x = torch.ones(40, 50), torch.ones(8, 40)
    with CostMode() as mode:
        g = vmap(grad(lambda w, xi: (xi @ w).square().sum()), in_dims=(None, 0))(w, x)
    assert g.shape == (8, 40, 50)
    assert mode.flops >= 2 * 2 * 8 * 40 * 50  # the forward product and the weight gradient
    assert mode.peak >= g.numel() * 4


def test_record_fields_cover_every_phase():
    prof = Profiler()
    with prof.phase("fit"):
        torch.ones(64, 64) @ torch.ones(64, 64)
    fields = prof.fields()
    for key in ("time_s", "cpu_time_s", "flops", "peak_mem_mb", "peak_rss_mb", "load_avg"):
        assert set(fields[key]) == {"fit"}, key
    assert fields["flops"]["fit"] == 2 * 64 ** 3
    assert fields["cpu_time_s"]["fit"] >= 0
    assert isinstance(fields["overloaded"], bool)


def test_overloaded_when_the_load_exceeds_the_core_count(monkeypatch):
    import tdabench.harness.engine.profiling as profiling
    monkeypatch.setattr(profiling, "load_average", lambda: 1000.0)
    prof = Profiler()
    with prof.phase("fit"):
        pass
    assert prof.load_avg["fit"] == 1000.0 and prof.overloaded


def test_excluded_wait_is_left_out_of_the_phase_time():
    prof = Profiler()
    with prof.phase("ground_truth"):
        time.sleep(0.3)
        prof.exclude(0.3)
    assert prof.time_s["ground_truth"] < 0.1


def test_warm_up_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    warm_up()
    assert torch.equal(torch.rand(3), expected)


def test_wait_for_another_process_lock_is_reported_and_nothing_is_recomputed(tmp_path):
    from filelock import FileLock

    path = tmp_path / "gt.pt"
    held = FileLock(str(path) + ".lock")
    held.acquire()
    waits, computed = [], []

    def reader():
        waits.append(load_or_compute(path, lambda: computed.append(1) or {"x": 0}, "gt",
                                     on_wait=waits.append))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.4)
    save_verified({"x": 1}, path)  # the other process finishes and releases its lock
    held.release()
    t.join(10)
    assert not computed
    assert waits[0] >= 0.3 and waits[-1] == {"x": 1}


def test_resident_peak_sees_memory_reused_from_an_earlier_phase():
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
    assert prof.peak_rss_mb["first"] > 250
    # without returning the first phase's pages, the second phase would read close to 0 MiB
    assert 150 < prof.peak_rss_mb["second"] < 400
    del pins


def test_short_resident_spike_between_samples_is_counted():
    prof = Profiler(interval=10.0)
    with prof.phase("spike"):
        a = _touch(256)
        del a
    assert prof.peak_rss_mb["spike"] == pytest.approx(256, rel=0.25)
    assert prof.peak_mem_mb["spike"] == 0  # numpy memory is not tensor memory


def test_flops_agree_with_torch_flop_counter_on_a_convolutional_net():
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 8 * 8, 4))
    x = torch.ones(5, 3, 8, 8)

    def run():
        m(x).sum().backward()
        p = {k: v.detach() for k, v in m.named_parameters()}
        vmap(grad(lambda p, xi: functional_call(m, p, (xi[None],)).sum()), in_dims=(None, 0))(p, x)

    with FlopCounterMode(display=False) as reference:
        run()
    with CostMode() as mode:
        run()
    assert mode.flops == reference.get_total_flops() > 0


def test_counting_replay_sets_flops_and_tensor_peak_but_keeps_the_timed_phase():
    prof = Profiler()
    with prof.phase("fit", count=False):
        _workload()
    timed = (prof.time_s["fit"], prof.cpu_time_s["fit"], prof.load_avg["fit"])
    assert "fit" not in prof.flops
    with prof.counting("fit"):
        time.sleep(0.05)  # the replay's own duration must not reach the record
        _workload()
    assert (prof.time_s["fit"], prof.cpu_time_s["fit"], prof.load_avg["fit"]) == timed
    assert prof.flops["fit"] == 2 * 1024 * 2048 * 2048
    assert 16 <= prof.peak_mem_mb["fit"] <= 16 + 16 + 0.1  # a and b (and the operand of the product)


def test_replay_recomputes_the_caches_its_timed_pass_computed(tmp_path):
    from tdabench.harness.core.storage import recompute_caches, record_cache_misses

    computed = []
    path, other = tmp_path / "factors.pt", tmp_path / "read.pt"
    save_verified({"x": -1}, other)
    with record_cache_misses() as misses:
        load_or_compute(path, lambda: computed.append(1) or {"x": 1}, "factors")
        load_or_compute(other, lambda: computed.append(2) or {"x": 2}, "read")
    assert misses == {str(path)} and computed == [1]
    stamp = path.stat().st_mtime_ns
    with recompute_caches(misses):
        assert load_or_compute(path, lambda: computed.append(3) or {"x": 3}, "factors") == {"x": 3}
        assert load_or_compute(other, lambda: computed.append(4) or {"x": 4}, "read") == {"x": -1}
    assert computed == [1, 3] and path.stat().st_mtime_ns == stamp
    assert load_or_compute(path, lambda: computed.append(5), "factors") == {"x": 1}
