"""Files and settings that cannot be trusted: planted pickles execute nothing, a record's scores file
stays inside its folder, invalid records are skipped and never ranked, every typed setting is
refused before any folder exists, and statuses and exit codes tell the truth."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tdabench.harness.core.settings import settings_problems
from tdabench.harness.core.storage import CorruptFileError, load_verified, save_verified
from tdabench.harness.engine import sweep_jobs
from tdabench.harness.engine.cli import precheck, sweep_summary
from tdabench.harness.engine.run import execute, out_of_memory, pairing_lock, prepare
from tdabench.harness.engine.writing import complete_pending_writes, pending_dirs, pending_records, write_result
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.read.record import RunRecord, scores_path
from tdabench.harness.read.results import append_record, read_records
from tests.reliability.conftest import small_cfg, terminal_sigint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Planted:
    """Unpickling it would create the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    """A torch.save pickle at ``path`` that creates ``marker`` when unpickled, with its checksum."""
    buf = io.BytesIO()
    torch.save({"record": Planted(marker), "record_json": "{}", "scores": Planted(marker),
                "results_dir": "/nowhere"}, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    Path(f"{path}.sha256").write_text(hashlib.sha256(buf.getvalue()).hexdigest())


def test_a_planted_pickle_is_refused_and_runs_nothing(tmp_path, tried):
    tried("a pickle that runs code, with a matching checksum")
    marker = tmp_path / "ran"
    plant(tmp_path / "x.pt", marker)
    with pytest.raises(CorruptFileError, match="as data"):
        load_verified(tmp_path / "x.pt")
    assert not marker.exists()


def test_planted_pending_files_run_nothing_and_the_pending_folder_is_private(tmp_path, tried, monkeypatch):
    tried("a pickle planted in the cache's pending folder")
    tried("a pending folder in the temporary folder that is open to others")
    marker = tmp_path / "ran"
    plant(tmp_path / "cache" / "pending" / "planted.pt", marker)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    shared = tmp_path / "tmp" / f"tdabench-pending-{os.getuid()}"
    shared.mkdir(parents=True, mode=0o777)
    shared.chmod(0o777)  # writable by everyone: never used
    assert complete_pending_writes(tmp_path / "r", tmp_path / "cache") == 0
    assert not marker.exists()
    assert pending_dirs(tmp_path / "cache") == [tmp_path / "cache" / "pending"]
    shared.chmod(0o700)
    assert pending_dirs(tmp_path / "cache")[1] == shared


def test_scores_file_outside_the_results_folder_is_refused(tmp_path, tried):
    tried("a record whose scores_file leads outside its results folder")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "link.pt").symlink_to(tmp_path / "outside.pt")
    for bad in ("../outside.pt", str(tmp_path / "outside.pt"), "link.pt", ""):
        with pytest.raises(ValueError):
            scores_path(tmp_path / "r", bad)
    assert scores_path(tmp_path / "r", "scores/a.pt") == (tmp_path / "r" / "scores" / "a.pt").resolve()


INVALID = [("lds", "0.5"), ("lds", float("inf")), ("lds", 7.5), ("config", "oops"), ("lds_ci", "x"),
           ("lds_ci", [0.9, 0.95]), ("lds_ci", [0.5, 0.1]), ("status", "fine"), ("n_train", "many"),
           ("scores_file", "../../x.pt"), ("metrics", {"loo": {"value": 0.3, "ci": [0.5, 0.6]}})]


def test_invalid_records_are_skipped_with_the_reason(done, tmp_path, tried, caplog):
    base, rec = done
    lines = [json.dumps(rec)]
    for i, (key, value) in enumerate(INVALID):
        tried(f"a record with {key}={value!r}")
        lines.append(json.dumps(dict(rec, run_id=f"bad{i}", **{key: value})))
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    assert [r.run_id for r in read_records(tmp_path)] == [rec["run_id"]]
    text = caplog.text
    assert "an invalid record: lds='0.5'" in text and "lds=7.5 lies outside [-1, 1]" in text
    assert "does not hold the value" in text and "not one of ok" in text


def test_a_pairing_with_only_invalid_records_runs_again(done, tmp_path, tried):
    tried("a pairing whose only record is invalid")
    base, rec = done
    append_record(tmp_path / "r", dict(rec, lds=7.5))
    cfg = small_cfg(tmp_path, "method=grad_dot")
    cfg["cache_dir"] = str(base / "cache")
    again = execute(cfg)
    assert again["status"] == "ok" and again["run_id"] != rec["run_id"]
    assert [r.run_id for r in read_records(tmp_path / "r")] == [again["run_id"]]


def test_a_pending_record_counts_as_done(done, tmp_path, tried, monkeypatch):
    tried("a run while an identical result is still pending")
    base, rec = done
    from tdabench.harness.engine import writing

    def full(*args):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(writing, "_save", full)
        assert not write_result(RunRecord.from_dict(rec), None, tmp_path / "r", tmp_path / "cache")
    assert [r.run_id for r in pending_records(tmp_path / "r", tmp_path / "cache")] == [rec["run_id"]]
    cfg = small_cfg(tmp_path, "method=grad_dot")
    assert execute(cfg)["run_id"] == rec["run_id"]  # written from pending, nothing recomputed
    # the lock is keyed by what the runs share: the results folder and the pairing, whatever the cache
    assert pairing_lock(cfg["cache_dir"], tmp_path / "r", "h") == pairing_lock(tmp_path / "other", tmp_path / "r", "h")
    assert pairing_lock(cfg["cache_dir"], tmp_path / "r", "h") != pairing_lock(cfg["cache_dir"], tmp_path / "r", "g")


def test_the_writer_builds_only_declared_fields():
    with pytest.raises(TypeError):
        RunRecord.new(run_id="x", undeclared=1)
    record = RunRecord.new(run_id="x", lds=None)
    with pytest.raises(TypeError):
        record.update(undeclared=1)
    assert record.as_dict() == {"schema_version": 2, "run_id": "x", "lds": None}  # set to None: written
    assert RunRecord.from_dict(record.as_dict()).as_dict() == record.as_dict() and record.traceback is None


BAD_SETTINGS = ["gt.vectorize=abc", "gt.models_per_batch=abc", "gt.models_per_batch=0", "gt.num_shards=7",
                "gt.alpha=nan", "limits.max_seconds=nan", "limits.max_seconds=inf", "lds.min_ceiling=nan",
                "tune.trials=-1", "tune.max_cpu_s=inf", "tune.val_subsets=1", "loo.samples=0", "loo.seeds=abc",
                "mislabel.fraction=1.5", "metric=5", "cost.count=sometimes", "threads=0", "force=maybe"]


@pytest.mark.parametrize("override", BAD_SETTINGS)
def test_each_typed_setting_is_refused_in_one_line(tmp_path, override, tried):
    tried(f"typed setting {override}")
    problems = settings_problems(small_cfg(tmp_path, "method=grad_dot", override))
    assert len(problems) == 1 and problems[0].startswith(override.split("=")[0]), problems
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists()


def test_metric_takes_a_name_or_a_list(tmp_path):
    assert not settings_problems(small_cfg(tmp_path, "method=grad_dot", "metric=[lds,loo]"))


def test_late_settings_are_refused_before_any_folder_exists(tmp_path, tried):
    tried("gt.num_shards above gt.subsets on the command line")
    tried("a swept value of a typed setting")
    tried("a task setting refused in a sweep, before Hydra's folder and wandb_group.json")
    for extra in (["gt.num_shards=25"], ["-m", "gt.models_per_batch=4,abc"],
                  ["-m", "method=grad_dot,grad_cos", "task.recipe.lr=abc"]):
        out = subprocess.run([str(BIN / "tdabench"), "method=grad_dot", "gt.subsets=20", "wandb.mode=disabled",
                              f"cache_dir={tmp_path / 'c'}", f"results_dir={tmp_path / 'r'}", *extra],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_path_with_a_space_gets_a_hint_and_runs_jsonl_must_be_a_file(tmp_path, tried):
    tried("an unquoted path with a space")
    tried("runs.jsonl that is a folder")
    problems = precheck([f"results_dir={tmp_path}/my", "results"])  # the shell split the path
    assert len(problems) == 1 and f"'results_dir=\"{tmp_path}/my results\"'" in problems[0], problems
    (tmp_path / "r" / "runs.jsonl").mkdir(parents=True)
    problems = precheck([f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"])
    assert len(problems) == 1 and "runs.jsonl is not a file" in problems[0], problems


def test_cpu_allocation_failure_is_oom(tmp_path, tried, monkeypatch):
    tried("out of memory on the CPU")
    from tdabench.methods.baselines import GradCos

    message = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate"
    assert out_of_memory(RuntimeError(message)) and not out_of_memory(RuntimeError("shape mismatch"))

    def oom(self, task, model):
        raise RuntimeError(message)

    monkeypatch.setattr(GradCos, "fit", oom)
    assert execute(small_cfg(tmp_path, "method=grad_cos"))["status"] == "oom"


def test_same_seed_partial_ground_truth_is_resumed(tmp_path, tried):
    tried("an interrupted same-seed ground truth")
    task, _ = prepare(small_cfg(tmp_path, "method=grad_dot", "gt.same_seed=true", "gt.seeds=3"))
    cfg = small_cfg(tmp_path, "method=grad_dot", "gt.same_seed=true", "gt.seeds=3")
    builder = GroundTruthBuilder(task, cfg["gt"], cfg["cache_dir"])
    path = builder.partial_path(0, 1)
    save_verified({"ids": [0, 1], "outcomes": torch.zeros(2, 1, task.n_query),
                   "degenerate": torch.zeros(2, 1, dtype=torch.bool)}, path)
    assert builder._resume(path, list(range(6))).ids == [0, 1]


def test_sweep_summary_counts_statuses_and_fails_on_failures(done, tmp_path, tried, capsys, monkeypatch):
    tried("a sweep in which a run timed out")
    base, rec = done
    append_record(tmp_path, dict(rec, run_id="old"))
    before = {"old"}
    monkeypatch.setenv(sweep_jobs.ENV, "")  # restored after the test
    token = sweep_jobs.start()
    sweep_jobs.note(tmp_path, "old")  # a pairing finished before: its record is no new run
    for i, status in enumerate(("ok", "unsupported")):
        append_record(tmp_path, dict(rec, run_id=f"n{i}", status=status))
        sweep_jobs.note(tmp_path, f"n{i}")
    # a concurrent sweep's records, appended meanwhile, are not this sweep's
    append_record(tmp_path, dict(rec, run_id="theirs", status="error", lds=None, lds_ci=None))
    ours = sweep_jobs.finish(tmp_path, token)
    assert ours == {"old", "n0", "n1"} and not (tmp_path / ".sweeps" / f"{token}.ids").exists()
    assert sweep_summary(tmp_path, before, ours) == 0
    append_record(tmp_path, dict(rec, run_id="t", status="timeout", lds=None, lds_ci=None))
    assert sweep_summary(tmp_path, before, ours | {"t"}) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("[tdabench] sweep: 1 ok, 1 timeout, 1 unsupported"), last


def test_ctrl_c_during_start_up_is_one_line(tmp_path, tried):
    tried("Ctrl-C while the command imports its libraries")
    proc = subprocess.Popen([str(BIN / "tdabench"), "method=grad_dot", f"results_dir={tmp_path / 'r'}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=terminal_sigint)
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err


def test_missing_cifar_files_without_network_are_one_line_naming_data_root(tmp_path, tried, monkeypatch):
    tried("CIFAR-10 files missing and no network")
    from tdabench.tasks import cifar

    monkeypatch.setattr(cifar, "reachable", lambda host: False)
    with pytest.raises(FileNotFoundError) as err:
        cifar.ImageSource.torchvision(tmp_path / "tv", True, cifar.CIFAR10_CLASSES)
    text = str(err.value)
    assert "\n" not in text and "data_root" in text and "TDABENCH_DATA" in text and cifar.ARCHIVE in text
    assert not (tmp_path / "tv").exists()  # no download was attempted
