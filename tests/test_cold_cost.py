"""Costs that stay true after reruns.

Cached work carries what computing it cost (a sidecar written when it was computed); a run that
reads it counts it (``cold_cost``); the leaderboard and the frontier show the from-scratch cost and
never replace a cold cost by a warm one."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tdabench.harness.core.storage import (
    load_or_compute,
    read_cost,
    recompute_caches,
    record_cache_reads,
)
from tdabench.harness.engine.cold_cost import cold_cost, uncounted
from tdabench.harness.engine.profiling import Profiler
from tdabench.harness.read.frontier import points
from tdabench.harness.read.leaderboard import build
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import fit_from_cache, row_cost, run_cost


def test_cached_work_keeps_what_computing_it_cost(tmp_path):
    path = tmp_path / "m.pt"

    def compute():
        x = torch.randn(64, 64)
        return x @ x

    with record_cache_reads() as reads:
        load_or_compute(path, compute, "ensemble member 1")
    cost = read_cost(path)
    assert not reads and cost["what"] == "ensemble member 1" and cost["wall_s"] >= 0 and "flops" not in cost
    assert uncounted({(str(path), "ensemble member 1")}) == {str(path)}
    # a replay under counting computes it again, once, and adds its FLOPs to the sidecar
    calls = []
    prof = Profiler()
    with recompute_caches([path]), prof.counting("fit"):
        calls.append(load_or_compute(path, compute, "ensemble member 1"))
        load_or_compute(path, lambda: calls.append("again"), "ensemble member 1")
    assert "again" not in calls and len(calls) == 1
    assert read_cost(path)["flops"] == 2 * 64 ** 3 == prof.flops["fit"]
    assert read_cost(path)["wall_s"] == cost["wall_s"]  # the timed computation's seconds stay
    assert uncounted({(str(path), "ensemble member 1")}) == set()


def test_cold_cost_adds_the_cached_work_to_the_runs_own(tmp_path):
    a, b, old = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "old.pt"
    for p, wall, flops in ((a, 2.0, 100), (b, 3.0, 50)):
        p.write_bytes(b"x")
        p.with_name(p.name + ".cost.json").write_text(json.dumps(
            {"what": p.stem, "wall_s": wall, "cpu_s": wall / 2, "flops": flops, "peak_mem_mb": 7.0}))
    fields = {"time_s": {"fit": 0.5, "score": 1.0}, "cpu_time_s": {"fit": 0.4, "score": 0.9},
              "flops": {"fit": 10, "score": 20}, "peak_mem_mb": {"fit": 5.0, "score": 9.0}}
    out = cold_cost(fields, {"fit": {(str(a), "a"), (str(b), "b")}, "score": set()}, recounted={str(b)})
    assert out["time_s"] == {"fit": 5.5, "score": 1.0} and out["cpu_time_s"] == {"fit": 2.9, "score": 0.9}
    assert out["flops"] == {"fit": 110, "score": 20}  # b's FLOPs were counted again in the replay
    assert out["peak_mem_mb"] == {"fit": 7.0, "score": 9.0} and "unknown" not in out
    old.write_bytes(b"x")  # cached before costs were kept
    out = cold_cost(fields, {"fit": {(str(old), "ekfac factors")}}, recounted=set())
    assert out["time_s"]["fit"] is None and out["unknown"] == ["ekfac factors"]


def _rec(run_id, fit, cached=None, cold=None, lds=0.5):
    raw = {"run_id": run_id, "task": "digits_mlp", "method": "trak", "status": "ok", "lds": lds,
           "lds_ci": [lds - 0.1, lds + 0.1], "lds_per_query": [lds] * 5, "config_hash": run_id,
           "gt_key": "digits_mlp-aaaaaaaaaaaa", "n_train": 200, "gt_subsets": 20, "gt_seeds": 2,
           "config": {"task": {"name": "digits_mlp"}, "method": {"name": "trak", "seed": 0},
                      "gt": {"subsets": 20, "seeds": 2, "alpha": 0.5}},
           "time_s": {"fit": fit, "score": 0.2}, "cpu_time_s": {"fit": fit, "score": 0.2},
           "flops": {"fit": int(fit * 1e9), "score": 10}, "peak_mem_mb": {"fit": 3.0, "score": 1.0}}
    if cached:
        raw["cached_work"] = cached
    if cold:
        raw["cold_cost"] = cold
    return RunRecord.from_dict(raw)


def test_a_rerun_that_read_the_cache_never_replaces_the_cold_cost():
    cold = _rec("cold", 1.5)
    known = _rec("known", 0.1, ["ensemble member 1"], {"time_s": {"fit": 1.6, "score": 0.2},
                                                       "cpu_time_s": {"fit": 1.6, "score": 0.2},
                                                       "flops": {"fit": 1_500_000_000, "score": 10},
                                                       "peak_mem_mb": {"fit": 3.0, "score": 1.0}})
    unknown = _rec("unknown", 0.1, ["ensemble member 1"])
    assert run_cost(known)["fit_s"] == 1.6 and run_cost(known)["warm_s"] == pytest.approx(0.3)
    assert not fit_from_cache(known) and fit_from_cache(unknown)
    # the newest record is shown; its cost, a read of work of unknown cost, gives way to the cold run's
    assert row_cost(unknown, [cold, unknown])["fit_s"] == 1.5
    assert row_cost(unknown, [cold, unknown])["warm_s"] == pytest.approx(0.3)
    assert row_cost(unknown, [unknown])["from_cache"]
    # FLOPs of read work nobody counted are unknown, never the read's own
    uncounted_flops = _rec("u", 0.1, ["ensemble member 1"], {**known.cold_cost, "flops": {"fit": None, "score": 10}})
    assert run_cost(uncounted_flops)["flops"] is None and run_cost(uncounted_flops)["fit_s"] == 1.6
    df, _, gts = build([cold, unknown])
    assert df.loc[0, "fit_s"] == 1.5 and df.loc[0, "warm_s"] == pytest.approx(0.3) and df.loc[0, "runs"] == 2
    assert not gts[df.loc[0, "ground_truth"]].get("cached_fits")
    pts = points([cold, unknown])
    (line,) = next(iter(pts.values())).values()
    assert line[0].s == pytest.approx(1.7) and not line[0].cached_fit


def test_the_frontier_and_its_pareto_flag_use_the_cost_from_scratch():
    from tdabench.harness.read.frontier import table

    def rec(method, lds, cpu, params=None, cold_cpu=None):
        raw = _rec(f"{method}-{lds}", cpu, ["ekfac factors"] if cold_cpu else None,
                   {"time_s": {"fit": cold_cpu, "score": 0.2}, "cpu_time_s": {"fit": cold_cpu, "score": 0.2},
                    "flops": {"fit": 1, "score": 1}, "peak_mem_mb": {"fit": 3.0, "score": 1.0}} if cold_cpu else None,
                   lds).as_dict()
        raw["method"] = raw["config"]["method"]["name"] = method
        raw["config"]["method"].update(params or {})
        return RunRecord.from_dict(raw)

    records = [rec("trak", 0.7, 1.0), rec("trak", 0.5, 0.5, {"models": 2}),
               rec("ekfac", 0.6, 0.01, cold_cpu=5.0), rec("ekfac", 0.55, 0.01, {"damping": 1.0}, cold_cpu=5.0)]
    df = table(records).set_index("method")
    assert df.loc["ekfac", "cpu_s"] == pytest.approx(5.2) and not df.loc["ekfac", "pareto"]
    assert pd.isna(df.loc["ekfac", "cached_fits"])  # a known cost is counted, not flagged
