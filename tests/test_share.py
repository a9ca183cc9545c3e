"""Ground-truth bundles: export, verification, gt.from (same LDS, no retraining), refusals of
tampered, planted and mismatched bundles, import into a cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tdabench.harness.core.bundle import OUTCOMES, SUBSETS, BundleError, open_bundle, sha256, write_tar
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.config import ConfigError
from tdabench.harness.engine.run import config_hash, execute
from tdabench.harness.share.export import export_results, import_bundle

BASE = ["task=digits_mlp", "seed=3", "task.n_train=120", "task.n_query=16", "gt.subsets=8", "gt.seeds=2",
        "threads=1", "wandb.mode=disabled", "cost.count=off", "lds.bootstrap=50", "method=grad_dot"]


def run(tmp: Path, cache: str, results: str, *extra: str) -> dict:
    return execute(compose([*BASE, f"cache_dir={tmp / cache}", f"results_dir={tmp / results}", *extra]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run's record and its ground truth exported as a bundle: (tmp, record, bundle folder)."""
    tmp = tmp_path_factory.mktemp("share")
    record = run(tmp, "c1", "r1")
    assert record["status"] == "ok"
    [bundle] = export_results(tmp / "r1", tmp / "out", log=lambda m: None)
    return tmp, record, bundle


def copy(bundle: Path, to: Path) -> Path:
    shutil.copytree(bundle, to)
    return to


def rewrite_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_bundle_holds_manifest_and_safetensors_only(exported):
    tmp, record, bundle = exported
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", OUTCOMES, SUBSETS]
    b = open_bundle(bundle)
    m = b.manifest
    assert b.gt_key == record["gt_key"] == bundle.name
    assert m["task"]["name"] == "digits_mlp" and m["task"]["n_train"] == 120 and m["task"]["seed"] == 3
    assert m["ground_truth"]["subsets"] == 8 and m["ground_truth"]["retrainings"] == 2
    assert m["ground_truth"]["subset_size"] == 60 and m["data"]["query_ids"] == record["query_ids"]
    assert m["lds_ceiling"]["ceiling"] == record["lds_ceiling"]
    assert m["provenance"]["computed"]["command"].startswith("tdabench task=digits_mlp seed=3")
    assert b.masks().sum(1).tolist() == [60] * 8


def test_gt_from_gives_the_same_lds_without_retraining(exported):
    tmp, record, bundle = exported
    again = run(tmp, "c2", "r2", f"gt.from={bundle}")
    assert again["status"] == "ok"
    assert again["lds"] == record["lds"] and again["lds_per_query"] == record["lds_per_query"]
    assert again["lds_ceiling"] == record["lds_ceiling"] and again["gt_key"] == record["gt_key"]
    assert again["gt_source"]["manifest_sha256"] == sha256((bundle / "manifest.json").read_bytes())
    assert not (tmp / "c2" / "ground_truth").exists()  # nothing retrained
    # a tar of the same bundle is the same ground truth
    tar = write_tar(bundle, tmp / "b.tar")
    assert open_bundle(tar).manifest_sha256 == again["gt_source"]["manifest_sha256"]


def test_a_changed_byte_is_refused_naming_the_file(exported, tmp_path):
    tmp, _, bundle = exported
    b = copy(bundle, tmp_path / "b")
    data = bytearray((b / OUTCOMES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / OUTCOMES).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=OUTCOMES):
        open_bundle(b)


def test_a_planted_pickle_runs_nothing(exported, tmp_path):
    tmp, _, bundle = exported
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    b = copy(bundle, tmp_path / "b")
    torch.save({"x": Boom()}, b / OUTCOMES)
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(b)
    # even with the manifest's hash rewritten to match, the file is parsed as safetensors only
    rewrite_manifest(b, lambda m: m["files"][OUTCOMES].update(sha256=sha256((b / OUTCOMES).read_bytes())))
    with pytest.raises(BundleError, match="not a safetensors file"):
        open_bundle(b)
    assert not marker.exists()


def test_extra_files_and_inconsistent_manifests_are_refused(exported, tmp_path):
    tmp, _, bundle = exported
    b = copy(bundle, tmp_path / "extra")
    (b / "notes.pt").write_bytes(b"x")
    with pytest.raises(BundleError, match="notes.pt: a file the manifest does not list"):
        open_bundle(b)
    b = copy(bundle, tmp_path / "fewer")
    rewrite_manifest(b, lambda m: m["ground_truth"].update(subsets=7))
    with pytest.raises(BundleError, match=f"{SUBSETS}: indices is \\[8, 60\\].*\\[7, 60\\]"):
        open_bundle(b)
    b = copy(bundle, tmp_path / "queries")
    rewrite_manifest(b, lambda m: m["data"]["query_ids"].reverse())
    with pytest.raises(BundleError, match="query_ids"):
        open_bundle(b)


def test_a_bundle_of_another_task_setting_is_refused_before_work(exported):
    tmp, _, bundle = exported
    with pytest.raises(ConfigError, match="task.n_train=120"):
        run(tmp, "c3", "r3", f"gt.from={bundle}", "task.n_train=100")
    assert not (tmp / "c3").exists() and not (tmp / "r3" / "runs.jsonl").exists()
    with pytest.raises(ConfigError, match="data\\.(train|query)_sha256"):  # same sizes, other data
        run(tmp, "c3", "r3", f"gt.from={bundle}", "seed=4")
    # same data, another reference model (another recipe): the checkpoint differs
    with pytest.raises(ConfigError, match="checkpoint.sha256"):
        run(tmp, "c3", "r3", f"gt.from={bundle}", "task.recipe.epochs=3")
    assert not (tmp / "r3" / "runs.jsonl").exists()


def test_import_puts_the_ground_truth_where_a_run_finds_it(exported):
    tmp, record, bundle = exported
    import_bundle(open_bundle(bundle), tmp / "c4")
    again = run(tmp, "c4", "r4")
    assert again["gt_cached"] is True and again["lds"] == record["lds"] and "gt_source" not in again


def test_gt_from_null_keeps_config_hashes():
    cfg = compose(BASE)
    assert cfg["gt"]["from"] is None
    without = {**cfg, "gt": {k: v for k, v in cfg["gt"].items() if k != "from"}}
    assert config_hash(cfg) == config_hash(without)
    assert config_hash(compose([*BASE, "gt.from=/x"])) != config_hash(cfg)


def test_rows_that_do_not_belong_to_their_subsets_fail_the_retraining_check(exported, tmp_path):
    from safetensors.torch import load, save

    from tdabench.harness.share.spotcheck import retrain_rows

    tmp, _, bundle = exported
    assert [r for r, _ in retrain_rows(open_bundle(bundle), 2, tmp / "c1", log=lambda m: None)] == [0, 7]
    # rows 0 and 1 swapped, every hash made to match: only retraining tells
    b = copy(bundle, tmp_path / "swapped")
    tensors = load((b / OUTCOMES).read_bytes())
    tensors["outcomes"] = tensors["outcomes"][[1, 0, *range(2, 8)]].contiguous()
    (b / OUTCOMES).write_bytes(save(tensors))
    rewrite_manifest(b, lambda m: m["files"][OUTCOMES].update(sha256=sha256((b / OUTCOMES).read_bytes())))
    with pytest.raises(BundleError, match="row 0 is not what retraining subset 0 gives"):
        retrain_rows(open_bundle(b), 2, tmp / "c1", log=lambda m: None)


def test_gt_from_problems_are_found_before_any_file_is_made(tmp_path):
    from tdabench.harness.engine.run import config_problems

    problems = config_problems(compose([*BASE, f"gt.from={tmp_path / 'nowhere'}"]))[2]
    assert any("gt.from=" in p and "does not exist" in p for p in problems)
    problems = config_problems(compose([*BASE, f"gt.from={tmp_path}", "gt.num_shards=2", "gt.shard=0"]))[2]
    assert any("cannot be combined with gt.shard" in p for p in problems)
    with pytest.raises(ConfigError, match="no manifest.json"):
        run(tmp_path, "c", "r", f"gt.from={tmp_path}")


def test_a_bundle_with_its_reference_run_evaluates_on_the_same_model_elsewhere(exported, tmp_path):
    from tdabench.harness.core.fingerprints import checkpoint_sha256
    from tdabench.harness.core.storage import save_verified
    from tdabench.harness.share.export import build_task

    tmp, record, _ = exported
    [bundle] = export_results(tmp / "r1", tmp_path / "out", with_checkpoint=True, log=lambda m: None)
    b = open_bundle(bundle)
    assert b.manifest["checkpoint"]["file"] == "checkpoint.safetensors" and len(b.manifest["checkpoint"]["trajectory"])
    messages = []
    import_bundle(b, tmp_path / "c", log=messages.append)
    assert "the reference model the ground truth belongs to" in messages[0]
    task = build_task(compose([*BASE, f"cache_dir={tmp_path / 'c'}"]), tmp_path / "c")
    assert task.reference_path().exists()  # installed, not trained
    assert checkpoint_sha256(task.checkpoint()) == b.manifest["checkpoint"]["sha256"]
    again = execute(compose([*BASE, f"cache_dir={tmp_path / 'c'}", f"results_dir={tmp_path / 'r'}"]))
    assert again["gt_cached"] is True and again["lds"] == record["lds"]
    # a cache that holds another reference model for the task is not overwritten
    run_state = task.reference_run()
    other = {**run_state, "state": {k: v + 1 for k, v in run_state["state"].items()}}
    save_verified(other, task.reference_path())
    with pytest.raises(BundleError, match="holds another reference model"):
        import_bundle(b, tmp_path / "c", log=lambda m: None)
