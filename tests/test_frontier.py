"""The cost-quality frontier: cost ladders and frontier.level, frontier.csv on synthetic records,
the frontier plot, and one tiny `+sweep=frontier` run end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tdabench.harness.core.registry import METHODS
from tdabench.harness.engine.cli import precheck
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.ladder import LevelBeyondLadder, apply_level, ladder_problems, rung
from tdabench.harness.engine.run import config_hash, prepare
from tdabench.harness.read.frontier import Point, cost_to_reach, lds_at, pareto, table
from tdabench.harness.read.leaderboard_cli import main as leaderboard_main
from tdabench.harness.read.record import RunRecord

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ ladders and frontier.level --
@pytest.mark.parametrize("name", METHODS.names())
def test_every_ladder_names_real_parameters_with_valid_values(name):
    cls = METHODS.get(name)
    assert ladder_problems(cls) == []
    assert 0 <= len(cls.cost_ladder) <= 6


def test_every_rung_passes_the_checks_on_the_default_task(tmp_path):
    """Each rung is a valid setting on digits_mlp: prepare() validates the config and the pairing
    (the method's check()) without training anything."""
    for name in METHODS.names():
        for level in range(len(METHODS.get(name).cost_ladder)):
            cfg = compose([f"method={name}", f"frontier.level={level}", f"cache_dir={tmp_path}",
                           f"results_dir={tmp_path / 'r'}"])
            task, method = prepare(cfg)
            assert task.name == "digits_mlp" and method.name == name
            assert all(cfg["method"][k] == v for k, v in rung(METHODS.get(name), level).items())
    assert not list(tmp_path.rglob("*.pt"))


def test_the_main_methods_have_ladders():
    for name in ("bif", "trak", "ekfac", "kfac", "source", "magic"):
        assert len(METHODS.get(name).cost_ladder) >= 3, name
    assert METHODS.get("grad_dot").cost_ladder == ()


def test_frontier_sweep_covers_every_rung_of_its_methods():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tdabench.harness.engine.compose import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["+sweep=frontier"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    methods = params["method"].split(",")
    levels = [int(v) for v in str(params["frontier.level"]).split(",")]
    assert {"bif", "trak", "ekfac"} <= set(methods) <= set(METHODS.names())
    assert levels == list(range(max(len(METHODS.get(m).cost_ladder) for m in methods)))
    assert cfg.frontier.level is None  # set per job by the sweep


def test_level_selects_the_rung_over_task_and_class_defaults():
    base = compose(["method=bif"])
    assert (base["method"]["chains"], base["method"]["draws"]) == (8, 400)  # digits_mlp's default
    for level, settings in enumerate(METHODS.get("bif").cost_ladder):
        cfg = compose(["method=bif", f"frontier.level={level}"])
        assert {k: cfg["method"][k] for k in settings} == settings
        assert cfg["method"]["burn_in"] == base["method"]["burn_in"]  # knobs the rung leaves alone
    hashes = {config_hash(compose(["method=bif", f"frontier.level={i}"])) for i in range(5)}
    assert len(hashes) == 5  # each rung is its own setting
    # the rung at digits_mlp's default (its knee, 8 x 400) is the same run as one without a level
    assert config_hash(compose(["method=bif", "frontier.level=3"])) == config_hash(base)


def test_explicit_parameters_combine_or_are_refused():
    cfg = compose(["method=bif", "frontier.level=1", "method.eps=0.001"])  # a knob the rung leaves
    assert cfg["method"]["eps"] == 0.001 and cfg["method"]["draws"] == 100
    with pytest.raises(ConfigError, match=r"method.draws=7 conflicts with frontier.level=1.*drop method.draws"):
        compose(["method=bif", "frontier.level=1", "method.draws=7"])
    # the command line is refused before Hydra starts, also for a sweep of levels
    problems = precheck(["-m", "method=bif", "frontier.level=0,1", "method.draws=7"])
    assert len(problems) == 2 and all("method.draws=7 conflicts" in p for p in problems)
    assert precheck(["-m", "method=bif", "frontier.level=0,x"])[0].startswith("frontier.level='x' must be")
    assert precheck(["-m", "method=bif,ekfac", "frontier.level=0,1", "method.seed=3"]) == []


def test_levels_past_the_ladder_and_bad_levels():
    assert rung(METHODS.get("grad_dot"), 0) == {}  # no ladder: level 0 is the defaults
    with pytest.raises(LevelBeyondLadder, match=r"frontier.level=1: method grad_dot has no cost ladder"):
        rung(METHODS.get("grad_dot"), 1)
    with pytest.raises(LevelBeyondLadder, match="method magic has levels 0 to 2"):
        compose(["method=magic", "frontier.level=3"])
    with pytest.raises(ConfigError, match="frontier.level=-1 must be null"):
        apply_level({"method": {"name": "bif"}, "frontier": {"level": -1}})
    cfg = {"method": {"name": "trak", "models": 1}, "frontier": {"level": 2}}
    assert apply_level(apply_level(cfg))["method"]["models"] == 5  # idempotent


def test_a_single_run_past_the_ladder_is_refused_before_any_work(tmp_path):
    out = subprocess.run([str(BIN / "tdabench"), "method=grad_dot", "frontier.level=1", "wandb.mode=disabled",
                          f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "error: frontier.level=1: method grad_dot has no cost ladder" in out.stderr
    assert not (tmp_path / "r" / "runs.jsonl").exists() and not list((tmp_path / "c").rglob("*.pt"))


# ------------------------------------------------------------------ frontier.csv math ----------
def rec(method, lds, s, flops=None, params=None, gt_key="digits_mlp-aaaaaaaaaaaa"):
    return RunRecord.from_dict({"run_id": f"{method}-{json.dumps(params)}", "task": "digits_mlp", "method": method,
            "status": "ok",
            "lds": lds, "lds_ci": [lds - 0.05, lds + 0.05], "lds_per_query": [lds] * 4, "n_train": 1000,
            "n_query": 4, "gt_subsets": 100, "gt_seeds": 3, "gt_key": gt_key, "config_hash": f"{method}{params}",
            "config": {"task": {"name": "digits_mlp", "observable": "loss"},
                       "method": {"name": method, **(params or {})}, "gt": {"subsets": 100, "seeds": 3, "alpha": 0.5}},
            "time_s": {"fit": s / 2, "score": s / 2}, "cpu_time_s": {"fit": s / 4, "score": s / 4},
            "peak_mem_mb": {"fit": 1.0, "score": 1.0},
            **({"flops": {"fit": flops, "score": 0}} if flops is not None else {})})


def bif(draws, lds, s, flops=None):
    return rec("bif", lds, s, flops, {"chains": 4, "draws": draws})


RECORDS = [bif(50, 0.20, 1.0, 1e9), bif(200, 0.40, 4.0, 4e9), bif(800, 0.60, 16.0, 1.6e10),
           rec("ekfac", 0.50, 2.0, 2e9),
           rec("trak", 0.10, 4.0, 8e9, {"models": 1}), rec("trak", 0.30, 10.0, 2e10, {"models": 5}),
           rec("grad_dot", 0.05, 0.5, 5e8)]


def test_interpolation_in_log_cost_and_its_interval():
    pts = [Point("a", 0.2, 0.1, 0.3, 1.0, None), Point("b", 0.4, 0.3, 0.5, 4.0, None)]
    value, low, high, note = lds_at(pts, 2.0, "s")  # halfway in log-cost
    assert value == pytest.approx(0.3) and low == pytest.approx(0.2) and high == pytest.approx(0.4)
    assert "interpolated between [a] and [b]" in note
    assert lds_at(pts, 8.0, "s")[3].startswith("outside range") and lds_at(pts, 8.0, "s")[0] is None
    assert lds_at(pts, 0.5, "s")[3].startswith("outside range")
    assert cost_to_reach(pts, 0.3, "s")[0] == pytest.approx(2.0)
    assert cost_to_reach(pts, 0.5, "s") == (None, "not reached (its best LDS 0.4)")
    # a dearer setting with a lower LDS is off the curve: the curve stays at the best point
    worse = [*pts, Point("c", 0.1, 0.0, 0.2, 16.0, None)]
    assert [p.setting for p in pareto(worse, "s")] == ["a", "b"]
    assert lds_at(worse, 8.0, "s")[:3] == (0.4, 0.3, 0.5)


def test_frontier_table_on_synthetic_records():
    df = table(RECORDS).set_index("method")
    assert set(df.index) == {"bif", "ekfac", "trak", "grad_dot"}
    assert df.loc["bif", "settings"] == 3 and df.loc["bif", "best_lds"] == 0.6
    # bif at EK-FAC's 2 s: between 1 s (0.2) and 4 s (0.4), halfway in log-cost
    assert df.loc["bif", "ekfac_s"] == 2.0
    assert df.loc["bif", "lds_at_ekfac_s"] == pytest.approx(0.3)
    assert df.loc["bif", "lds_at_ekfac_s_low"] == pytest.approx(0.25)
    assert df.loc["bif", "lds_at_ekfac_flops"] == pytest.approx(0.3)
    assert df.loc["ekfac", "lds_at_ekfac_s"] == 0.5  # itself
    assert df.loc["trak", "lds_at_ekfac_s_note"].startswith("outside range")  # trak starts at 4 s
    assert math.isnan(df.loc["trak", "lds_at_ekfac_s"])
    # 90% of the best LDS on the ground truth (0.6): 0.54, reached by bif between 4 s and 16 s
    assert df.loc["bif", "lds_90pct"] == pytest.approx(0.54)
    expected = math.exp(math.log(4) + (0.54 - 0.4) / 0.2 * (math.log(16) - math.log(4)))
    assert df.loc["bif", "s_to_90pct"] == pytest.approx(expected)
    assert df.loc["trak", "s_to_90pct_note"].startswith("not reached")
    assert df.loc["ekfac", "flops_to_90pct_note"].startswith("not reached")


def test_frontier_table_cpu_seconds_and_pareto_flag():
    df = table(RECORDS).set_index("method")
    assert df.loc["bif", "cpu_s"] == 8.0 and df.loc["bif", "peak_mem_mb"] == 1.0 and df.loc["bif", "flops"] == 1.6e10
    assert df.loc["bif", "cpu_s_min"] == 0.5 and df.loc["ekfac", "ekfac_cpu_s"] == 1.0
    assert df.loc["bif", "lds_at_ekfac_cpu_s"] == pytest.approx(0.3)
    # best settings on the CPU-seconds Pareto front of every row: trak's 0.3 at 5 CPU s is beaten
    # by ekfac's 0.5 at 1 CPU s
    assert df["pareto"].to_dict() == {"bif": True, "ekfac": True, "grad_dot": True, "trak": False}
    # the same LDS at two costs (one setting chosen under two caps): the best is the cheaper one
    again = [*RECORDS, rec("ekfac", 0.50, 2.4, 2e9, {"max_examples": 500})]
    df = table(again).set_index("method")
    assert df.loc["ekfac", "cpu_s"] == 1.0 and bool(df.loc["ekfac", "pareto"])


def test_without_an_ekfac_row_the_comparison_is_empty_with_a_note():
    df = table([r for r in RECORDS if r.method != "ekfac"]).set_index("method")
    assert df["lds_at_ekfac_s"].isna().all()
    assert (df["lds_at_ekfac_s_note"] == "no ekfac row on this ground truth").all()


def test_a_fit_read_from_cached_factors_is_flagged():
    cached = rec("ekfac", 0.50, 2.0, 2e9)
    cached.diagnostics = {"factors_from_cache": True}
    df = table([*[r for r in RECORDS if r.method != "ekfac"], cached]).set_index("method")
    assert df.loc["ekfac", "cached_fits"] == "[defaults]" and pd.isna(df.loc["bif", "cached_fits"])
    assert "its cost is partly a file read" in df.loc["bif", "ekfac_row"]


def test_no_frontier_without_a_method_at_two_settings(tmp_path):
    assert table([rec("ekfac", 0.5, 2.0), rec("grad_dot", 0.1, 1.0)]).empty


def test_leaderboard_writes_frontier_csv_and_plot(tmp_path, capsys):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "runs.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in RECORDS))
    leaderboard_main([str(folder)])
    assert "frontier:" in capsys.readouterr().out
    df = pd.read_csv(folder / "frontier.csv")
    assert len(df) == 4 and "lds_at_ekfac_s" in df and "flops_to_90pct" in df
    plots = list((folder / "plots").glob("frontier_*.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 10_000
    report = (folder / "report.html").read_text()
    assert "frontier_digits_mlp_aaaaaa" in report and "Cost-quality frontier" in report and ">nan<" not in report


# ------------------------------------------------------------------ end to end ------------------
@pytest.mark.slow  # a whole frontier sweep: run by `make bench`
def test_frontier_sweep_end_to_end(tmp_path):
    """bif and ekfac at two rungs each, a level past grad_dot's ladder skipped without a record."""
    results, cache = tmp_path / "r", os.environ.get("TDABENCH_CACHE") or str(tmp_path / "cache")
    cmd = [str(BIN / "tdabench"), "-m", "+sweep=frontier", "method=bif,ekfac,grad_dot", "frontier.level=0,1",
           "task.n_train=200", "task.n_query=20", "task.hidden=16", "task.recipe.epochs=30",
           "task.trajectory_checkpoints=3", "gt.subsets=10", "gt.seeds=1", "lds.bootstrap=50",
           "threads=1", "wandb.mode=disabled", f"results_dir={results}", f"cache_dir={cache}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "grad_dot: skipped, frontier.level=1: method grad_dot has no cost ladder" in out.stderr
    records = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["config"]["frontier"]["level"]) for r in records) == [
        ("bif", 0), ("bif", 1), ("ekfac", 0), ("ekfac", 1), ("grad_dot", 0)]
    assert all(r["status"] == "ok" for r in records)
    bif_draws = sorted(r["config"]["method"]["draws"] for r in records if r["method"] == "bif")
    assert bif_draws == [50, 100] and len({r["config_hash"] for r in records}) == 5
    board = subprocess.run([str(BIN / "tdabench-leaderboard"), str(results)], capture_output=True, text=True,
                           timeout=300)
    assert board.returncode == 0, board.stderr[-2000:]
    df = pd.read_csv(results / "frontier.csv")
    assert set(df["method"]) == {"bif", "ekfac", "grad_dot"}
    assert list((results / "plots").glob("frontier_*.png"))
