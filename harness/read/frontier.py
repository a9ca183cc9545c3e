"""The cost-quality frontier: each method's LDS against its cost over the settings it ran.

On one ground truth, a method's *points* are its leaderboard rows (one per setting, the shown
``ok`` record of each) with LDS and its 95% interval (``lds``, ``lds_ci``) and cost on three axes:
``cpu_s``, fit + score CPU seconds (``cpu_time_s``: what a run costs, whatever else the machine
did meanwhile), ``s``, fit + score wall seconds (``time_s``), and ``flops``, fit + score FLOPs
(``flops``). Plots use CPU seconds and FLOPs (:data:`PLOT_AXES`), never the wall seconds of a
possibly loaded machine. A method's
*curve* on an axis joins its Pareto-efficient points (no cheaper-or-equal setting has a higher
LDS) linearly in log-cost, and stays flat from its best point up to its costliest setting: the
best LDS the method reaches at that cost. Below its cheapest or above its costliest setting the
curve is undefined ("outside range"): nothing is extrapolated.

``frontier.csv`` has one row per method (per sweep when several folders are compared) and ground
truth, for every ground truth where some method ran at two or more settings:

* ``settings``, ``best_lds``, ``best_setting``, ``cpu_s_min`` / ``cpu_s_max``, ``s_min`` /
  ``s_max``, ``flops_min`` / ``flops_max``: what was measured; ``cpu_s``, ``peak_mem_mb`` and
  ``flops``: the cost of the best setting; ``pareto``: whether that setting is on the Pareto front
  of every method's settings on the ground truth in CPU seconds (no setting of any method costs
  no more and has a higher LDS); ``cached_fits``: settings whose cost is still partly a file
  read (work cached before costs were kept). Every cost is what the setting costs from scratch:
  a run that read work an earlier run or trial cached (EK-FAC's factors, TRAK's members) counts
  it at what computing it cost, and of repeated runs of a setting a read never replaces the cost
  of the run that computed the work (:func:`~tdabench.harness.read.record_view.row_cost`).
* ``ekfac_s`` / ``ekfac_flops``: EK-FAC's cost on that ground truth (its row at the default
  setting, else its costliest row; ``ekfac_row`` says which), and ``lds_at_ekfac_s`` (with
  ``_low`` / ``_high``, the curve through the interval bounds) and ``lds_at_ekfac_flops``: the
  method's curve at that cost; the ``_note`` columns say "outside range" or "no ekfac row".
* ``lds_90pct``: 90% of the best LDS of any row on the ground truth; ``s_to_90pct`` /
  ``flops_to_90pct``: the cost at which the method's curve first reaches it, interpolated in
  log-cost between the last setting below and the first at or above it ("not reached" in the
  note when no setting reaches it; a method whose cheapest setting already reaches it reports
  that setting's cost, noted as an upper bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tdabench.harness.core.storage import atomic_write_bytes
from tdabench.harness.read.leaderboard import chosen_records, ground_truths
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import row_cost

#: the cost axes: fit + score CPU seconds, wall seconds and FLOPs
AXES = ("cpu_s", "s", "flops")
#: the axes plots use: never wall seconds, which a loaded machine inflates
PLOT_AXES = ("cpu_s", "flops")
#: the method whose fit + score cost the other methods are compared at
REFERENCE = "ekfac"
#: fraction of the best LDS on a ground truth that ``*_to_90pct`` asks each method to reach
TARGET_FRACTION = 0.9


@dataclass(frozen=True)
class Point:
    """One setting of a method on one ground truth (``setting``: its leaderboard setting, or
    "defaults"): LDS, its 95% interval, costs from scratch (the leaderboard row's,
    :func:`~tdabench.harness.read.record_view.row_cost`; None when the record has no such
    measurement) and whether that cost is still partly a read of cached work of unknown cost
    (factors or ensemble members cached before costs were kept: it then understates the setting)."""
    setting: str
    lds: float
    low: float
    high: float
    s: float | None
    flops: float | None
    cached_fit: bool = False  # the cost is partly a read of cached work of unknown cost
    cpu_s: float | None = None
    peak_mem_mb: float | None = None

    def cost(self, axis: str) -> float | None:
        value = getattr(self, axis)
        return value if value is not None and value > 0 else None


def line_name(method: str, sweep: str | None) -> str:
    """A method's name in the frontier, with ``@sweep`` when several folders are compared."""
    return method + (f" @{sweep}" if sweep else "")


def points(records: list[RunRecord]) -> dict[str, dict[str, list[Point]]]:
    """Ground-truth label -> line (method, @sweep) -> its ok points, cheapest first (seconds)."""
    out: dict[str, dict[str, list[Point]]] = {}
    for (gt, _, method, setting, sweep), (rec, recs) in chosen_records(records).items():
        if not rec.is_ok or rec.lds is None:
            continue
        lds = float(rec.lds)
        low, high = rec.lds_ci or [lds, lds]
        cost = row_cost(rec, recs)
        out.setdefault(gt, {}).setdefault(line_name(method, sweep), []).append(
            Point(setting or "defaults", lds, float(low), float(high), cost["total_s"], cost["flops"],
                  cost["from_cache"], cost["cpu_s"], cost["peak_mem_mb"]))
    for lines in out.values():
        for pts in lines.values():
            pts.sort(key=lambda p: (p.s is None, p.s or 0.0))
    return out


def frontier_ground_truths(pts: dict[str, dict[str, list[Point]]]) -> list[str]:
    """Ground truths on which some method ran at two or more settings."""
    return sorted(gt for gt, lines in pts.items() if any(len(p) >= 2 for p in lines.values()))


def pareto(pts: list[Point], axis: str) -> list[Point]:
    """The points with a cost on ``axis`` that no cheaper-or-equal point beats on LDS, cheapest
    first (strictly increasing LDS)."""
    front: list[Point] = []
    for p in sorted((p for p in pts if p.cost(axis) is not None), key=lambda p: (p.cost(axis), -p.lds)):
        if not front or p.lds > front[-1].lds:
            front.append(p)
    return front


def _between(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    """Linear interpolation in log x."""
    if x1 == x0:
        return y1
    return y0 + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * (y1 - y0)


def lds_at(pts: list[Point], cost: float, axis: str) -> tuple[float | None, float | None, float | None, str]:
    """(LDS, low, high, note): the method's curve (see the module docstring) at ``cost`` on
    ``axis``; None and a note starting "outside range" below its cheapest or above its costliest
    setting."""
    costs = [p.cost(axis) for p in pts if p.cost(axis) is not None]
    unit = {"s": "s", "cpu_s": "CPU s"}.get(axis, "FLOPs")
    if not costs:
        return None, None, None, f"outside range: no setting has a {unit} measurement"
    lo, hi = min(costs), max(costs)
    if not lo * (1 - 1e-9) <= cost <= hi * (1 + 1e-9):
        return None, None, None, f"outside range: measured from {lo:.4g} to {hi:.4g} {unit}"
    front = pareto(pts, axis)
    for a, b in zip(front, front[1:]):
        if a.cost(axis) <= cost <= b.cost(axis):
            args = (cost, a.cost(axis), b.cost(axis))
            return (_between(*args, a.lds, b.lds), _between(*args, a.low, b.low),
                    _between(*args, a.high, b.high), f"interpolated between [{a.setting}] and [{b.setting}]")
    best = max((p for p in front if p.cost(axis) <= cost * (1 + 1e-9)), key=lambda p: p.lds)
    return best.lds, best.low, best.high, f"at [{best.setting}]"


def cost_to_reach(pts: list[Point], target: float, axis: str) -> tuple[float | None, str]:
    """(cost, note): where the method's curve on ``axis`` first reaches LDS ``target``,
    interpolated in log-cost; None with a note starting "not reached" when no setting does."""
    front = pareto(pts, axis)
    for i, p in enumerate(front):
        if p.lds >= target:
            if i == 0:
                return p.cost(axis), f"reached at its cheapest setting [{p.setting}] (an upper bound)"
            a = front[i - 1]
            t = (target - a.lds) / (p.lds - a.lds)  # a.lds < target <= p.lds on the front
            log_cost = math.log(a.cost(axis)) + t * (math.log(p.cost(axis)) - math.log(a.cost(axis)))
            return math.exp(log_cost), f"interpolated between [{a.setting}] and [{p.setting}]"
    best = max((p.lds for p in front), default=None)
    return None, "not reached" + (f" (its best LDS {best:.4g})" if best is not None else " (no measurement)")


def reference_point(lines: dict[str, list[Point]]) -> tuple[Point | None, str]:
    """EK-FAC's point on a ground truth: its row at the default setting, else its costliest row."""
    rows = [p for name, pts in sorted(lines.items()) if name.split(" @")[0] == REFERENCE for p in pts]
    if not rows:
        return None, ""
    default = [p for p in rows if p.setting == "defaults"]
    p = default[0] if default else max(rows, key=lambda p: p.s or 0.0)
    which = "default setting" if default else f"[{p.setting}] (no row at the default setting: its costliest)"
    return p, which + ("; it read cached work of unknown cost, so its cost is partly a file read" if p.cached_fit
                       else "")


def table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per method and ground truth (see the module docstring for the columns)."""
    pts = points(records)
    gts = ground_truths(records)
    rows = []
    for gt in frontier_ground_truths(pts):
        lines = pts[gt]
        ref, ref_row = reference_point(lines)
        best_all = max(p.lds for line in lines.values() for p in line)
        target = TARGET_FRACTION * best_all if best_all > 0 else None
        front = pareto([p for line in lines.values() for p in line], "cpu_s")
        for name, line in sorted(lines.items()):
            # of equal LDS the cheapest (the same setting chosen under several caps is one point)
            best = max(line, key=lambda p: (p.lds, -(p.cpu_s if p.cpu_s is not None else math.inf)))
            row = {"ground_truth": gt, "task": (gts.get(gt) or {}).get("task"), "method": name,
                   "settings": len(line), "best_lds": best.lds, "best_setting": best.setting,
                   "cached_fits": " ".join(f"[{p.setting}]" for p in line if p.cached_fit) or None,
                   "cpu_s": best.cpu_s, "peak_mem_mb": best.peak_mem_mb, "flops": best.flops,
                   "pareto": any(p is best for p in front)}
            for axis in AXES:
                costs = [p.cost(axis) for p in line if p.cost(axis) is not None]
                row[f"{axis}_min"], row[f"{axis}_max"] = (min(costs), max(costs)) if costs else (None, None)
            row["ekfac_row"] = ref_row or None
            for axis in AXES:
                key = f"lds_at_ekfac_{axis}"
                ref_cost = ref.cost(axis) if ref is not None else None
                row[f"ekfac_{axis}"] = ref_cost
                if ref is None:
                    value, low, high, note = None, None, None, f"no {REFERENCE} row on this ground truth"
                elif ref_cost is None:
                    value, low, high, note = None, None, None, f"the {REFERENCE} row has no {axis} measurement"
                else:
                    value, low, high, note = lds_at(line, ref_cost, axis)
                row.update({key: value, f"{key}_low": low, f"{key}_high": high, f"{key}_note": note})
            row["lds_90pct"] = target
            for axis in AXES:
                cost, note = (cost_to_reach(line, target, axis) if target is not None
                              else (None, "not reached: no positive LDS on this ground truth"))
                row[f"{axis}_to_90pct"], row[f"{axis}_to_90pct_note"] = cost, note
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["ground_truth", "task", "method", "settings", "best_lds", "best_setting", "cached_fits", "cpu_s",
           "peak_mem_mb", "flops", "pareto", "cpu_s_min", "cpu_s_max", "s_min", "s_max",
           "flops_min", "flops_max", "ekfac_row", "ekfac_cpu_s", "lds_at_ekfac_cpu_s", "lds_at_ekfac_cpu_s_low",
           "lds_at_ekfac_cpu_s_high", "lds_at_ekfac_cpu_s_note", "ekfac_s", "lds_at_ekfac_s", "lds_at_ekfac_s_low",
           "lds_at_ekfac_s_high", "lds_at_ekfac_s_note", "ekfac_flops", "lds_at_ekfac_flops",
           "lds_at_ekfac_flops_low", "lds_at_ekfac_flops_high", "lds_at_ekfac_flops_note", "lds_90pct",
           "cpu_s_to_90pct", "cpu_s_to_90pct_note", "s_to_90pct", "s_to_90pct_note", "flops_to_90pct",
           "flops_to_90pct_note"]


def write(records: list[RunRecord], out: str | Path) -> Path | None:
    """Write ``frontier.csv`` into ``out`` when some method ran at two or more settings on a
    ground truth; returns its path, else None (nothing written)."""
    df = table(records)
    if df.empty:
        return None
    path = Path(out) / "frontier.csv"
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6g").encode())
    return path
