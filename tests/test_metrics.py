"""Metrics as plugins: leave-one-out outcomes (batched, cached, sharded, equal to the sequential
path), the correlation's sign, flipped-label and train-as-queries task views, config errors before
work, a run with every built-in metric, and a third-party metric in a sweep and the leaderboard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tdabench.harness.core.registry import METRICS, TASKS
from tdabench.harness.engine.cli import metric_overrides, precheck
from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import config_hash, execute
from tdabench.harness.plugin.metric import metric_problems
from tdabench.harness.read.leaderboard import write
from tdabench.metrics.loo import LeaveOneOutBuilder, loo_changes, loo_correlations
from tdabench.metrics.mislabel import MislabelAUC, bootstrap_auc

GT = {"num_shards": 1, "vectorize": True, "models_per_batch": 64}
SMALL = ["task.n_train=200", "task.n_query=20", "gt.subsets=8", "gt.seeds=2", "lds.bootstrap=100", "threads=1",
         "wandb.mode=disabled", "cost.count=off", "loo.samples=10", "loo.seeds=2"]


def quiet(_):
    pass


def test_leave_one_out_outcomes_are_the_sequential_trainings(small_digits, tmp_path):
    """Row 0 retrains on every example, row 1 + s without examples[s], all with the same seeds;
    the builder's sequential path gives exactly what fit_model gives, the batched path the same up
    to float reassociation (as the ground truth's)."""
    loo = {"samples": 3, "seeds": 2}
    seq = LeaveOneOutBuilder(small_digits, loo, dict(GT, vectorize=False), tmp_path / "a", quiet)
    out = seq.build().outcomes  # [4, 2, 20]
    assert out.shape == (4, 2, 20) and seq.dir.parent.name == "leave_one_out"
    for row in (0, 2):
        keep = seq.masks[row]
        assert int(keep.sum()) == 200 - (row > 0) and (row == 0 or not keep[seq.examples[row - 1]])
        for k in range(2):
            model = small_digits.fit_model(torch.nonzero(keep)[:, 0], seq.job_seed(row, k)).model
            assert torch.equal(small_digits.query_observables(model).cpu(), out[row, k])
    vec = LeaveOneOutBuilder(small_digits, loo, GT, tmp_path / "b", quiet).build().outcomes
    assert torch.allclose(out, vec, atol=1e-4, rtol=1e-4), (out - vec).abs().max()
    change = loo_changes(out)
    assert change.shape == (3, 2, 20) and change.abs().max() > 0


def test_leave_one_out_is_cached_and_sharded(small_digits, tmp_path, monkeypatch):
    loo = {"samples": 4, "seeds": 1}
    whole = LeaveOneOutBuilder(small_digits, loo, GT, tmp_path / "a", quiet).build()
    sharded = LeaveOneOutBuilder(small_digits, loo, dict(GT, num_shards=2), tmp_path / "b", quiet)
    for s in (1, 0):
        sharded.compute_shard(s, 2)
    assert torch.allclose(sharded.build().outcomes, whole.outcomes, atol=1e-5)

    def no_training(*a, **k):
        raise AssertionError("retrained although the leave-one-out outcomes are cached")

    monkeypatch.setattr(small_digits, "fit_many", no_training)
    again = LeaveOneOutBuilder(small_digits, loo, GT, tmp_path / "a", quiet).build()
    assert torch.equal(again.outcomes, whole.outcomes)
    other = LeaveOneOutBuilder(small_digits, {"samples": 5, "seeds": 1}, GT, tmp_path / "a", quiet)
    assert other.dir != LeaveOneOutBuilder(small_digits, loo, GT, tmp_path / "a", quiet).dir


def test_loo_correlation_follows_the_sign_convention():
    """Removing i changes obs_q by about -scores[q, i]: scores equal to minus the change correlate +1."""
    examples = torch.tensor([0, 2, 3, 5])
    change = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scores = torch.zeros(3, 6, dtype=torch.float64)
    scores[:, examples] = -change.T
    pearson, spearman = loo_correlations(scores, examples, change)
    assert np.allclose(pearson, 1) and np.allclose(spearman, 1)
    pearson, _ = loo_correlations(-scores, examples, change)
    assert np.allclose(pearson, -1)
    flat = torch.ones(3, 6)
    pearson, spearman = loo_correlations(flat, examples, change)  # no ranking: counted as 0
    assert (pearson == 0).all() and (spearman == 0).all()


def test_mislabeled_view_flips_a_seeded_share_to_other_classes(small_digits):
    variant, flipped = small_digits.mislabeled(0.1, seed=3)
    before, after = small_digits.train_split.targets, variant.train_split.targets
    assert int(flipped.sum()) == 20 and torch.equal(before != after, flipped)
    assert after.min() >= 0 and after.max() <= 9
    assert variant.models is not small_digits.models  # its own models, trained on the flipped labels ...
    assert variant.reference_path() != small_digits.reference_path()  # ... cached apart
    again, flipped_again = small_digits.mislabeled(0.1, seed=3)
    assert torch.equal(again.train_split.targets, after) and torch.equal(flipped_again, flipped)
    assert torch.equal(small_digits.train_split.targets, before)  # the task itself is unchanged


def test_train_as_queries_shares_models_but_not_fingerprints(small_digits):
    view = small_digits.train_as_queries()
    assert view.n_query == 200 and view.query_split is small_digits.train_split
    assert view.models is small_digits.models  # the same trained models, its own method caches
    assert view.cache_path("f", "x", {}) != small_digits.cache_path("f", "x", {})
    assert view.fingerprint() != small_digits.fingerprint()
    model = small_digits.checkpoint()
    losses = small_digits.per_example_loss(model, *small_digits.train_split.__dict__.values())
    assert torch.allclose(view.query_observables(model), losses.detach())


def test_mislabel_support_and_bootstrap(small_digits):
    class NoSelf:
        name, gives_self_influence, no_self_influence = "x", False, "it scores fixed queries only"

    reason = MislabelAUC().supports(small_digits, NoSelf())
    assert reason == "method x gives no self-influence: it scores fixed queries only"
    text = TASKS.get("text_neox")  # the class: its declared capabilities, no data loaded
    assert "no class labels" in MislabelAUC().supports(text, NoSelf())
    assert "classification" in TASKS.get("cifar2_resnet9").capabilities
    labels = np.array([True] * 10 + [False] * 90)
    lo, hi = bootstrap_auc(labels, np.r_[np.ones(10) * 2, np.linspace(0, 1, 90)], 200, 0)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_bad_metric_settings_are_refused_in_one_line_before_work(tmp_path):
    assert metric_overrides(["-m", "metric=lds,loo", "method=a,b"]) == ["-m", "metric=[lds,loo]", "method=a,b"]
    problems = precheck(metric_overrides(["-m", "metric=lds,nope", f"results_dir={tmp_path}"]))
    assert len(problems) == 1 and "unknown metric 'nope'" in problems[0] and "mislabel_auc" in problems[0]
    cfg = compose(["metric=[loo,mislabel_auc]", "loo.samples=5000", "mislabel.fraction=1.5"])
    problems = metric_problems(cfg)
    assert any(p.startswith("loo.samples=5000 exceeds task.n_train=1000") for p in problems)
    assert any(p.startswith("mislabel.fraction=1.5 must be a fraction") for p in problems)


def test_a_run_records_every_metric_and_keeps_the_lds(tmp_path):
    base = [*SMALL, f"cache_dir={tmp_path / 'c'}", "method=grad_dot"]
    plain = compose([*base, f"results_dir={tmp_path / 'a'}"])
    assert config_hash(plain) == config_hash({**plain, "loo": {"samples": 1}})  # unused keys leave the hash
    only_lds = execute(plain)
    every = execute(compose([*base, "metric=[lds,loo,mislabel_auc]", f"results_dir={tmp_path / 'b'}"]))
    assert every["status"] == "ok" and every["lds"] == only_lds["lds"] == only_lds["metrics"]["lds"]["value"]
    assert every["lds_per_query"] == only_lds["lds_per_query"] and every["lds_ceiling"] == only_lds["lds_ceiling"]
    for name in ("loo", "mislabel_auc"):
        m = every["metrics"][name]
        assert m["status"] == "ok" and np.isfinite(m["value"]) and m["ci"][0] <= m["value"] <= m["ci"][1]
    assert every["metrics"]["loo"]["samples"] == 10 and every["metrics"]["mislabel_auc"]["flipped"] == 20
    assert every["metrics"]["mislabel_auc"]["value"] > 0.6  # grad_dot's self-influence finds flipped labels
    assert {"loo", "mislabel_auc"} <= set(every["time_s"])
    assert set(only_lds["metrics"]) == {"lds"}


def test_shard_jobs_compute_the_leave_one_out_shards(tmp_path):
    """A ``gt.shard`` job of a run with ``metric=[loo]`` caches that shard of the leave-one-out
    outcomes (and no ground truth, which no metric of the run reads)."""
    cfg = compose([*SMALL, "metric=[loo]", "gt.shard=1", "gt.num_shards=2", f"cache_dir={tmp_path / 'c'}",
                   f"results_dir={tmp_path / 'r'}"])
    assert execute(cfg) is None
    assert [p.name for p in (tmp_path / "c" / "leave_one_out").glob("*/shard-*.pt")] == ["shard-1-of-2.pt"]
    assert not (tmp_path / "c" / "ground_truth").exists()


PLUGIN = '''
import numpy as np
from tdabench.harness.plugin.metric import Metric, MetricResult
from tdabench.harness.read.lds import bootstrap_ci


class SameClass(Metric):
    """Share of queries whose most helpful training example (most negative score) has their class."""

    def evaluate(self, run):
        top = run.scores.argmin(dim=1)
        hit = (run.task.train_split.targets[top] == run.task.query_split.targets).double().numpy()
        return MetricResult(float(hit.mean()), bootstrap_ci(hit, 200, 0), extra={"queries": len(hit)})
'''


def test_a_plugin_metric_works_in_sweeps_records_and_leaderboards(tmp_path):
    site = tmp_path / "site"
    dist = site / "same_class_metric-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "same_class_metric.py").write_text(PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: same-class-metric\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tdabench.metrics]\nsame_class = same_class_metric:SameClass\n")
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    out = subprocess.run([str(Path(sys.executable).parent / "tdabench"), "-m", "method=random,grad_dot",
                          "metric=lds,same_class", *SMALL, f"cache_dir={tmp_path / 'c'}",
                          f"results_dir={tmp_path / 'r'}"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "r" / "runs.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in records) == ["grad_dot", "random"]  # one run per method, not per metric
    by = {r["method"]: r["metrics"]["same_class"] for r in records}
    assert by["grad_dot"]["value"] > by["random"]["value"] and by["grad_dot"]["queries"] == 20
    write([tmp_path / "r"])
    md = (tmp_path / "r" / "leaderboard.md").read_text()
    assert "**same_class** on digits_mlp" in md
    table = (tmp_path / "r" / "leaderboard_metrics.csv").read_text()
    assert table.count("same_class,") == 2


@pytest.fixture(autouse=True)
def _registry_unchanged():
    names = METRICS.names()
    yield
    assert METRICS.names() == names
