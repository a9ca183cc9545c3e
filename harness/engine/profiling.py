"""Per-phase cost: wall time, CPU time, FLOPs, peak tensor memory, peak resident set, load.

A phase's cost must not depend on where its run sits in a sweep (alone in a fresh process, first
or last of many, in a launcher worker). Three choices make it so:

- **Tensor-level peak memory** (``peak_mem_mb``, MiB). While a phase runs, a dispatch mode
  (:class:`CostMode`) sees every ATen operator, including those of autograd's backward pass and of
  ``torch.func`` transforms, and keeps the bytes of every tensor storage that an operator
  allocated during the phase until that storage is freed. The phase's peak is the high-water mark
  of those live bytes: the order-independent analogue of CUDA's ``max_memory_allocated`` after a
  reset (which is what is read on a GPU). It does not see memory that earlier work freed and the
  allocator kept, Python objects, imported code, or a kernel's internal scratch buffers; tensors
  that existed before the phase are not counted, and tensors created outside the dispatcher
  (``torch.from_numpy``, storages read by ``torch.load``) are not seen.
- **An untimed warm-up** (:func:`warm_up`) of the machinery every method shares (``torch.func``
  transforms, autograd, linear algebra, convolutions, the dispatch mode itself), once per process
  before the first measured phase, so the first method to use it does not pay for the others.
- **Resident set, kept apart** (``peak_rss_mb``, MiB): the process's resident set size above the
  phase's start (the kernel's high-water mark after a reset, plus a sampling thread), after freed
  heap pages are handed back to the kernel. It includes everything the process touches (imports,
  allocator slack) and therefore depends on what ran before; it is recorded for reference only.

- **Counting kept out of the timed phases.** The dispatch mode costs one Python call per operator
  (up to +80% wall time for the BIF's SGLD chains on an MLP). With ``cost.count: separate`` (the
  default) fit and score are timed without it, then replayed untimed under it (a copy of the method
  as before fit, the same random state, caches the timed pass computed computed again, once each)
  to count FLOPs and tensor-level peak: twice as long, no counting overhead in the times.
  ``cost.count: inline`` counts during the timed phases (one pass; inflated times). The harness's
  own phases (prepare, ground_truth, lds) are always counted inline. Each computation of cached
  work inside a counted phase is also measured alone (:func:`cached_work_meter`) and its FLOPs and
  peak are kept beside the cached file, so a run that later reads it counts it at what it cost.

FLOPs (``flops``) are counted by the same dispatch mode with the shape formulas of
:mod:`torch.utils.flop_counter` (matrix products, convolutions, attention: 2 FLOPs per
multiply-add; element-wise operators count 0), without decomposing operators, so counting adds one
Python call per operator and nothing else. ``cpu_time_s`` is the process's CPU time (all threads)
in the phase, ``time_s`` its wall time, and ``load_avg`` the machine's one-minute load average
(the larger of its values at the start and the end of the phase); a phase measured while the load
exceeded the machine's core count makes the record ``overloaded``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import threading
import time
import weakref
from contextlib import contextmanager
from functools import partial

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from tdabench.harness.core.storage import COMPUTE_METERS

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


_FAULT_COUNTS: dict[str, int] = {}


def _inject_fault(phase: str) -> None:
    """Fault injection for the reliability suite: ``TDABENCH_FAULT=<phase>:<signal>[:<n>]`` makes
    the process send itself that signal (INT, TERM, KILL) when the phase starts for the n-th time
    in the process (the first by default), so a sweep can be stopped at a chosen pairing."""
    name, _, rest = os.environ.get("TDABENCH_FAULT", "").partition(":")
    if name != phase:
        return
    sig, _, nth = rest.partition(":")
    _FAULT_COUNTS[phase] = _FAULT_COUNTS.get(phase, 0) + 1
    if _FAULT_COUNTS[phase] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, "SIG" + (sig or "INT")))


def cpu_count() -> int:
    """Logical cores of the machine (the load average is compared with it)."""
    return os.cpu_count() or 1


def load_average() -> float | None:
    """The machine's one-minute load average (runnable and waiting tasks), None where unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _shape(x):
    """Tensors (also inside lists and tuples) replaced by their shapes, for the FLOP formulas."""
    if isinstance(x, torch.Tensor):
        return x.shape
    if isinstance(x, (list, tuple)):
        return type(x)(_shape(v) for v in x)
    return x


class CostMode(TorchDispatchMode):
    """Counts FLOPs and live tensor bytes of the ATen operators run inside it (CPU or GPU).

    ``flops``: FLOPs of every operator with a formula in :mod:`torch.utils.flop_counter`.
    ``live`` / ``peak``: bytes of tensor storages allocated inside the mode and still alive, and
    their high-water mark. A storage is counted from the first operator that returns it as a new
    (non-aliasing) output until Python or autograd frees it; a later operator that grows it
    (``out=``, ``resize_``) updates its size.
    """

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, list] = {}  # id(storage) -> [weak reference, bytes]
        self._ops: dict = {}  # operator -> (FLOP formula or None, whether its outputs are new)

    def _release(self, key: int, _ref) -> None:
        entry = self._sizes.pop(key, None)
        if entry is not None:
            self.live -= entry[1]

    def _op(self, func) -> tuple:
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None and hasattr(formula, "__wrapped__"):
            # a formula of shapes: call it with shapes directly instead of through its pytree
            # wrapper, which would cost more than most small operators themselves
            raw = formula.__wrapped__
            formula = lambda *args, out_val=None, **kwargs: raw(  # noqa: E731
                *map(_shape, args), **{k: _shape(v) for k, v in kwargs.items()}, out_shape=_shape(out_val))
        info = self._ops[func] = (formula, all(r.alias_info is None for r in func._schema.returns))
        return info

    def _track(self, t: torch.Tensor, fresh: bool) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return
        key = id(st)
        entry = self._sizes.get(key)
        if entry is None:
            if not fresh:
                return  # a view or in-place result of storage allocated elsewhere
            n = st.nbytes()
            self._sizes[key] = [weakref.ref(st, partial(self._release, key)), n]
            self.live += n
            if self.live > self.peak:
                self.peak = self.live
        elif fresh is False:
            n = st.nbytes()  # out= and in-place operators may have grown it
            if n != entry[1]:
                self.live += n - entry[1]
                entry[1] = n
                if self.live > self.peak:
                    self.peak = self.live

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **kwargs) if kwargs else func(*args)
        formula, fresh = self._ops.get(func) or self._op(func)
        if formula is not None:
            self.flops += int(formula(*args, **(kwargs or {}), out_val=out))
        if type(out) is torch.Tensor and fresh:  # the common case, inlined
            st = out.untyped_storage()
            key = id(st)
            if key not in self._sizes:
                n = st.nbytes()
                self._sizes[key] = [weakref.ref(st, partial(self._release, key)), n]
                self.live += n
                if self.live > self.peak:
                    self.peak = self.live
        elif isinstance(out, torch.Tensor):
            self._track(out, fresh)
        elif isinstance(out, (tuple, list)):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._track(t, fresh)
        return out


#: the dispatch modes counting now, innermost last
_COUNTING: list[CostMode] = []


@contextmanager
def _counting(mode: CostMode):
    _COUNTING.append(mode)
    try:
        with mode:
            yield
    finally:
        _COUNTING.remove(mode)


@contextmanager
def cached_work_meter():
    """Measures, while a phase is counted, the FLOPs and tensor-level peak (MiB) of one
    computation of cached work (:data:`~tdabench.harness.core.storage.COMPUTE_METERS`): a dict,
    filled on exit, empty when nothing is counted."""
    out: dict = {}
    mode = _COUNTING[-1] if _COUNTING else None
    if mode is None:
        yield out
        return
    flops0, live0, peak0 = mode.flops, mode.live, mode.peak
    mode.peak = mode.live
    try:
        yield out
    finally:
        out["flops"] = mode.flops - flops0
        out["peak_mem_mb"] = round(max(mode.peak - live0, 0) / MIB, 2)
        mode.peak = max(peak0, mode.peak)


COMPUTE_METERS.append(cached_work_meter)

_WARMED: set[str] = set()


def warm_up(device: str = "cpu") -> None:
    """Run, untimed and once per process and device, the machinery that every method shares:
    ``torch.func`` (``vmap``, ``grad``, ``jacrev``, ``hessian``, ``functional_call``), autograd,
    ``einsum``, linear algebra (``eigh``, ``solve``, ``cholesky``), 2-D convolutions, and
    :class:`CostMode`.

    Lazy imports and first-call set-up of these then fall on no measured phase, so a method's cost
    does not depend on whether another method used them first. The global random state is left
    as it was.
    """
    if device in _WARMED:
        return
    _warm_up(device)
    # what imports and the warm-up made lives as long as the process: kept out of the garbage
    # collector's passes, the full collections before each phase take milliseconds, not tenths
    gc.freeze()


def _warm_up(device: str) -> None:
    from torch.func import functional_call, grad, hessian, jacrev, vmap

    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), CostMode():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(12, 3)).to(dev)
        x, y = torch.randn(4, 2, 4, 4, device=dev), torch.tensor([0, 1, 2, 0], device=dev)
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, xb, yb):
            return torch.nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

        vmap(grad(lambda p, xi, yi: loss(p, xi[None], yi[None])), in_dims=(None, 0, 0))(params, x, y)
        vmap(jacrev(lambda p, xi: functional_call(model, p, (xi[None],))[0]), in_dims=(None, 0))(params, x)
        hessian(lambda w: (w.sin() * w).sum())(torch.randn(5, dtype=torch.float64, device=dev))
        model.zero_grad()
        loss(dict(model.named_parameters()), x, y).backward()
        model.zero_grad()
        a = torch.randn(6, 6, dtype=torch.float64, device=dev)
        spd = a @ a.T + torch.eye(6, dtype=torch.float64, device=dev)
        torch.linalg.eigh(spd)
        torch.linalg.solve(spd, torch.ones(6, 2, dtype=torch.float64, device=dev))
        torch.linalg.cholesky(spd)
        torch.einsum("ij,jk->ik", spd.float(), spd.float())
        torch.nn.functional.unfold(x, 3)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    release_free_memory()
    _WARMED.add(device)


class Profiler:
    """Collects the cost of each named phase: ``time_s``, ``cpu_time_s``, ``flops``,
    ``peak_mem_mb`` (tensor-level, order-independent), ``peak_rss_mb`` and ``load_avg``.

    ``count=False`` measures time and memory from the process alone (resident set; no FLOPs and
    no tensor-level peak), for code outside PyTorch.

    >>> prof = Profiler()
    >>> with prof.phase("fit"):
    ...     pass
    >>> sorted(prof.time_s)
    ['fit']
    """

    def __init__(self, device: str = "cpu", interval: float = 0.01, count: bool = True):
        self.device = device
        self.interval = interval
        self.count = count
        self.time_s: dict[str, float] = {}
        self.cpu_time_s: dict[str, float] = {}
        self.flops: dict[str, int] = {}
        self.peak_mem_mb, self.peak_rss_mb = {}, {}  # dict[str, float]: MiB per phase
        self.load_avg: dict[str, float | None] = {}
        self.excluded_s: dict[str, float] = {}
        self.current: str | None = None

    @property
    def on_gpu(self) -> bool:
        """Whether the phases run on a visible CUDA device (peaks from its allocator statistics)."""
        return self.device.startswith("cuda") and torch.cuda.is_available()

    @property
    def overloaded(self) -> bool:
        """Whether any measured phase ran while the load average exceeded the core count."""
        return any(v is not None and v > cpu_count() for v in self.load_avg.values())

    def exclude(self, seconds: float) -> None:
        """Take ``seconds`` (for example a wait for another process) out of the current phase's
        wall time."""
        if self.current is not None:
            self.excluded_s[self.current] = self.excluded_s.get(self.current, 0.0) + seconds

    @contextmanager
    def phase(self, name: str, count: bool | None = None):
        """Measure the block as phase ``name``; ``count`` (default: the profiler's) says whether
        FLOPs and the tensor-level peak are counted in it (else :meth:`counting` adds them later
        and ``peak_mem_mb`` holds the resident-set peak meanwhile)."""
        count = self.count if count is None else count
        self.current = name
        _inject_fault(name)
        cuda = self.on_gpu
        release_free_memory()
        hwm_reset = _reset_high_water_mark()
        start_rss = psutil.Process().memory_info().rss
        load0 = load_average()
        if cuda:
            dev = torch.device(self.device)  # the run's GPU, not the current one
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            start_cuda = torch.cuda.memory_allocated(dev)
        mode = CostMode() if count else None
        # the kernel's high-water mark, once reset, sees every peak: sample only where it cannot
        # be reset (the sampling thread costs CPU time inside the phase)
        sampler = _RssSampler(self.interval if not hwm_reset else 3600.0)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with sampler:
                if mode is None:
                    yield self
                else:
                    with _counting(mode):
                        yield self
        finally:
            if cuda:
                torch.cuda.synchronize(dev)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            hwm = _high_water_mark() if hwm_reset else None
            rss = (max(sampler.peak, hwm or 0) - start_rss) / MIB
            self.peak_rss_mb[name] = round(max(rss, 0.0), 2)
            if cuda:
                peak = (torch.cuda.max_memory_allocated(dev) - start_cuda) / MIB
            elif mode is not None:
                peak = mode.peak / MIB
            else:
                peak = rss
            self.peak_mem_mb[name] = round(max(peak, 0.0), 2)
            self.time_s[name] = round(max(wall - self.excluded_s.get(name, 0.0), 0.0), 4)
            self.cpu_time_s[name] = round(cpu, 4)
            if mode is not None:
                self.flops[name] = mode.flops
            loads = [v for v in (load0, load_average()) if v is not None]
            self.load_avg[name] = round(max(loads), 2) if loads else None

    @contextmanager
    def counting(self, name: str):
        """Count FLOPs and the tensor-level peak of the block as those of phase ``name`` (an
        untimed replay of the phase's work): ``flops`` and ``peak_mem_mb`` of ``name`` are set,
        its times, resident set and load are left as the timed phase measured them."""
        release_free_memory()
        mode = CostMode()
        with _counting(mode):
            yield self
        self.flops[name] = mode.flops
        if not self.on_gpu:
            self.peak_mem_mb[name] = round(mode.peak / MIB, 2)  # on a GPU the timed phase's
            # allocator statistics stand: they cost nothing to read

    def fields(self) -> dict:
        """The record's cost fields: per-phase dicts and the top-level ``overloaded`` flag."""
        return {"time_s": self.time_s, "cpu_time_s": self.cpu_time_s, "flops": self.flops,
                "peak_mem_mb": self.peak_mem_mb, "peak_rss_mb": self.peak_rss_mb,
                "load_avg": self.load_avg, "overloaded": self.overloaded}
