"""Fault injection, part two: an undefined LDS is never ok, a chance-level model is never
benchmarked, nothing computed is lost when writing fails, identical sweeps compute each pairing
once, plugins that exit or interrupt are recorded, damaged result files are read around, and an
interrupted ground truth keeps its finished retrainings."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tdabench.harness.engine.writing as writing
import tdabench.metrics.lds as lds_metric
from tdabench.harness.core import storage
from tdabench.harness.engine.run import execute, prepare
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.lds import LDSResult
from tdabench.harness.read.results import append_record, read_records
from tdabench.harness.read.statistics import pairwise_table, tied_with_best
from tests.reliability.conftest import SMALL, small_cfg, terminal_sigint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
def strict_lines(results_dir: Path) -> list[dict]:
    """runs.jsonl parsed as standard JSON (a NaN or Infinity token fails)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return [json.loads(line, parse_constant=refuse)
            for line in (results_dir / "runs.jsonl").read_text().splitlines() if line.strip()]


def _grad_dot_scores(base, rec):
    return storage.load_verified(base / "r" / rec["scores_file"])["scores"]


# ---------------------------------------------------------------- undefined LDS ------------------
def test_scores_constant_within_each_query_give_lds_zero_listed(done, tmp_path, tried, monkeypatch):
    tried("scores constant within each query row")
    base, _ = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    from tdabench.methods.baselines import GradDot

    monkeypatch.setattr(GradDot, "score", lambda self, task, model:
                        torch.arange(task.n_query, dtype=torch.float32)[:, None].repeat(1, task.n_train))
    rec = execute(small_cfg(tmp_path, "method=grad_dot"))
    assert rec["status"] == "ok" and rec["lds"] == 0.0 and rec["lds_ci"] == [0.0, 0.0]
    assert len(rec["constant_prediction_queries"]) + len(rec["constant_outcome_queries"]) == 15
    assert strict_lines(tmp_path / "r")[0]["lds"] == 0.0


def test_queries_a_method_abstains_on_count_as_zero_not_dropped(done, tmp_path, tried, monkeypatch):
    tried("all-zero score rows for half the queries")
    base, rec = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    half = _grad_dot_scores(base, rec).clone()
    half[::2] = 0.0
    from tdabench.methods.baselines import GradDot

    monkeypatch.setattr(GradDot, "score", lambda self, task, model: half.clone())
    got = execute(small_cfg(tmp_path, "method=grad_dot"))
    zeroed = [q for q in range(0, 15, 2) if q not in rec["constant_outcome_queries"]]
    assert got["constant_prediction_queries"] == zeroed
    assert all(got["lds_per_query"][q] == 0.0 for q in zeroed)
    full = np.array([np.nan if v is None else v for v in rec["lds_per_query"]])
    expected = np.where(np.isin(np.arange(15), zeroed), 0.0, full)
    assert got["lds"] == pytest.approx(np.nanmean(expected))
    assert got["lds"] < rec["lds"] * 0.75  # abstaining lowers the mean; it is not dropped


def test_non_finite_lds_is_recorded_with_its_cause_not_ok(done, tmp_path, tried, monkeypatch):
    tried("LDS that comes out NaN")
    base, _ = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    monkeypatch.setattr(lds_metric, "lds", lambda *a, **k: LDSResult(float("nan"), (float("nan"),) * 2,
                                                              np.full(15, np.nan)))
    rec = execute(small_cfg(tmp_path, "method=grad_dot"))
    assert rec["status"] == "error" and rec["failed_phase"] == "lds" and "LDS is nan" in rec["message"]
    assert rec["lds"] is None
    line = strict_lines(tmp_path / "r")[0]  # standard JSON: the NaN became null
    assert line["status"] == "error" and line["lds"] is None
    assert "scores_file" not in line


def test_records_are_standard_json(tmp_path, tried):
    tried("NaN and infinity inside a record")
    append_record(tmp_path, {"run_id": "x", "task": "t", "method": "m", "status": "error",
                             "lds": float("nan"), "lds_ci": [float("inf"), 1.0],
                             "nested": {"v": np.float64("nan")}})
    line = strict_lines(tmp_path)[0]
    assert line["lds"] is None and line["lds_ci"] == [None, 1.0] and line["nested"]["v"] is None


def test_tie_marks_and_pairwise_tests_ignore_non_finite_values(tried):
    tried("NaN per-query LDS in the tie marks")
    rng = np.random.default_rng(0)
    per_query = {"broken": np.full(50, np.nan), "ekfac": 0.66 + 0.05 * rng.normal(size=50),
                 "random": 0.006 + 0.05 * rng.normal(size=50)}
    ties = tied_with_best(per_query)
    assert ties == {"broken": False, "ekfac": True, "random": False}
    assert [p.a for p in pairwise_table(per_query)][0] == "ekfac"
    assert tied_with_best({"broken": np.full(5, np.nan)}) == {"broken": False}


# ---------------------------------------------------------------- degenerate models --------------
def test_chance_level_model_is_never_benchmarked(tmp_path, tried):
    tried("learning rate far too high (chance-level model)")
    rec = execute(small_cfg(tmp_path, "method=grad_dot", "task.recipe.lr=5"))
    assert rec["status"] == "degenerate_model" and rec["failed_phase"] == "prepare"
    assert "no better than chance" in rec["message"] and "task.recipe.lr" in rec["message"]
    assert rec["lds"] is None and "scores_file" not in rec
    assert not (tmp_path / "cache" / "ground_truth").exists() or \
        not list((tmp_path / "cache" / "ground_truth").rglob("*.pt"))  # stopped before the ground truth


def test_constant_predictor_is_degenerate(tmp_path, tried):
    tried("model that predicts one class")
    from tdabench.harness.plugin.quality import degenerate_reason

    assert degenerate_reason({"test_acc": 0.104, "test_loss": 2.29, "chance_acc": 0.104,
                              "uniform_loss": math.log(10), "n_test": 700})
    assert degenerate_reason({"test_acc": 0.5, "test_loss": 2.4, "chance_acc": 0.1,
                              "uniform_loss": math.log(10), "n_test": 700})
    assert degenerate_reason({"test_acc": 0.9, "test_loss": float("nan")})
    assert degenerate_reason({"test_acc": 0.88, "test_loss": 0.57, "chance_acc": 0.104,
                              "uniform_loss": math.log(10), "n_test": 700}) is None
    assert degenerate_reason({"test_loss": 1.5, "uniform_loss": 4.2, "test_acc": 0.5}) is None  # text


def test_ground_truth_of_degenerate_retrained_models_is_refused(tmp_path, tried, monkeypatch):
    tried("ground truth whose retrained models are at chance")
    import tdabench.harness.plugin.ground_truth as ground_truth

    monkeypatch.setattr(ground_truth, "degenerate_reason", lambda quality: "at chance")
    rec = execute(small_cfg(tmp_path, "method=grad_dot"))
    assert rec["status"] == "degenerate_model" and rec["failed_phase"] == "ground_truth"
    assert rec["gt_degenerate_share"] == 1.0 and "100% of the ground truth's 12" in rec["message"]


def test_healthy_ground_truth_reports_its_degenerate_share(done, tried):
    tried("share of degenerate models in a healthy ground truth")
    _, rec = done
    assert rec["gt_degenerate_share"] == 0.0


def test_cost_only_tasks_are_exempt_and_say_so(tmp_path, tried, monkeypatch, capfd):
    tried("untrained model on a cost-only task")
    from tdabench.tasks.digits import DigitsMLP

    monkeypatch.setattr(DigitsMLP, "measures_lds", False)
    rec = execute(small_cfg(tmp_path, "method=grad_dot", "task.recipe.lr=5"))
    assert rec["status"] == "ok" and rec["quality_check"].startswith("exempt")
    assert "not checked against chance" in capfd.readouterr().err


# ---------------------------------------------------------------- writes that fail ---------------
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["disk_full", "read_only"])
def test_failed_result_write_keeps_the_result_and_the_next_run_writes_it(done, tmp_path, err, tried,
                                                                          monkeypatch, capfd):
    tried(f"results folder write fails mid-sweep ({errno.errorcode[err]})")
    base, _ = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    real = writing.append_record

    def failing(results_dir, record):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(writing, "append_record", failing)
    recs = [execute(small_cfg(tmp_path, f"method={m}")) for m in ("grad_dot", "grad_cos")]
    lines = [line for line in capfd.readouterr().err.splitlines() if "could not write" in line]
    assert len(lines) == 2 and "grad_dot" in lines[0] and "grad_cos" in lines[1]  # each job its own
    assert all(os.strerror(err) in line and "kept in" in line for line in lines)
    assert all(r["status"] == "ok" and r["write_error"] for r in recs)
    assert len(list((tmp_path / "cache" / "pending").glob("*.pt"))) == 2
    monkeypatch.setattr(writing, "append_record", real)
    again = execute(small_cfg(tmp_path, "method=grad_dot"))  # writes both, then finds grad_dot done
    assert "already done" in capfd.readouterr().err
    written = read_records(tmp_path / "r")
    assert sorted(r.run_id for r in written) == sorted(r["run_id"] for r in recs)
    assert again["run_id"] == recs[0]["run_id"]
    assert all(storage.load_verified(tmp_path / "r" / r.scores_file)["scores"].shape == (15, 150)
               for r in written)
    assert not list((tmp_path / "cache" / "pending").glob("*"))


def test_failed_scores_write_is_not_a_traceback_from_the_command(done, tmp_path, tried):
    tried("results folder turns unwritable before the scores are saved")
    base, _ = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "scores").write_text("a file where the scores folder should be")
    out = subprocess.run([str(BIN / "tdabench"), "method=grad_dot", *SMALL, f"cache_dir={tmp_path / 'cache'}",
                          f"results_dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "could not write" in out.stderr and "kept in" in out.stderr


# ---------------------------------------------------------------- concurrency ------------------
def test_two_identical_sweeps_compute_each_pairing_once(tmp_path, tried):
    tried("two identical sweeps at once")
    args = [str(BIN / "tdabench"), "-m", "method=grad_dot,grad_cos,random", *SMALL,
            f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WANDB_MODE": "disabled"}) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    recs = read_records(tmp_path / "r")
    assert sorted(r.method for r in recs) == ["grad_cos", "grad_dot", "random"]
    for err in errs:  # both sweeps report every pairing, computed or found done
        for m in ("grad_dot", "grad_cos", "random"):
            assert f"digits_mlp / {m}: LDS" in err or f"digits_mlp / {m}: already done" in err, err
    assert sum(e.count("already done") for e in errs) == 3


def test_a_lock_held_by_a_stopped_process_is_reported_with_its_pid(tmp_path, tried, monkeypatch):
    tried("ground-truth lock held by a stopped process")
    monkeypatch.setattr(storage, "LOCK_REPORT_S", 0.5)
    lock = tmp_path / "shard.pt.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tdabench.harness.core.storage import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(600)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGSTOP)
        messages = []
        waiter = threading.Thread(target=lambda: storage.exclusive_lock(lock, "the ground truth",
                                                                        messages.append).__enter__())
        waiter.daemon = True
        waiter.start()
        deadline = time.time() + 30
        while not messages and time.time() < deadline:
            time.sleep(0.1)
        assert messages and f"process {holder.pid}, which is stopped" in messages[0]
        assert "the ground truth" in messages[0] and f"kill -CONT {holder.pid}" in messages[0]
    finally:
        holder.kill()
        holder.wait()
    waiter.join(timeout=10)
    assert not waiter.is_alive()  # the lock is free once its holder is gone


# ---------------------------------------------------------------- plugins -----------------------
@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt("from the plugin")],
                         ids=["sys_exit", "keyboard_interrupt"])
def test_method_that_exits_is_recorded_and_the_sweep_goes_on(done, tmp_path, exc, tried, monkeypatch):
    tried(f"method raises {type(exc).__name__} in fit")
    base, _ = done
    shutil.copytree(base / "cache", tmp_path / "cache")
    from tdabench.methods.baselines import GradCos

    def fit(self, task, model):
        raise exc

    monkeypatch.setattr(GradCos, "fit", fit)
    rec = execute(small_cfg(tmp_path, "method=grad_cos"))
    assert rec["status"] == "error" and rec["failed_phase"] == "fit"
    assert type(exc).__name__ in rec["message"]
    assert execute(small_cfg(tmp_path, "method=grad_dot"))["status"] == "ok"
    assert [r.status for r in read_records(tmp_path / "r")] == ["error", "ok"]


def test_ctrl_c_stops_in_one_line_without_traceback(tmp_path, tried):
    tried("Ctrl-C from the user during the ground truth")
    out = subprocess.run([str(BIN / "tdabench"), "-m", "method=grad_dot,random", *SMALL,
                          f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1",
                              "TDABENCH_FAULT": "ground_truth:INT"}, preexec_fn=terminal_sigint)
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("tdabench: interrupted") == 1
    assert not read_records(tmp_path / "r")  # the sweep stopped: no pairing went on


# ---------------------------------------------------------------- damaged result files ----------
def test_non_object_lines_and_records_missing_keys_are_skipped_with_a_count(done, tmp_path, tried, capsys):
    tried("non-object JSON lines and records missing keys in runs.jsonl")
    base, rec = done
    good = json.dumps(rec)
    (tmp_path / "runs.jsonl").write_text("\n".join(
        ["[1, 2, 3]", good, '"text"', "42", json.dumps({"run_id": "x", "status": "ok"}),
         json.dumps({k: v for k, v in rec.items() if k != "lds_ci"})]) + "\n")
    recs = read_records(tmp_path)
    assert [r.run_id for r in recs] == [rec["run_id"]]
    out = capsys.readouterr().err
    assert "1 line(s) skipped, each a JSON list" in out and "line 1)" in out
    assert "1 line(s) skipped, each a JSON str" in out and "1 line(s) skipped, each a JSON int" in out
    assert "2 line(s) skipped, each a record missing" in out or out.count("record missing") == 2


def test_leaderboard_on_damaged_records_and_unwritable_folder(done, tmp_path, tried):
    tried("leaderboard on a runs.jsonl with a non-object line and a record missing keys")
    tried("leaderboard on an unwritable folder")
    base, rec = done
    shutil.copytree(base / "r", tmp_path / "r")
    with open(tmp_path / "r" / "runs.jsonl", "a") as f:
        f.write("[1, 2, 3]\n" + json.dumps({"run_id": "y", "task": "digits_mlp", "status": "ok"}) + "\n")
    cmd = [str(BIN / "tdabench-leaderboard"), str(tmp_path / "r"), "--no-report"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "grad_dot" in out.stdout, out.stderr
    (tmp_path / "r" / "leaderboard.md").unlink()
    (tmp_path / "r" / "leaderboard.md").mkdir()  # cannot be written
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip() and "line(s) skipped" not in line]
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("tdabench-leaderboard: error:") and "leaderboard.md" in lines[0]


def test_adequacy_never_retrains_and_says_how_to_compute(done, tmp_path, tried):
    tried("adequacy with the ground truth missing from the cache")
    base, rec = done
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "scores").mkdir()
    shutil.copy(base / "r" / rec["scores_file"], tmp_path / "r" / "scores")
    shutil.copy(base / "r" / (rec["scores_file"] + ".sha256"), tmp_path / "r" / "scores")
    moved = dict(rec, config=dict(rec["config"], cache_dir=str(tmp_path / "empty")))
    append_record(tmp_path / "r", moved)
    out = subprocess.run([str(BIN / "tdabench-adequacy"), str(tmp_path / "r")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "nothing was retrained" in out.stderr and "--compute" in out.stderr
    assert not [p for p in (tmp_path / "empty").rglob("*.pt")]  # no model, no ground truth written


@pytest.mark.parametrize("damage", ["scores", "folder"])
def test_adequacy_on_damaged_scores_or_unwritable_folder_fails_in_one_line(done, tmp_path, damage, tried):
    tried(f"adequacy with {'a damaged scores file' if damage == 'scores' else 'an unwritable folder'}")
    base, rec = done
    shutil.copytree(base / "r", tmp_path / "r")
    if damage == "scores":
        path = tmp_path / "r" / rec["scores_file"]
        path.write_bytes(path.read_bytes()[:-10])
    else:
        (tmp_path / "r" / "adequacy_digits_mlp.csv").mkdir()
    out = subprocess.run([str(BIN / "tdabench-adequacy"), str(tmp_path / "r")], capture_output=True,
                         text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("tdabench-adequacy: error:")
    assert ("force=true" if damage == "scores" else "adequacy_digits_mlp.csv") in lines[0]


# ---------------------------------------------------------------- interrupted ground truth -------
def test_interrupted_ground_truth_keeps_its_finished_retrainings(tmp_path, tried, monkeypatch):
    tried("ground truth interrupted mid-shard")
    cfg = small_cfg(tmp_path, "method=grad_dot", "gt.models_per_batch=4")
    task, _ = prepare(cfg)
    calls = []
    real = GroundTruthBuilder._retrain

    def interrupted(self, subsets):
        calls.append(list(subsets))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, subsets)

    monkeypatch.setattr(GroundTruthBuilder, "_retrain", interrupted)
    builder = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log=lambda m: None)
    with pytest.raises(KeyboardInterrupt):
        builder.build()
    partial = storage.load_verified(builder.partial_path(0, 1))
    assert partial["ids"] == [0, 1] and partial["outcomes"].shape == (2, 2, 15)
    calls.clear()
    monkeypatch.setattr(GroundTruthBuilder, "_retrain", lambda self, subsets: calls.append(list(subsets))
                        or real(self, subsets))
    messages = []
    gt = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"], log=messages.append).build()
    assert calls == [[2, 3], [4, 5]]  # only what the interrupted run had not finished
    assert any("continuing from 4 retrained models" in m for m in messages)
    assert not builder.partial_path(0, 1).exists()
    fresh_cfg = small_cfg(tmp_path / "fresh", "method=grad_dot", "gt.models_per_batch=4")
    fresh = GroundTruthBuilder(prepare(fresh_cfg)[0], fresh_cfg["gt"], fresh_cfg["cache_dir"], log=lambda m: None)
    assert torch.equal(gt.outcomes, fresh.build().outcomes)  # the same numbers as in one go
