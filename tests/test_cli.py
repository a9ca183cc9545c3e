"""End-to-end: the tdabench and tdabench-leaderboard commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["task.n_train=200", "task.n_query=20", "task.hidden=16", "task.recipe.epochs=20",
         "gt.subsets=8", "gt.seeds=2", "lds.bootstrap=200"]


def tdabench(*args, cache, results=None, check=True, env=None):
    cmd = [str(BIN / "tdabench"), *args, f"cache_dir={cache}"]
    if results is not None:
        cmd.append(f"results_dir={results}")
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **(env or {})}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{out.stderr[-3000:]}")
    return out


def records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One small sweep of three methods, the same sweep forced (cached ground truth), and once
    more unforced (every pairing already done)."""
    base = tmp_path_factory.mktemp("cli")
    cache, results = base / "cache", base / "results"
    first = tdabench("-m", "method=random,grad_dot,exact_if", *SMALL, cache=cache, results=results)
    second = tdabench("-m", "method=random,grad_dot,exact_if", *SMALL, "force=true", cache=cache,
                      results=results)
    third = tdabench("-m", "method=random,grad_dot,exact_if", *SMALL, cache=cache, results=results)
    return {"cache": cache, "results": results, "logs": (first, second, third)}


def test_sweep_writes_one_ok_record_per_method(sweep):
    recs = records(sweep["results"])
    assert [r["method"] for r in recs] == ["random", "grad_dot", "exact_if"] * 2
    for r in recs:
        assert r["status"] == "ok"
        assert -1 <= r["lds"] <= 1 and r["lds_ci"][0] <= r["lds"] <= r["lds_ci"][1]
        assert set(r["time_s"]) == {"prepare", "ground_truth", "fit", "score", "lds"}
        for key in ("peak_mem_mb", "cpu_time_s", "flops", "peak_rss_mb", "load_avg"):
            assert set(r[key]) == set(r["time_s"]), key
        assert r["flops"]["score"] > 0 if r["method"] != "random" else r["flops"]["score"] == 0
        assert isinstance(r["overloaded"], bool) and r["gt_wait_s"] == 0
        for key in ("task", "n_train", "n_query", "config", "version", "git_sha", "timestamp",
                    "libraries", "device", "model_quality", "lds_per_query", "scores_file"):
            assert key in r, key
        assert r["config"]["gt"]["subsets"] == 8 and r["n_train"] == 200
        assert (sweep["results"] / r["scores_file"]).exists()
    by = {r["method"]: r["lds"] for r in recs[:3]}
    assert by["grad_dot"] > by["random"] and by["exact_if"] > by["random"]


def test_cost_count_off_records_time_and_lds_without_flops(sweep, tmp_path):
    tdabench("method=grad_dot", *SMALL, "cost.count=off", cache=sweep["cache"], results=tmp_path)
    (r,) = records(tmp_path)
    before = next(x for x in records(sweep["results"]) if x["method"] == "grad_dot")
    assert r["status"] == "ok" and r["lds"] == before["lds"] and r["config"]["cost"]["count"] == "off"
    assert "fit" not in r["flops"] and "score" not in r["flops"] and r["time_s"]["score"] > 0
    bad = tdabench("method=grad_dot", *SMALL, "cost.count=sometimes", cache=sweep["cache"],
                   results=tmp_path, check=False)
    assert bad.returncode != 0 and "cost.count='sometimes'" in bad.stderr and "off" in bad.stderr


def test_ensemble_members_read_from_the_cache_are_recorded(sweep, tmp_path):
    # the first TRAK run trains its second member; the next one reads it and says so
    args = ("method=trak", *SMALL, "method.models=2", "method.proj_dim=32", "cost.count=off")
    tdabench(*args, cache=sweep["cache"], results=tmp_path)
    tdabench(*args, "method.projection=gaussian", cache=sweep["cache"], results=tmp_path)
    first, second = records(tmp_path)
    assert first["status"] == second["status"] == "ok"
    assert "cached_work" not in first and second["cached_work"] == ["ensemble member 1"]
    from tdabench.harness.read.record import RunRecord
    from tdabench.harness.read.record_view import fit_from_cache, read_cached, run_cost

    a, b = RunRecord.from_dict(first), RunRecord.from_dict(second)
    assert not read_cached(a) and read_cached(b)
    # the member's training, timed when the first run computed it, is counted in the second's cost
    assert not fit_from_cache(b) and "cold_cost" not in first
    assert b.cold_cost["time_s"]["fit"] > b.time_s["fit"] and run_cost(b)["fit_s"] == b.cold_cost["time_s"]["fit"]
    assert run_cost(b)["warm_s"] == pytest.approx(b.time_s["fit"] + b.time_s["score"], abs=1e-3)


def test_second_sweep_reuses_ground_truth_and_reproduces_lds(sweep):
    recs = records(sweep["results"])
    first, second = recs[:3], recs[3:]
    assert not first[0]["gt_cached"] and all(r["gt_cached"] for r in second)
    assert "ground truth" not in sweep["logs"][1].stderr  # no progress bar: nothing retrained
    for a, b in zip(first, second):
        assert a["lds"] == b["lds"], a["method"]
        assert b["time_s"]["ground_truth"] < 5


def test_rerun_skips_pairings_already_done(sweep):
    assert len(records(sweep["results"])) == 6  # the third sweep added nothing
    assert sweep["logs"][2].stderr.count("already done") == 3


def test_scores_on_disk_reproduce_the_recorded_lds(sweep):
    from tdabench.harness.core.storage import load_verified
    from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
    from tdabench.harness.read.lds import lds
    from tdabench.tasks.digits import DigitsMLP

    rec = records(sweep["results"])[1]
    cfg = rec["config"]
    task = DigitsMLP(cfg["task"], seed=cfg["seed"], cache_dir=sweep["cache"], log=lambda m: None)
    gt = GroundTruthBuilder(task, cfg["gt"], sweep["cache"], log=lambda m: None).build()
    scores = load_verified(sweep["results"] / rec["scores_file"])["scores"]
    res = lds(scores, gt.masks, gt.mean_outcomes, cfg["lds"]["bootstrap"], cfg["seed"])
    assert res.lds == pytest.approx(rec["lds"])


def test_leaderboard(sweep):
    out = subprocess.run([str(BIN / "tdabench-leaderboard"), str(sweep["results"])], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    md = (sweep["results"] / "leaderboard.md").read_text()
    assert "ceiling" in md and "grad_dot" in md and "exact_if" in md
    import pandas as pd

    df = pd.read_csv(sweep["results"] / "leaderboard.csv")
    assert list(df["method"]) == sorted(df["method"], key=lambda m: -df.set_index("method").loc[m, "lds"])
    assert len(df) == 3 and (df["runs"] == 2).all()
    assert "grad_dot" in out.stdout


def test_wandb_offline_run_carries_the_summary(sweep):
    from tdabench.harness.read.tracking import read_offline_run

    runs = sorted((sweep["results"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 6
    rec = records(sweep["results"])[-1]
    back = read_offline_run(runs[-1])
    assert back["name"] == f"{rec['task']}/{rec['method']}"  # default setting: no [setting] suffix
    assert back["summary"]["lds"] == pytest.approx(rec["lds"])
    assert back["summary"]["fit_s"] == pytest.approx(rec["time_s"]["fit"])  # the leaderboard's names
    for key in ("normalized_lds", "lds_ceiling", "lds_ci_low", "lds_ci_high", "trainings", "lds_per_query"):
        assert key in back["summary"], key
    assert back["config"]["method"] == rec["method"] and back["config"]["n_train"] == 200
    for key in ("run_id", "config_hash", "gt_key", "git_sha", "version"):
        assert back["config"][key] == rec[key], key
    # every run into the folder, the forced rerun included, is in one group named after it
    groups = {read_offline_run(r)["group"] for r in runs}
    assert groups == {rec["group"]} and rec["group"].startswith("results-")


BAD_INPUTS = [
    (["gt.alpha=1.5"], "gt.alpha=1.5 must be a fraction strictly between 0 and 1"),
    (["gt.alpha=0"], "gt.alpha=0 must be a fraction"),
    (["gt.subsets=1"], "gt.subsets=1 must be an integer >= 2"),
    (["gt.seeds=0"], "gt.seeds=0 must be a positive integer"),
    (["task.n_train=5000"], "task.n_train=5000 with task.n_query=100 is larger than the data"),
    (["task.n_query=-3"], "task.n_query=-3 must be a positive integer"),
    (["wandb.mode=sometimes"], "wandb.mode='sometimes': use one of offline, online, disabled"),
    (["+method.no_such_param=1"], "method grad_dot has no parameter no_such_param"),
    (["method=exact_if", "method.max_params=10"], "above method.max_params=10"),
    (["method=kfac", "+task.method_defaults.kfac.nope=4"],
     "task.method_defaults.kfac.nope: method kfac has no parameter 'nope'"),
    (["method.seed=abc"], "method.seed='abc' must be an integer"),
    (["method=bif", "method.draws=1.5"], "method.draws=1.5 must be an integer"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_config_is_one_clear_line_before_any_work(tmp_path, args, message):
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.config import ConfigError
    from tdabench.harness.engine.run import prepare

    cfg = compose([*args, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert len(err.value.problems) == 1 and message in err.value.problems[0]
    assert not (tmp_path / "cache" / "models").exists()  # nothing was trained


@pytest.mark.parametrize("args,message", [
    (["task=no_such_task"], "unknown task 'no_such_task'; registered tasks: "),
    (["method=no_such_method"], "unknown method 'no_such_method'; registered methods: "),
    (["gt.alpha=1.5"], "gt.alpha=1.5 must be a fraction"),
])
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path, args, message):
    out = tdabench(*args, cache=tmp_path / "cache", results=tmp_path / "r", check=False)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("tdabench: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "digits_mlp" in errors[0] or "grad_dot" in errors[0] or "gt.alpha" in errors[0]
    assert not (tmp_path / "r" / "runs.jsonl").exists()


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = tdabench(cache=tmp_path / "cache", results=blocker / "results", check=False)
    assert out.returncode != 0
    assert "results_dir:" in out.stderr and "not writable" in out.stderr


def test_corrupted_ground_truth_cache_is_recomputed(tmp_path):
    cache = tmp_path / "cache"
    a = tdabench("method=grad_dot", *SMALL, cache=cache, results=tmp_path / "a")
    gt_file = next(cache.glob("ground_truth/*/ground_truth.pt"))
    gt_file.write_bytes(gt_file.read_bytes()[:50])
    b = tdabench("method=grad_dot", *SMALL, cache=cache, results=tmp_path / "b")
    assert "damaged, recomputing" in b.stderr
    assert records(tmp_path / "a")[0]["lds"] == records(tmp_path / "b")[0]["lds"]
    del a


def test_sweep_records_unsupported_pairings_and_goes_on(tmp_path):
    # exact_if refuses a model above its max_params; in a sweep that is a record, not an abort
    out = tdabench("-m", "method=exact_if,grad_dot", *SMALL, "task.hidden=400", "wandb.mode=disabled",
                   cache=tmp_path / "c", results=tmp_path / "r")
    recs = records(tmp_path / "r")
    assert [r["status"] for r in recs] == ["unsupported", "ok"]
    assert "max_params" in recs[0]["message"]
    assert "unsupported" in out.stderr
