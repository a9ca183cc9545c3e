"""Validation queries, search spaces and tuning with Optuna (tune.trials)."""

from __future__ import annotations

import optuna
import pytest
import torch

from tdabench.harness.core.registry import METHODS
from tdabench.harness.core.settings import settings_of, settings_problems
from tdabench.harness.engine.run import config_hash, execute, prepare, study_key
from tdabench.harness.engine.tuning import TuningFailed, tune
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.plugin.space import Categorical, Float, Int, default_point, space_problems, to_param
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.record_view import record_setting
from tdabench.harness.read.tracking import summary_of

QUICK = ["task=digits_mlp", "task.n_train=200", "gt.subsets=20", "gt.seeds=2", "tune.val_subsets=20",
         "tune.val_seeds=2", "threads=1", "wandb.mode=disabled", "cost.count=off", "lds.bootstrap=50"]


def _cfg(tmp_path, *args):
    from tdabench.harness.engine.compose import compose

    return compose([*QUICK, *args, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"])


def test_validation_queries_are_disjoint_and_the_test_split_unchanged(small_digits):
    before = small_digits.query_split.inputs.clone()
    view = small_digits.validation_view()
    test_ids, val_ids = small_digits.query_ids(), view.query_ids()
    assert len(val_ids) == len(test_ids) == small_digits.n_query
    assert not set(test_ids) & set(val_ids)
    train_rows = {tuple(r.tolist()) for r in small_digits.train_split.inputs}
    assert not any(tuple(r.tolist()) in train_rows for r in view.query_split.inputs)
    assert torch.equal(small_digits.query_split.inputs, before)  # the task itself is untouched
    assert torch.equal(view.train_split.inputs, small_digits.train_split.inputs)
    assert view.fingerprint() != small_digits.fingerprint()
    assert view.models is small_digits.models  # the same trained and cached models ...
    assert view.cache_path("f", "x", {}) != small_digits.cache_path("f", "x", {})  # ... own method caches
    gt = {"subsets": 4, "alpha": 0.5, "seeds": 1, "from_checkpoint": False, "finetune_epochs": 5,
          "shard": None, "num_shards": 1}
    test_b, val_b = GroundTruthBuilder(small_digits, gt, "/tmp/x"), GroundTruthBuilder(view, gt, "/tmp/x")
    assert val_b.dir.name.startswith("digits_mlp-val-") and val_b.dir != test_b.dir
    assert not torch.equal(val_b.masks, test_b.masks)  # subsets from another seed


@pytest.mark.parametrize("name", METHODS.names())
def test_every_search_space_contains_the_default(name):
    cls = METHODS.get(name)
    assert space_problems(cls) == []
    digits = {"bif": {"chains": 8, "draws": 400, "burn_in": 200, "eps": 3.0e-4}, "trak": {"proj_dim": 128}}
    assert space_problems(cls, params={**cls.defaults(), **digits.get(name, {})}) == []


def test_space_problems_and_multiples_of_n_train():
    class Fake:
        name = "fake"
        search_space = {"a": Float(1.0, 2.0), "b": Int(0, 3), "missing": Categorical((1, 2)), "c": (1, 2)}

        @staticmethod
        def parameters():
            return ["a", "b", "c"]

        @staticmethod
        def defaults():
            return {"a": 5.0, "b": 2, "c": 1}

    problems = space_problems(Fake)
    assert any("missing" in p for p in problems) and any("a=5.0" in p for p in problems)
    assert any("['c'] = (1, 2) is not a Float, Int or Categorical" in p for p in problems)
    nbeta = Float(0.1, 10.0, log=True, per_n_train=True, null=1.0)
    assert default_point({"nbeta": nbeta}, {"nbeta": None}, 200) == {"nbeta": 1.0}
    assert to_param(nbeta, 0.5, 200) == 100.0


def tune_problems(tune: dict) -> list[str]:
    return settings_problems({"tune": tune})


def test_tune_settings_are_checked():
    assert tune_problems({"trials": -1, "val_subsets": 1, "val_seeds": 0, "max_cpu_s": 0,
                          "storage": "studies.db"})[4].startswith("tune.storage=")
    assert len(tune_problems({"trials": -1, "val_subsets": 1, "val_seeds": 0})) == 3
    assert tune_problems({"select_cpu_s": float("nan")})[0].startswith("tune.select_cpu_s=nan")
    assert tune_problems({"trials": 4, "val_subsets": 20, "val_seeds": 2, "storage": "s.journal"}) == []


def test_untuned_config_hash_ignores_tune(tmp_path):
    plain = _cfg(tmp_path, "method=ekfac")
    changed = _cfg(tmp_path, "method=ekfac", "tune.val_subsets=30")
    assert config_hash(plain) == config_hash(changed)
    tuned4, tuned6 = _cfg(tmp_path, "method=ekfac", "tune.trials=4"), _cfg(tmp_path, "method=ekfac", "tune.trials=6")
    assert config_hash(tuned4) != config_hash(plain) and config_hash(tuned4) != config_hash(tuned6)
    assert study_key(tuned4) == study_key(tuned6)  # more trials continue the same study


def test_tuner_never_reads_the_test_ground_truth_and_resumes(tmp_path, monkeypatch):
    built = []
    real = GroundTruthBuilder.build

    def spy(self):
        built.append(self.task.queries)
        return real(self)

    monkeypatch.setattr(GroundTruthBuilder, "build", spy)
    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=2")
    task, method = prepare(cfg)
    first = tune(task, type(method), cfg, study_key(cfg))
    assert built == ["validation"]
    assert first.info.best_params.keys() == {"damping"} and first.info.trials == 2
    assert not set(first.info.val_query_ids) & set(task.query_ids())
    study = optuna.load_study(study_name=first.info.study, storage=first.info.storage)
    assert study.trials[0].params == {"damping": 0.1}  # the default comes first
    more = {**cfg, "tune": {**cfg["tune"], "trials": 3}}
    tune(task, type(method), more, study_key(more))
    study = optuna.load_study(study_name=first.info.study, storage=first.info.storage)
    assert len(study.trials) == 3 and len({t.params["damping"] for t in study.trials}) == 3
    # the tuned frontier chooses from the same study under a CPU cap, running no new trial
    capped = {**more, "tune": {**more["tune"], "select_cpu_s": 1e-9}}
    assert study_key(capped) == study_key(more)
    with pytest.raises(TuningFailed, match="select_cpu_s"):
        tune(task, type(method), capped, study_key(capped))
    loose = {**more, "tune": {**more["tune"], "select_cpu_s": 1e9}}
    chosen = tune(task, type(method), loose, study_key(loose))
    assert chosen.info.best_trial == study.best_trial.number and chosen.info.best_cpu_s > 0
    assert "chosen at <= 1e+09 CPU s" in record_setting(RunRecord(tuned=chosen.info.as_dict()))
    rung = RunRecord(method="ekfac", tuned=chosen.info.as_dict(),
                     config={"method": {"name": "ekfac", "damping": 3.0, "max_examples": 100}})
    # the chosen value and a rung are in the label
    assert record_setting(rung).endswith(") damping=3 max_examples=100")


def test_tuned_run_record_and_journal_storage(tmp_path):
    journal = tmp_path / "s" / "studies.journal"
    rec = execute(_cfg(tmp_path, "method=ekfac", "tune.trials=2", f"tune.storage={journal}",
                       "tune.max_cpu_s=1000"))
    assert rec["status"] == "ok" and rec["split"] == "test" and len(rec["query_ids"]) == 100
    t = rec["tuned"]
    assert t["storage"] == str(journal) and journal.exists() and t["val_gt_key"] != rec["gt_key"]
    assert rec["config"]["method"]["damping"] == t["best_params"]["damping"]
    typed = RunRecord.from_dict(rec)
    chosen = t["best_params"]["damping"]
    assert record_setting(typed) == f"tuned (2 trials, <= 1000 CPU s per trial) damping={chosen:g}"
    assert summary_of(typed)["val_lds"] == t["val_lds"] and summary_of(typed)["tune_trials"] == 2
    untuned = execute(_cfg(tmp_path, "method=ekfac"))
    assert untuned["gt_key"] == rec["gt_key"] and untuned["query_ids"] == rec["query_ids"]
    assert "tuned" not in untuned


def test_a_trial_over_the_cpu_cap_fails(tmp_path):
    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=1", "tune.max_cpu_s=1e-6")
    rec = execute(cfg)
    assert rec["status"] == "error" and "no trial of study" in rec["message"]
    assert "tune.max_cpu_s" in rec["message"]


def test_a_refused_setting_reports_the_worst_lds_and_is_never_chosen(tmp_path, monkeypatch):
    from tdabench.harness.engine import tuning

    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=6")
    task, method = prepare(cfg)
    cls = type(method)
    # refuse half of the damping range (log scale, 1e-4 to 10), as TRAK refuses a projection
    # larger than the training set without a ridge
    monkeypatch.setattr(cls, "check", lambda self, t: ["damping too small"] if self.damping < 0.03 else [])
    chosen = tune(task, cls, cfg, study_key(cfg))
    study = optuna.load_study(study_name=chosen.info.study, storage=chosen.info.storage)
    refused = [t for t in study.trials if "refused" in t.user_attrs]
    assert refused and all(t.params["damping"] < 0.03 for t in refused)
    assert all(t.value == tuning.REFUSED_VALUE and t.state == optuna.trial.TrialState.COMPLETE for t in refused)
    assert chosen.info.best_params["damping"] >= 0.03
    assert chosen.info.refused_trials == len(refused)
    assert chosen.info.completed_trials == len(study.trials) - len(refused)


def test_a_tuned_run_goes_on_when_only_its_default_setting_is_refused(tmp_path, monkeypatch):
    from tdabench.harness.engine.run import UnsupportedPairingError

    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=2")
    task, method = prepare(cfg)
    cls, default = type(method), method.damping
    monkeypatch.setattr(cls, "check", lambda self, t: ["this damping is refused"] if self.damping == default else [])
    prepare(cfg)  # tuned: the space holds settings the check passes, so the run goes on
    with pytest.raises(UnsupportedPairingError, match="this damping is refused"):
        prepare(_cfg(tmp_path, "method=ekfac"))  # untuned: the refused default is the run
    monkeypatch.setattr(cls, "check", lambda self, t: ["no damping works"])
    with pytest.raises(UnsupportedPairingError, match="no damping works"):
        prepare(cfg)  # no setting passes: refused before any ground truth is built
    assert not (tmp_path / "cache" / "ground_truth").exists()


def test_accepted_setting_draws_points_of_the_space_within_their_ranges():
    import random

    from tdabench.harness.plugin.space import accepted_setting

    space = {"a": Float(1e-3, 10.0, log=True), "b": Int(1, 20, log=True), "c": Categorical(("x", "y")),
             "d": Float(0.1, 10.0, log=True, per_n_train=True)}
    rng = random.Random(0)
    for _ in range(200):
        assert all(dim.contains(dim.draw(rng)) for dim in space.values())
    base = {"a": 1.0, "b": 5, "c": "x", "d": None}
    assert accepted_setting(space, base, 100, lambda p: True) == base  # the default first
    found = accepted_setting(space, base, 100, lambda p: p["c"] == "y" and p["a"] < 0.01)
    assert found["c"] == "y" and found["a"] < 0.01 and 10 <= found["d"] <= 1000  # d in units of n_train
    assert accepted_setting(space, base, 100, lambda p: False) is None


def test_the_choice_waits_for_another_workers_running_trial(tmp_path):
    import threading
    import time

    from tdabench.harness.engine.tuning import patience_s, wait_for_other_workers, worker_id

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.1))
    other = study.ask()  # another worker's trial, still running
    threading.Timer(0.5, lambda: study.tell(other, 0.9)).start()
    start = time.monotonic()
    wait_for_other_workers(study, "s", patience=60, poll_s=0.05)
    assert time.monotonic() - start >= 0.4  # it waited for the trial ...
    assert max(t.value for t in study.trials if t.value is not None) == 0.9  # ... so the choice sees it
    study.ask()  # a trial a killed worker left running is not waited for beyond the patience
    start = time.monotonic()
    wait_for_other_workers(study, "s", patience=0.3, poll_s=0.05)
    assert 0.2 <= time.monotonic() - start < 10
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):  # its worker on this host exited
        study._storage.set_trial_user_attr(t._trial_id, "worker", f"{worker_id().rpartition(':')[0]}:{gone}")
    start = time.monotonic()
    wait_for_other_workers(study, "s", patience=60, poll_s=0.05)
    assert time.monotonic() - start < 5  # not waited for
    alive = study.ask()
    study._storage.set_trial_user_attr(alive._trial_id, "worker", worker_id())  # a live worker is waited for
    threading.Timer(0.3, lambda: study.tell(alive, 0.5)).start()
    start = time.monotonic()
    wait_for_other_workers(study, "s", patience=60, poll_s=0.05)
    assert time.monotonic() - start >= 0.2
    cfg = {"tune": {"max_cpu_s": 100}, "limits": {"max_seconds": None}}
    assert patience_s(settings_of(cfg)) == 460.0
    assert patience_s(settings_of({**cfg, "limits": {"max_seconds": 50}})) == 110.0


def test_the_cpu_cap_stops_a_trial_when_it_is_reached():
    import time

    from tdabench.harness.engine.interrupts import CpuLimitExceeded, cpu_limit

    start = time.process_time()
    with pytest.raises(CpuLimitExceeded, match="over the cap"):
        with cpu_limit(0.3, "over the cap"):
            while time.process_time() - start < 30:  # a trial that would run 30 CPU s
                sum(range(1000))
    assert time.process_time() - start < 5  # stopped at the cap, not at the end
    with cpu_limit(5.0):  # a block within its cap ends normally and leaves no timer behind
        pass
    import signal

    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)


def test_an_interrupted_trial_is_run_again_on_resume(tmp_path, monkeypatch):
    from tdabench.harness.engine import tuning
    from tdabench.harness.engine.interrupts import UserInterrupt

    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=2")
    task, method = prepare(cfg)

    def stop(*args):
        raise UserInterrupt("Ctrl-C")

    with monkeypatch.context() as m:
        m.setattr(tuning, "_evaluate", stop)
        with pytest.raises(UserInterrupt):
            tune(task, type(method), cfg, study_key(cfg))
    done = tune(task, type(method), cfg, study_key(cfg))
    study = optuna.load_study(study_name=done.info.study, storage=done.info.storage)
    assert [t.user_attrs.get("interrupted", False) for t in study.trials] == [True, False, False]
    # the default is enqueued again, after the start-up point that waited; it is marked as the default
    assert study.trials[2].params == {"damping": 0.1} and study.trials[2].user_attrs["default"]
    assert [t["default"] for t in done.info.trial_log] == [False, False, True]
    assert done.info.completed_trials == 2


def test_a_trial_whose_worker_was_killed_is_marked_failed_and_not_counted_on_resume(tmp_path):
    import signal
    import subprocess
    import sys

    from tdabench.harness.engine.studies import fail_killed_trials
    from tdabench.harness.engine.tuning import _counted

    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="s", storage=url, direction="maximize")
    worker = ("import os, signal, optuna\n"
              "from tdabench.harness.engine.studies import worker_id\n"
              f"s = optuna.load_study(study_name='s', storage={url!r})\n"
              "t = s.ask(); t.set_user_attr('worker', worker_id())\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING] and _counted(study) == 1
    assert fail_killed_trials(study, "s") == 1
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] and _counted(study) == 0
    assert fail_killed_trials(study, "s") == 0


def test_the_default_study_storage_waits_for_a_busy_database(tmp_path):
    import sqlite3

    from tdabench.harness.engine.tuning import storage_of

    storage, where = storage_of(settings_of({"results_dir": str(tmp_path), "tune": {"storage": None}}))
    assert where == f"sqlite:///{tmp_path.resolve() / 'studies.db'}"
    blocker = sqlite3.connect(tmp_path / "studies.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another worker's write in progress
    import threading

    threading.Timer(6.0, blocker.rollback).start()  # longer than SQLite's default 5 s wait
    study = optuna.create_study(study_name="busy", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.1))
    assert len(study.trials) == 1


def test_the_cpu_cap_landing_in_a_weakref_callback_is_no_unraisable_warning(monkeypatch):
    import sys
    import time
    import weakref

    from tdabench.harness.engine.interrupts import CpuLimitExceeded, cpu_limit

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    class Held:
        pass

    def slow_callback(_):  # the first signals land here, where Python cannot raise
        start = time.process_time()
        while time.process_time() - start < 1.5:
            sum(range(1000))

    with pytest.raises(CpuLimitExceeded):
        with cpu_limit(0.3, "over the cap"):
            held = Held()
            ref = weakref.ref(held, slow_callback)
            del held
            while True:  # a later signal stops the block
                sum(range(1000))
    assert ref() is None and not seen, seen
    assert sys.unraisablehook == seen.append  # the hook of the block is gone


def test_shard_runs_compute_the_validation_ground_truth_too(tmp_path, monkeypatch):
    """With tune.trials set, each gt.shard run computes its share of the validation ground truth,
    so the tuned run after the shard jobs retrains nothing."""
    base = ["method=ekfac", "tune.trials=2", "gt.subsets=6", "tune.val_subsets=4", "gt.num_shards=3"]
    for i in range(3):
        assert execute(_cfg(tmp_path, *base, f"gt.shard={i}")) is None
    val = [p.name for p in (tmp_path / "cache" / "ground_truth").glob("*val-*/shard-*-of-3.pt")]
    assert sorted(val) == [f"shard-{i}-of-3.pt" for i in range(3)]
    retrained = []
    monkeypatch.setattr(GroundTruthBuilder, "_retrain", lambda self, subsets: retrained.append(subsets))
    record = execute(_cfg(tmp_path, *base))
    assert record["status"] == "ok" and retrained == []


def test_quasi_random_start_up_spreads_over_the_space():
    from tdabench.harness.plugin.space import quasi_random_points, startup_trials

    assert [startup_trials(b) for b in (1, 2, 8, 12, 16, 64, 1000)] == [1, 2, 4, 4, 5, 9, 16]
    space = {"a": Float(1e-4, 1.0, log=True), "b": Int(0, 7), "c": Categorical(("x", "y"))}
    points = quasi_random_points(space, 8, seed=3)
    assert points == quasi_random_points(space, 8, seed=3) != quasi_random_points(space, 8, seed=4)
    assert all(space[k].contains(v) for p in points for k, v in p.items())
    # a Sobol' net of 8 points puts one point in each eighth of every dimension (log scale for a)
    import math
    assert sorted(int((math.log10(p["a"]) + 4) / 4 * 8) for p in points) == list(range(8))
    assert sorted(p["b"] for p in points) == list(range(8))
    assert sorted(p["c"] for p in points) == ["x"] * 4 + ["y"] * 4


def test_a_task_redeclares_a_search_space_and_the_study_starts_quasi_randomly(tmp_path):
    from tdabench.harness.plugin.space import space_for
    from tdabench.tasks.cifar import CifarResNet9

    bif = METHODS.get("bif")
    assert space_for(bif)["eps"].times == "nbeta" and space_for(bif, CifarResNet9)["eps"].high == 5e-4
    assert space_for(bif, CifarResNet9)["eps"].times is None  # CIFAR searches eps itself
    assert space_for(bif, CifarResNet9, "tpe") == bif.earlier_search_space != bif.search_space
    assert space_for(bif, CifarResNet9)["burn_in"] is CifarResNet9.search_spaces["bif"]["burn_in"]
    assert space_problems(bif, 500, {**bif.defaults(), "eps": 1e-3}, CifarResNet9)[0].startswith(
        "method bif: search_space['eps'] = [1e-05, 0.0005] log does not contain")
    cfg = _cfg(tmp_path, "method=ekfac", "tune.trials=8")
    task, method = prepare(cfg)
    info = tune(task, type(method), cfg, study_key(cfg)).info
    study = optuna.load_study(study_name=info.study, storage=info.storage)
    first = [t.params["damping"] for t in study.trials[:4]]
    assert first[0] == 0.1 and all(t.system_attrs.get("fixed_params") for t in study.trials[:4])
    assert not study.trials[4].system_attrs.get("fixed_params")  # TPE from the fifth trial on
    # the damping's log range [1e-4, 10] in quarters: the three start-up points fall in three of them
    import math
    assert len({int((math.log10(d) + 4) / 5 * 4) for d in first[1:]}) == 3
    old = _cfg(tmp_path, "method=ekfac", "tune.trials=8", "tune.sampler=tpe")
    plain = {**old, "tune": {k: v for k, v in old["tune"].items() if k != "sampler"}}
    assert config_hash(old) == config_hash(plain)  # records from before the setting keep their hash
    assert config_hash(cfg) != config_hash(old) and study_key(cfg) != study_key(old)


def test_the_committed_tuned_sweeps_keep_their_config_hash():
    """The sweeps of the committed tuned folders pin the earlier tuning (tune.sampler=tpe), so their
    commands find the committed records (same config hash) and rerun studies as they ran."""
    import json
    from pathlib import Path

    from tdabench.harness.engine.compose import compose

    folder = Path(__file__).resolve().parents[1] / "results" / "reference" / "small_data_digits"
    recs = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    rec = next(r for r in recs if r["method"] == "bif" and r["n_train"] == 100 and r["config"]["seed"] == 0)
    cfg = compose(["+sweep=small_data_digits_tuned", "method=bif", "task.n_train=100", "seed=0", "threads=1",
                   "wandb.mode=disabled", "cost.count=off",
                   "tune.storage=results/reference/small_data_digits/studies.journal"])  # as its README ran it
    assert cfg["tune"]["sampler"] == "tpe" and config_hash(cfg) == rec["config_hash"]
    assert config_hash({**cfg, "tune": {**cfg["tune"], "sampler": "quasi_tpe"}}) != rec["config_hash"]


def test_a_product_dimension_tunes_the_bif_step_and_a_changed_space_is_refused(tmp_path, monkeypatch):
    """The BIF searches eps * nbeta (the SGLD step on the mean loss) and sets eps to it over nbeta;
    the study names the dimension eps*nbeta, and a study run over another space is not continued."""
    from tdabench.harness.plugin.space import to_params, trial_name
    from tdabench.methods import bif_spaces as bif_module

    step = Float(0.01, 1.0, log=True, times="nbeta")
    nbeta = Float(0.05, 4.0, log=True, per_n_train=True, null=1.0)
    space = {"eps": step, "nbeta": nbeta}
    assert trial_name("eps", step) == "eps*nbeta" and trial_name("nbeta", nbeta) == "nbeta"
    assert default_point(space, {"eps": 3e-4, "nbeta": None}, 200) == {"eps": pytest.approx(0.06), "nbeta": 1.0}
    assert to_params(space, {"eps": 0.3, "nbeta": 0.5}, 200) == {"nbeta": 100.0, "eps": pytest.approx(0.003)}

    class Fake:
        name = "fake"
        search_space = {"eps": step}  # a product with a parameter the space lacks

        @staticmethod
        def parameters():
            return ["eps", "nbeta"]

        @staticmethod
        def defaults():
            return {"eps": 1e-4, "nbeta": None}

    assert "is a product with 'nbeta', which is not a Float or Int dimension" in space_problems(Fake)[0]
    too_small = space_problems(METHODS.get("bif"), 50)  # the class default eps=1e-4 at 50 images: step 0.005
    assert too_small and "(eps*nbeta = 0.005)" in too_small[0] and "widen the range" in too_small[0]

    cfg = _cfg(tmp_path, "method=bif", "tune.trials=3", "method.chains=2", "method.draws=10", "method.burn_in=5")
    task, method = prepare(cfg)
    info = tune(task, type(method), cfg, study_key(cfg)).info
    log = info.trial_log
    assert {k for t in log for k in t["params"]} == {"gamma", "eps*nbeta", "nbeta", "burn_in", "steps_between_draws"}
    assert log[0]["default"] and log[0]["params"]["eps*nbeta"] == pytest.approx(3e-4 * 200)  # digits' eps, nbeta = n
    best = next(t for t in log if t["number"] == info.best_trial)["params"]
    assert info.best_params["eps"] == pytest.approx(best["eps*nbeta"] / (best["nbeta"] * 200))
    assert info.search_space["eps"] == "[0.02, 1] times nbeta log"
    monkeypatch.setattr(type(method), "search_space", bif_module.BIF_SPACE_CENTRED)
    with pytest.raises(TuningFailed, match=r"run over another search space \(its trials name eps\*nbeta; .*delete"):
        tune(task, type(method), cfg, study_key(cfg))
    monkeypatch.setattr(type(method), "search_space", {**bif_module.BIF_SPACE, "gamma": Float(5.0, 50.0, log=True)})
    with pytest.raises(TuningFailed, match=r"its trials drew gamma from FloatDistribution\(.*high=300\.0"):
        tune(task, type(method), cfg, study_key(cfg))
