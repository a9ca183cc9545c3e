"""Fault injection: damaged files, killed runs, NaN models, concurrent sweeps, unwritable places,
malformed overrides. Each case checks the message and that nothing computed before was lost or
silently wrong."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdabench.harness.core import storage
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import execute, prepare
from tdabench.harness.read.results import read_records
from tests.reliability.conftest import SMALL, small_cfg, terminal_sigint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
def cli(*args, env=None, check=True):
    out = subprocess.run([str(BIN / "tdabench"), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "WANDB_MODE": "disabled", **(env or {})},
                         preexec_fn=terminal_sigint)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr[-3000:])
    return out


# ---------------------------------------------------------------- damaged files ----------------
@pytest.mark.parametrize("kind", ["reference", "shard", "ground_truth"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_checksum"])
def test_damaged_cache_is_recomputed_with_a_message(done, tmp_path, kind, damage, tried, capfd):
    tried(f"{damage} {kind} cache")
    base, rec = done
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(base / "cache", cache)
    pattern = {"reference": "models/*reference*.pt", "shard": "ground_truth/*/shard-*.pt",
               "ground_truth": "ground_truth/*/ground_truth.pt"}[kind]
    victim = next(cache.glob(pattern))
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(200))
    else:
        Path(str(victim) + ".sha256").unlink()
    if kind == "shard":  # the assembled file is still good: the damaged shard is never read
        Path(next(cache.glob("ground_truth/*/ground_truth.pt"))).unlink()
    again = execute(compose([*SMALL, "method=grad_dot", f"cache_dir={cache}", f"results_dir={tmp_path / 'r'}"]))
    assert again["status"] == "ok" and again["lds"] == pytest.approx(rec["lds"])
    assert "damaged, recomputing" in capfd.readouterr().err


def test_damaged_scores_file_is_refused(done, tried):
    tried("corrupted scores file")
    base, rec = done
    path = base / "r" / rec["scores_file"]
    good = path.read_bytes()
    path.write_bytes(good[:-20])
    with pytest.raises(storage.CorruptFileError, match="checksum"):
        storage.load_verified(path)
    path.write_bytes(good)
    assert torch.isfinite(storage.load_verified(path)["scores"]).all()


def test_torn_record_line_is_skipped_and_later_records_survive(done, tmp_path, tried, capsys):
    tried("truncated runs.jsonl line")
    base, rec = done
    runs = tmp_path / "runs.jsonl"
    line = json.dumps(rec)
    runs.write_text(line + "\n" + line[: len(line) // 2])  # a writer died mid-line
    from tdabench.harness.read.results import append_record

    append_record(tmp_path, dict(rec, run_id="after"))
    recs = read_records(tmp_path)
    assert [r.run_id for r in recs][-1] == "after" and len(recs) == 2
    assert "not a complete record" in capsys.readouterr().err


# ---------------------------------------------------------------- killed runs ------------------
PHASES = ["prepare", "ground_truth", "fit", "score", "lds"]


def test_interrupt_in_each_phase_leaves_no_partial_files_and_resumes(tmp_path, tried):
    """Ctrl-C (SIGINT) at the start of each phase in turn, then a run that finishes."""
    args = ["method=grad_dot", *SMALL, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"]
    for phase in PHASES:
        tried(f"SIGINT during {phase}")
        out = cli(*args, env={"TDABENCH_FAULT": f"{phase}:INT", "HYDRA_FULL_ERROR": "1"}, check=False)
        assert out.returncode == 130 and "KeyboardInterrupt" in out.stderr and "Traceback" not in out.stderr
        assert not read_records(tmp_path / "r")
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
        for f in tmp_path.rglob("*.pt"):  # whatever was written is complete and verified
            storage.load_verified(f)
    out = cli(*args)
    recs = read_records(tmp_path / "r")
    assert len(recs) == 1 and recs[0].is_ok
    assert recs[0].gt_cached  # the ground truth finished before the fit-phase interrupt


def test_sigkill_mid_sweep_then_rerun_completes_without_recomputing(tmp_path, tried):
    tried("SIGKILL mid-sweep")
    args = ["-m", "method=random,grad_dot,grad_cos", *SMALL, f"cache_dir={tmp_path / 'cache'}",
            f"results_dir={tmp_path / 'r'}"]
    # killed as the second pairing starts scoring: exactly one pairing finished, whatever the load
    killed = cli(*args, env={"TDABENCH_FAULT": "score:KILL:2"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = read_records(tmp_path / "r")
    assert len(before) == 1 and before[0].is_ok
    out = cli(*args)
    after = read_records(tmp_path / "r")
    assert sorted(r.method for r in after) == ["grad_cos", "grad_dot", "random"]
    assert all(r.is_ok for r in after)
    assert after[: len(before)] == before  # finished pairings untouched, not recomputed
    assert out.stderr.count("already done") == len(before)


# ---------------------------------------------------------------- numerical faults --------------
def test_nan_in_model_parameters_is_never_an_ok_record(tmp_path, tried, monkeypatch):
    tried("NaN in model parameters")
    cfg = small_cfg(tmp_path, "method=grad_dot")
    task, _ = prepare(cfg)
    cls = type(task)
    original = cls.checkpoint

    def poisoned(self):
        model = original(self)
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
        return model

    monkeypatch.setattr(cls, "checkpoint", poisoned)
    rec = execute(cfg)  # a model with a NaN weight has a NaN test loss: stopped before the ground truth
    assert rec["status"] == "degenerate_model" and "test loss is nan" in rec["message"]
    assert rec["failed_phase"] == "prepare" and "scores_file" not in rec


def test_constant_scores_are_refused(tmp_path, tried, monkeypatch):
    tried("constant scores")
    from tdabench.methods.baselines import GradDot

    monkeypatch.setattr(GradDot, "score", lambda self, task, model: torch.ones(task.n_query, task.n_train))
    rec = execute(small_cfg(tmp_path, "method=grad_dot"))
    assert rec["status"] == "error" and "same value" in rec["message"]


def test_diverging_training_is_reported(tmp_path, tried):
    tried("diverging training")
    rec = execute(small_cfg(tmp_path, "method=grad_dot", "task.recipe.lr=1e6"))
    assert rec["status"] == "error" and "lower the task's learning rate" in rec["message"]
    assert rec["failed_phase"] == "prepare"


def test_time_limit_is_recorded_as_timeout(done, tmp_path, tried):
    tried("time limit")
    rec = execute(small_cfg(tmp_path, "method=exact_if", "limits.max_seconds=0.001"))
    assert rec["status"] == "timeout" and "limits.max_seconds" in rec["message"]


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tmp_path, tried, monkeypatch):
    tried("out of memory")
    from tdabench.methods.baselines import GradCos

    def oom(self, task, model):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(GradCos, "fit", oom)
    assert execute(small_cfg(tmp_path, "method=grad_cos"))["status"] == "oom"
    assert execute(small_cfg(tmp_path, "method=grad_dot"))["status"] == "ok"


# ---------------------------------------------------------------- concurrency -------------------
def test_two_sweeps_at_once_share_one_ground_truth(tmp_path, tried):
    tried("two concurrent sweeps on one cache")
    procs = [subprocess.Popen([str(BIN / "tdabench"), "-m", f"method={m}", *SMALL,
                               f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WANDB_MODE": "disabled"})
             for m in ("grad_dot,random", "grad_cos,exact_if")]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    trained = sum(e.count("ground truth digits_mlp") > 0 for e in errs)
    assert trained == 1  # exactly one process computed it; the other waited for the lock
    recs = read_records(tmp_path / "r")
    assert len(recs) == 4 and all(r.is_ok for r in recs)
    assert len({r.gt_key for r in recs}) == 1 and len({r.lds_ceiling for r in recs}) == 1


# ---------------------------------------------------------------- disks -------------------------
def test_full_disk_during_a_cache_write_keeps_the_old_file(tmp_path, tried, monkeypatch):
    tried("disk full while writing")
    path = storage.save_verified(torch.arange(10), tmp_path / "x.pt")
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space"):
        storage.save_verified(torch.arange(99), path)
    monkeypatch.undo()
    assert torch.equal(storage.load_verified(path), torch.arange(10))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("key", ["results_dir", "cache_dir"])
def test_unwritable_folders_are_refused_up_front(tmp_path, key, tried):
    tried(f"unwritable {key}")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    cfg = small_cfg(tmp_path, f"{key}={blocker / 'sub'}")
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert any(p.startswith(f"{key}:") and "not writable" in p for p in err.value.problems)


# ---------------------------------------------------------------- malformed overrides -----------
MALFORMED = [
    ("gt.alpha=1", "gt.alpha"), ("gt.alpha=-0.5", "gt.alpha"), ("gt.alpha=half", "gt.alpha"),
    ("gt.subsets=0", "gt.subsets"), ("gt.subsets=2.5", "gt.subsets"), ("gt.subsets=many", "gt.subsets"),
    ("gt.seeds=-1", "gt.seeds"), ("gt.seeds=null", "gt.seeds"), ("gt.num_shards=0", "gt.num_shards"),
    ("gt.shard=3", "gt.shard"), ("gt.shard=-1", "gt.shard"), ("gt.from_checkpoint=maybe", "gt.from_checkpoint"),
    ("seed=abc", "seed="), ("seed=1.5", "seed="), ("task.n_train=0", "task.n_train"),
    ("task.n_train=ten", "task.n_train"), ("task.n_query=0", "task.n_query"),
    ("task.n_train=1700", "larger than the data"), ("task.observable=accuracy", "task.observable"),
    ("wandb.mode=loud", "wandb.mode"), ("limits.max_seconds=0", "limits.max_seconds"),
    ("limits.max_seconds=-5", "limits.max_seconds"), ("lds.bootstrap=0", "lds.bootstrap"),
    ("device=tpu", "device="), ("force=perhaps", "force="), ("threads=0", "threads="),
    ("+method.bogus=1", "has no parameter bogus"),
]


@pytest.mark.parametrize("override,expected", MALFORMED, ids=[o for o, _ in MALFORMED])
def test_malformed_override_gives_one_clear_line(tmp_path, override, expected, tried):
    tried(f"malformed override {override}")
    cfg = small_cfg(tmp_path, "method=grad_dot", override)
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert len(err.value.problems) == 1, err.value.problems
    assert expected in err.value.problems[0]


def test_too_little_disk_for_the_ground_truth_is_refused_up_front(tmp_path, tried, monkeypatch):
    tried("disk too small for the ground truth")
    import tdabench.harness.engine.config as config

    monkeypatch.setattr(config, "free_disk_mb", lambda path: 50.0)
    with pytest.raises(ConfigError) as err:
        prepare(small_cfg(tmp_path, "method=grad_dot"))
    assert any("MiB free" in p and "cache_dir" in p for p in err.value.problems)
