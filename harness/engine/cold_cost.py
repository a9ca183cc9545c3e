"""The from-scratch cost of a run that read cached work.

A method's fit or score may read work an earlier run or tuning trial computed and cached (TRAK's
ensemble members, EK-FAC and K-FAC factors): its own seconds are then partly a file read, not what
its setting costs. Every cached file carries what computing it cost, in a sidecar written when it
was computed (:func:`~tdabench.harness.core.storage.read_cost`: wall and CPU seconds, and FLOPs and
tensor-level peak memory where they were counted). A run adds, per phase, the cost of the work it
read to its own and records the sum as ``cold_cost`` (``time_s``, ``cpu_time_s``, ``flops``,
``peak_mem_mb``, each per phase; a peak is the larger of the two). A phase whose reads include work
of unknown cost (cached before costs were kept) has None for that measure; ``cold_cost.unknown``
names that work. Readers (the leaderboard, the frontier, plots) show this cost, the record's own
``time_s`` beside it.

FLOPs of cached work the sidecar does not hold yet (work a tuning trial computed: trials do not
count) are counted by the run's counting replay (``cost.count=separate``), which computes that
work again (:func:`uncounted`); they are then in the run's own FLOPs, and in the sidecar for the
next run. Under ``limits.max_seconds``, which bounds the replay too, the replay does not take on
that extra work, and such FLOPs stay unknown (None).
"""

from __future__ import annotations

from tdabench.harness.core.storage import read_cost

#: record cost fields, the sidecar's key for each, and how a phase's own value and the cached
#: work's combine
_MEASURES = {"time_s": ("wall_s", sum), "cpu_time_s": ("cpu_s", sum), "flops": ("flops", sum),
             "peak_mem_mb": ("peak_mem_mb", max)}


def uncounted(reads: set[tuple[str, str]]) -> set[str]:
    """The paths of cached work read (``reads``: (path, description) pairs) whose cost holds no
    FLOPs: the counting replay computes them again."""
    return {path for path, _ in reads if "flops" not in (read_cost(path) or {})}


def cold_cost(fields: dict, reads_by_phase: dict[str, set[tuple[str, str]]], recounted: set[str]) -> dict:
    """The ``cold_cost`` of a run whose profiler ``fields`` (``time_s``, ``cpu_time_s``, ``flops``,
    ``peak_mem_mb`` per phase) were measured while it read the cached work ``reads_by_phase``
    (phase -> (path, description) pairs; work the run computed itself left out). ``recounted``: the
    paths its counting replay computed again (their FLOPs are in the run's own)."""
    out: dict = {name: {} for name in _MEASURES}
    unknown: set[str] = set()
    for phase, reads in reads_by_phase.items():
        costs = [(path, what, read_cost(path) or {}) for path, what in sorted(reads)]
        for name, (key, combine) in _MEASURES.items():
            own = (fields.get(name) or {}).get(phase)
            parts = [c.get(key) for path, _, c in costs if not (name == "flops" and path in recounted)]
            if own is None or (combine is sum and any(v is None for v in parts)):
                out[name][phase] = None
                if name == "time_s":
                    unknown.update(what for _, what, c in costs if c.get("wall_s") is None)
                continue
            value = combine([own, *[v for v in parts if v is not None]])
            out[name][phase] = round(value, 4) if isinstance(value, float) else value
    if unknown:
        out["unknown"] = sorted(unknown)
    return out
