"""Ground truths and scores as wandb artifacts, offline: the artifact records and their manifests
in the offline run's own file, the staged files in its folder, and the leaderboard naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import wandb

from tdabench.harness.core.bundle import open_bundle, sha256
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import execute
from tdabench.harness.read.report import log_to_wandb
from tdabench.harness.read.tracking import offline_artifacts, read_offline_run

BASE = ["task=digits_mlp", "seed=6", "task.n_train=100", "task.n_query=12", "gt.subsets=6", "gt.seeds=2",
        "threads=1", "cost.count=off", "lds.bootstrap=50", "method=grad_dot"]


def test_a_run_logs_its_ground_truth_and_scores_as_artifacts_offline(tmp_path):
    record = execute(compose([*BASE, "wandb.mode=offline", "wandb.artifacts=true",
                              f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'results'}"]))
    assert record["status"] == "ok" and record["wandb_dir"]
    wandb.teardown()  # the run's file is complete once wandb's service has written it
    run_folder = Path(record["wandb_dir"]).parent
    arts = {a["type"]: a for a in offline_artifacts(run_folder)}
    gt, scores = arts["ground-truth"], arts["scores"]
    bundle = tmp_path / "cache" / "bundles" / record["gt_key"]
    manifest_sha = sha256((bundle / "manifest.json").read_bytes())
    assert gt["name"] == f"gt-{record['gt_key']}" and gt["metadata"]["manifest_sha256"] == manifest_sha
    assert gt["metadata"]["gt_key"] == record["gt_key"] and gt["metadata"]["task"]["n_train"] == 100
    # the staged files lie in the run's folder and are the bundle itself
    staged = tmp_path / "staged"
    staged.mkdir()
    for name, entry in gt["files"].items():
        assert Path(entry["local_path"]).is_relative_to(run_folder)
        shutil.copy(entry["local_path"], staged / name)
    assert open_bundle(staged).manifest_sha256 == manifest_sha
    assert scores["name"] == f"scores-{record['run_id']}" and scores["metadata"]["lds"] == record["lds"]
    assert scores["metadata"]["manifest_sha256"] == manifest_sha
    # the leaderboard's summary run names them
    [summary_dir] = log_to_wandb([tmp_path / "results"], "offline")
    config = read_offline_run(Path(summary_dir).parent)["config"]
    assert config["artifacts"] == {"ground_truth": gt["name"], "scores": [scores["name"]]}
