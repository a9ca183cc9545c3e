"""What a newcomer meets first: --help, --version, the console's levels, progress lines and the
threads each launcher job gets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdabench.harness.core import logs, version
from tdabench.harness.engine.sharing import job_gpu, job_threads, sweep_jobs

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cli(*args):
    return subprocess.run([str(BIN / "tdabench"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})


def test_help_opens_with_tdabench_usage_then_hydra_groups():
    out = cli("--help")
    assert out.returncode == 0
    text = out.stdout
    assert text.startswith("tdabench:") and "powered by Hydra" not in text.splitlines()[0]
    usage = text[:text.index("== Configuration groups ==")]
    for needle in ("--list", "-q", "-v", "-m", "tdabench-leaderboard", "tdabench-insight", "tdabench-adequacy",
                   "hydra/launcher=parallel", "submitit_local", "gt.subsets", "Examples:"):
        assert needle in usage, needle
    assert "method: " in text[text.index("== Configuration groups =="):]


def test_version_prints_the_checkouts_commit():
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = cli("--version")
    assert out.returncode == 0 and sha in out.stdout and out.stdout.startswith("tdabench ")


def test_an_installed_copy_reads_the_commit_written_at_build_time(tmp_path, monkeypatch):
    build_info = type(sys)("tdabench.harness.core._build_info")
    build_info.GIT_SHA = "abc1234def"
    monkeypatch.setitem(sys.modules, "tdabench.harness.core._build_info", build_info)
    monkeypatch.setattr(version, "_ROOT", tmp_path)  # no .git: not a checkout
    version.git_sha.cache_clear()
    try:
        assert version.git_sha() == "abc1234def" and "git abc1234def" in version.version_line()
        build_info.GIT_SHA = None  # built outside a git checkout
        version.git_sha.cache_clear()
        assert "git commit unknown" in version.version_line()
    finally:
        version.git_sha.cache_clear()


def test_multirun_with_cfg_is_one_line_not_a_traceback():
    out = cli("-m", "--cfg", "job")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1 and "drop -m" in out.stderr


def test_quiet_shows_results_and_warnings_only(capsys):
    log = logging.getLogger("tdabench.test_console")
    try:
        logs.setup(-1)
        log.info("hidden detail")
        log.log(logs.RESULT, "digits_mlp / random: LDS 0.01")
        log.warning("shown")
        logs.setup(0)
        with logs.silenced():
            log.warning("a warning the replay repeats")
            print("a third-party progress bar", file=sys.stderr)
            log.error("an error")
        log.info("shown again")
    finally:
        logs.setup(0)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[tdabench] digits_mlp / random: LDS 0.01", "[tdabench] warning: shown",
                   "[tdabench] error: an error", "[tdabench] shown again"]
    assert os.environ[logs.VERBOSITY_ENV] == "0"  # handed on to launcher workers


def test_ticker_logs_at_most_every_period(monkeypatch):
    clock = iter([0.0, 1.0, 11.0, 12.0, 25.0])
    monkeypatch.setattr(logs.time, "monotonic", lambda: next(clock))
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("test_console_ticker")
    log.setLevel(logging.INFO)
    log.propagate, log.handlers = False, [handler]
    ticker = logs.Ticker(log, "phase", 100)
    for done in (10, 50, 60, 90):
        ticker.tick(done)
    assert seen == ["phase: 50/100 (50%, 11 s)", "phase: 90/100 (90%, 25 s)"]


@pytest.mark.parametrize("launcher, env, expected", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, {}, 4),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, {}, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"},
     {"TDABENCH_SWEEP_JOBS": "3"}, 2),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 3},
     {"TDABENCH_SWEEP_JOBS": "8"}, 3),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"},
     {"SLURM_CPUS_PER_TASK": "6"}, 6),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, {}, None),
])
def test_parallel_launcher_jobs_get_their_share_of_the_cores(launcher, env, expected):
    assert job_threads(launcher, env, available=8) == expected


def test_parallel_jobs_on_cuda_take_the_visible_gpus_in_turn():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}
    local = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    assert [job_gpu(joblib, k, "cuda", 2) for k in range(4)] == [0, 1, 0, 1]
    assert job_gpu(local, 5, "cuda", 4) == 1
    assert job_gpu(joblib, 1, "cuda:0", 2) is None  # an index given is kept
    assert job_gpu(joblib, 1, "cuda", 1) is None and job_gpu(joblib, 1, "cpu", 0) is None
    assert job_gpu(slurm, 3, "cuda", 2) is None  # a SLURM job sees the GPU it was given


def test_sweep_jobs_multiplies_the_sweep_lists():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parse = OverridesParser.create().parse_overrides
    assert sweep_jobs(parse(["method=a,b", "seed=0,1,2", "gt.subsets=20"]), 15) == 6
    assert sweep_jobs(parse(["seed=0,1"]), 15) == 30  # every registered method


@pytest.mark.parametrize("flag, tables, pairwise", [("-q", False, False), (None, True, False), ("-v", True, True)])
def test_leaderboard_prints_its_pairwise_table_only_with_v(tmp_path, capsys, flag, tables, pairwise):
    from tdabench.harness.read.leaderboard_cli import main

    main([str(ROOT / "results" / "reference" / "demo"), "--out", str(tmp_path), "--no-report",
          *([flag] if flag else [])])
    out = capsys.readouterr().out
    assert ("| magic" in out) == tables
    assert ("| method_a" in out) == pairwise


def test_a_launcher_of_a_missing_extra_names_the_distribution_and_the_install(monkeypatch):
    from tdabench.harness.engine import cli as cli_module

    monkeypatch.setattr(cli_module, "_importable", lambda module: False)
    problems = cli_module.precheck(["-m", "hydra/launcher=slurm", "method=grad_dot"])
    assert problems == ["hydra/launcher=slurm needs the hydra-submitit-launcher package, which is not installed: "
                        "pip install 'tdabench[slurm]' (from a source checkout: pip install -e '.[slurm]')"]


@pytest.mark.parametrize("raised, passes", [("timeout", True), ("failure", False)])
def test_the_counting_replay_lets_a_time_limit_through_and_survives_a_failure(raised, passes):
    import torch

    from tdabench.harness.engine.interrupts import TimeLimitExceeded
    from tdabench.harness.engine.profiling import Profiler
    from tdabench.harness.engine.run import _count_replay

    class Replayed:
        name = "replayed"

        def fit(self, task, model):
            if raised == "timeout":
                raise TimeLimitExceeded("the run exceeded limits.max_seconds=1")
            raise RuntimeError("counting broke")

    prof = Profiler("cpu")
    if passes:
        with pytest.raises(TimeLimitExceeded):
            _count_replay(Replayed(), None, None, torch.get_rng_state(), set(), prof)
    else:
        assert _count_replay(Replayed(), None, None, torch.get_rng_state(), set(), prof) >= 0
        assert prof.peak_mem_mb["fit"] is None and "fit" not in prof.flops


def test_quiet_silences_wandb_too(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "false")
    try:
        logs.setup(-1)
        assert os.environ["WANDB_SILENT"] == "true"
    finally:
        logs.setup(0)


def test_a_comma_list_without_m_asks_for_m(tmp_path):
    from tdabench.harness.engine.cli import precheck

    problems = precheck(["method=ekfac,trak", f"results_dir={tmp_path / 'r'}"])
    assert len(problems) == 1 and "add -m" in problems[0] and "tdabench -m method=ekfac,trak" in problems[0]
    assert precheck(["-m", "method=ekfac,trak", f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path}"]) == []


def test_cfg_job_shows_the_method_values_not_interpolations():
    out = cli("--cfg", "job", "method=ekfac")
    assert out.returncode == 0 and "tdabench.default" not in out.stdout
    assert "  damping: 0.1\n" in out.stdout


def test_leaderboard_names_each_folder_of_an_unquoted_path(tmp_path):
    out = subprocess.run([str(BIN / "tdabench-leaderboard"), str(tmp_path / "my"), "results"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 2 and f"'{tmp_path / 'my'}', 'results'" in last and "quote" in last


def test_two_different_means_are_never_quoted_as_equal():
    assert logs.apart(10.8612, 10.8634) == ("10.861", "10.863")
    assert logs.apart(0.5, 0.25) == ("0.5", "0.25") and logs.apart(3.0, 3.0) == ("3", "3")


def test_the_console_quotes_the_peak_memory_the_leaderboard_shows():
    from tdabench.harness.engine.run import _summary
    from tdabench.harness.read.record import RunRecord
    from tdabench.harness.read.record_view import run_cost

    record = RunRecord.from_dict({"run_id": "p-ekfac-1", "task": "pythia_scaling", "method": "ekfac", "status": "ok",
                                  "lds": None, "time_s": {"fit": 3.0, "score": 1.0},
                                  "peak_mem_mb": {"prepare": 447.0, "fit": 413.9, "score": 120.0}})
    assert run_cost(record)["peak_mem_mb"] == 413.9 and "peak 414 MiB" in _summary(record)
