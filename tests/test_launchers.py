"""Sweeps through Hydra's launchers: joblib with 2 workers, and submitit's local executor (the
same code path as SLURM) computing ground-truth shards as a job array."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ["task.n_train=150", "task.n_query=15", "task.hidden=16", "task.recipe.epochs=15",
         "gt.subsets=6", "gt.seeds=2", "lds.bootstrap=100", "wandb.mode=disabled", "threads=1"]


def run(*args):
    out = subprocess.run([str(BIN / "tdabench"), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "WANDB_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def lds_by_method(results: Path) -> dict:
    return {r["method"]: r["lds"] for r in map(json.loads, (results / "runs.jsonl").read_text().splitlines())
            if r["status"] == "ok"}


@pytest.mark.slow  # whole sweeps through a launcher: run by `make bench`
def test_joblib_two_workers_match_sequential_and_compute_ground_truth_once(tmp_path):
    seq = run("-m", "method=random,grad_dot,grad_cos", *SMALL, f"cache_dir={tmp_path / 'c1'}",
              f"results_dir={tmp_path / 'seq'}")
    par = run("-m", "hydra/launcher=parallel", "method=random,grad_dot,grad_cos", *SMALL,
              f"cache_dir={tmp_path / 'c2'}", f"results_dir={tmp_path / 'par'}")
    assert "Joblib" in par.stdout + par.stderr
    assert lds_by_method(tmp_path / "seq") == lds_by_method(tmp_path / "par")
    # one shard file, written once: a second writer would have left a second checksum write
    shards = list((tmp_path / "c2").glob("ground_truth/*/shard-*.pt"))
    assert len(shards) == 1
    assert (seq.stderr + par.stderr).count("ground truth digits_mlp") >= 1


@pytest.mark.slow  # whole sweeps through a launcher: run by `make bench`
def test_submitit_job_array_computes_shards_that_a_sweep_assembles(tmp_path):
    common = [*SMALL, "method=grad_dot", "gt.num_shards=3", f"cache_dir={tmp_path / 'cache'}",
              f"results_dir={tmp_path / 'r'}"]
    run("-m", "hydra/launcher=submitit_local", "gt.shard=0,1,2", *common)
    shards = sorted(p.name for p in (tmp_path / "cache").glob("ground_truth/*/shard-*-of-3.pt"))
    assert shards == ["shard-0-of-3.pt", "shard-1-of-3.pt", "shard-2-of-3.pt"]
    out = run(*common)
    assert "ground truth digits_mlp" not in out.stderr  # assembled, nothing retrained
    rec = json.loads((tmp_path / "r" / "runs.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "ok" and not rec["gt_cached"]  # assembled in this run
    one = run(*[a for a in common if not a.startswith(("gt.num_shards", "cache_dir", "results_dir"))],
              f"cache_dir={tmp_path / 'c1'}", f"results_dir={tmp_path / 'r1'}")
    assert lds_by_method(tmp_path / "r1")["grad_dot"] == rec["lds"]
    del one


def test_shard_sweep_without_a_method_launches_one_job_per_shard(tmp_path):
    # the default sweep lists every method; a shard job must not be repeated once per method
    out = run("-m", "gt.shard=0,1,2", "gt.num_shards=3", *SMALL, f"cache_dir={tmp_path / 'c'}",
              f"results_dir={tmp_path / 'r'}")
    assert "Launching 3 jobs" in out.stdout + out.stderr
    assert (out.stdout + out.stderr).count("is cached") == 3


def test_launcher_workers_print_one_result_line_per_run_also_with_q(tmp_path):
    # joblib's workers are other processes: each sets up the console from the launching process's -q
    out = run("-m", "-q", "hydra/launcher=parallel", "method=random,grad_dot", *SMALL,
              f"cache_dir={tmp_path / 'c'}", f"results_dir={tmp_path / 'r'}")
    lines = [line for line in out.stderr.splitlines() if line.startswith("[tdabench]")]
    results = sorted(line for line in lines if ": LDS " in line)
    assert [r.split(":")[0] for r in results] == ["[tdabench] digits_mlp / grad_dot", "[tdabench] digits_mlp / random"]
    assert lines[-1] == "[tdabench] sweep: 2 ok"  # the sweep's summary of statuses, last
    assert lines[:-1] == [line for line in lines if ": LDS " in line or "warning:" in line or "error:" in line]


def _fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` and ``srun`` on the PATH, as on a SLURM login node (they are never called)."""
    for name in ("sbatch", "srun"):
        exe = tmp_path / "bin" / name
        exe.parent.mkdir(exist_ok=True)
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


def test_slurm_without_sbatch_is_refused_in_one_line_naming_slurm(tmp_path, monkeypatch):
    from tdabench.harness.engine.cli import precheck

    monkeypatch.setenv("PATH", str(tmp_path))  # neither sbatch nor srun
    problems = precheck(["-m", "hydra/launcher=slurm", "device=cuda", f"results_dir={tmp_path / 'r'}"])
    assert len(problems) == 1 and "sbatch" in problems[0] and "cuda" not in problems[0].lower()
    assert not (tmp_path / "r").exists()


def test_slurm_checks_cuda_in_the_job_and_asks_for_one_gpu_per_job(tmp_path, monkeypatch):
    import torch
    from hydra import compose, initialize_config_dir

    from tdabench.harness.engine.cli import precheck
    from tdabench.harness.engine.compose import CONF_DIR, register_configs

    _fake_slurm(tmp_path, monkeypatch)
    args = ["-m", "method=grad_dot", f"results_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    # a login node without a GPU submits device=cuda jobs; only the form of the value is checked
    assert precheck([*args, "hydra/launcher=slurm", "device=cuda"]) == []
    assert any("cpu, cuda or cuda:N" in p for p in precheck([*args, "hydra/launcher=slurm", "device=gpu"]))
    if not torch.cuda.is_available():  # run here (no launcher, or local processes): checked here
        for launcher in ([], ["hydra/launcher=submitit_local"]):
            assert any("no CUDA device" in p for p in precheck([*args, *launcher, "device=cuda"]))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for device, gpus in (("cuda", 1), ("cpu", 0)):
            cfg = compose("config", overrides=["hydra/launcher=slurm", f"device={device}"], return_hydra_config=True)
            assert cfg.hydra.launcher.gpus_per_node == gpus
