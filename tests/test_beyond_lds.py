"""Metrics beyond the LDS: the ground truth along training (same subsets and seeds as the LDS
ground truth, outcomes at every snapshot, its own cache key), a method fitted at a snapshot, the
per-token LDS, the removal of blamed examples against random removal, and the importance of
tuned settings read from the records' trial logs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdabench.harness.engine.tuning import trial_log
from tdabench.harness.plugin.ground_truth import GroundTruthBuilder
from tdabench.harness.plugin.metric import MetricRun
from tdabench.harness.read.importance import fanova, importance_table
from tdabench.harness.read.record import RunRecord
from tdabench.metrics.removal import Removal, blamed, random_sets, removal_sizes
from tdabench.metrics.stagewise import mean_over_snapshots, snapshot_view
from tdabench.metrics.token import TokenLDS, gives_token_scores, token_lds
from tdabench.metrics.trace import TraceBuilder

GT = {"subsets": 4, "alpha": 0.5, "seeds": 2, "from_checkpoint": False, "finetune_epochs": None,
      "num_shards": 1, "vectorize": True, "models_per_batch": 64}


def quiet(_):
    pass


def test_trace_retrains_the_ground_truths_subsets_and_seeds(small_digits, tmp_path):
    """Same masks and seeds as the LDS ground truth, a cache folder and key of its own, and the
    last snapshot's outcomes are the retrained model's (sequential training, bit for bit)."""
    gt_builder = GroundTruthBuilder(small_digits, GT, tmp_path, quiet)
    trace = TraceBuilder(small_digits, GT, tmp_path, quiet)
    assert torch.equal(trace.masks, gt_builder.masks)
    assert trace.job_seed(2, 1) == gt_builder.job_seed(2, 1)
    assert trace.dir.parent.name == "ground_truth_trace" and trace.dir.name != gt_builder.dir.name
    out = trace.build()
    assert out.outcomes.shape == (4, 2, 3 * 20)  # snapshots x queries; digits has no tokens
    stages = trace.stage_outcomes(out)
    assert stages.shape == (3, 4, 2, 20)
    row = torch.nonzero(trace.masks[1])[:, 0]
    model = small_digits.fit_model(row, trace.job_seed(1, 0)).model
    assert torch.equal(stages[-1, 1, 0], small_digits.query_observables(model).cpu())
    assert not torch.equal(stages[0], stages[-1])  # early snapshots differ from the end
    assert trace.steps()[-1] == 4 * 30 and len(trace.steps()) == 3  # 100 examples, batch 32, 30 epochs
    assert not (tmp_path / "ground_truth").exists()  # the LDS ground truth was not touched


def test_snapshot_view_ends_at_the_snapshot(small_digits):
    view = snapshot_view(small_digits, 0)
    snap = small_digits.trajectory()[0]
    model = view.checkpoint()
    assert all(torch.equal(v, snap.state[k]) for k, v in model.state_dict().items())
    assert len(view.trajectory()) == 1 and len(small_digits.trajectory()) == 3
    assert view.fingerprint() != small_digits.fingerprint()
    assert view.fingerprint() != snapshot_view(small_digits, 1).fingerprint()
    # method caches are the view's own; trained models are the task's (no second training)
    assert view.cache_path("f", "l", {}) != small_digits.cache_path("f", "l", {})
    assert view.reference_path() == small_digits.reference_path()


def test_source_fits_a_run_cut_before_it_has_a_snapshot_per_segment(small_digits):
    """SOURCE at the first snapshot (the stagewise LDS) has one snapshot for its 3 segments: one
    segment, as ``segments=1`` gives."""
    from tdabench.methods.source import SOURCE

    view = snapshot_view(small_digits, 0)
    model = view.checkpoint()
    cut, one = SOURCE(segments=3), SOURCE(segments=1)
    cut.fit(view, model)
    one.fit(view, model)
    assert len(cut._groups) == 1
    assert torch.equal(cut.score(view, model), one.score(view, model))


def test_mean_over_snapshots_interval_holds_the_value():
    rng = np.random.default_rng(0)
    per_query = rng.normal(0.5, 0.1, size=(3, 30))
    per_query[1, 4] = np.nan
    value, (lo, hi) = mean_over_snapshots(per_query, 200, 0)
    assert lo <= value <= hi and abs(value - 0.5) < 0.05


def test_token_lds_is_one_for_exact_predictions_and_minus_one_reversed():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, 9, generator=g) < 0.5
    scores = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    outcomes = torch.einsum("mn,qtn->mqt", masks.double(), scores)
    assert np.allclose(token_lds(scores, masks, outcomes), 1)
    assert np.allclose(token_lds(-scores, masks, outcomes), -1)
    flat = outcomes.clone()
    flat[:, 0, :] = 1.0  # query 0's tokens never change: left out
    got = token_lds(scores, masks, flat)
    assert math.isnan(got[0]) and got[1] == pytest.approx(1)
    none = scores.clone()
    none[1, 0] = 0  # token 0 of query 1 predicts nothing: counts 0
    assert token_lds(none, masks, outcomes)[1] == pytest.approx(2 / 3)


class _SequenceOnly:
    name = "plain"


class _PerToken:
    name = "tokens"

    def token_scores(self, task):
        return "per_token" in task.capabilities


def test_token_lds_supports_only_methods_with_token_scores(small_digits):
    metric = TokenLDS()
    assert "per-token" in metric.supports(small_digits, _PerToken())  # digits has no tokens

    class Text:
        name, measures_lds, capabilities = "text", True, frozenset({"per_token"})

    assert metric.supports(Text(), _PerToken()) is None and gives_token_scores(_PerToken(), Text())
    assert "sequence scores only" in metric.supports(Text(), _SequenceOnly())


def test_blamed_examples_follow_the_sign_convention():
    scores = torch.tensor([[0.3, -2.0, 1.0, -0.5, 0.0]])
    # loss observable: d loss / d beta < 0 helps (upweighting lowers the loss)
    assert [b.tolist() for b in blamed(scores, [1, 2], True)] == [[1], [1, 3]]
    # margin observable: d margin / d beta > 0 helps
    assert [b.tolist() for b in blamed(scores, [1, 2], False)] == [[2], [0, 2]]
    assert removal_sizes(200, [0.001, 0.05]) == [1, 10]
    sets = random_sets(50, 3, [2, 5], 0)
    assert [len(s) for s in sets] == [2, 5, 2, 5, 2, 5]
    assert all(torch.equal(a, b) for a, b in zip(sets, random_sets(50, 3, [2, 5], 0)))


def _removal(task, scores, tmp_path, fractions):
    cfg = {"removal": {"fractions": fractions, "seeds": 1}, "gt": dict(GT), "cache_dir": str(tmp_path),
           "lds": {"bootstrap": 200}, "seed": 0}
    assert Removal().config_problems(cfg) == []

    class M:
        name = "m"

    return Removal().evaluate(MetricRun(task, M(), None, scores, cfg))


def test_removal_is_zero_when_the_blamed_sets_are_the_random_ones(small_digits, tmp_path):
    """Scores that blame exactly the random sets retrain the random removal's rows with the same
    seeds: every query's excess rise is 0; blaming other examples is not."""
    sizes = removal_sizes(small_digits.n_train, [0.05])
    sets = random_sets(small_digits.n_train, small_digits.n_query, sizes, small_digits.seed)
    scores = torch.zeros(small_digits.n_query, small_digits.n_train)
    for q in range(small_digits.n_query):
        scores[q, sets[q]] = -1.0  # loss observable: negative scores help
    res = _removal(small_digits, scores, tmp_path, [0.05])
    assert res.extra["per_fraction"][0]["k"] == 10 and "flips" in res.extra["per_fraction"][0]
    assert np.allclose(res.extra["per_query"], 0, atol=1e-4) and abs(res.value) < 1e-4
    assert res.extra["rise"] == pytest.approx(res.extra["random_rise"], abs=1e-4)
    other = _removal(small_digits, -scores, tmp_path, [0.05])  # blames the other examples
    assert not np.allclose(other.extra["per_query"], 0, atol=1e-4)
    assert other.ci[0] <= other.value <= other.ci[1]


def test_removal_config_errors_name_the_setting():
    problems = Removal().config_problems({"removal": {"fractions": [0.5, 2], "seeds": 0}})
    assert any("removal.fractions" in p for p in problems) and any("removal.seeds" in p for p in problems)


def test_fanova_finds_the_parameter_that_matters():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("gamma", 1, 100, log=True) * 0 + math.log(t.params["gamma"])
                   + 0.01 * t.suggest_int("draws", 1, 10), n_trials=20)
    log = trial_log(study)
    assert len(log) == 20 and log[0]["params"].keys() == {"gamma", "draws"}
    imp = fanova(log)
    assert imp["gamma"] > 0.8 > imp["draws"]
    assert fanova(log[:2]) == {}  # too few trials: no estimate
    rec = RunRecord.from_dict({"status": "ok", "task": "digits_mlp", "method": "bif", "n_train": 150,
                               "config": {"seed": 3}, "tuned": {"search_space": {"gamma": "x", "draws": "y"},
                                                                 "study": "s", "trial_log": log}})
    table = importance_table([rec])
    assert set(table["parameter"]) == {"gamma", "draws"}
    row = table[table["parameter"] == "gamma"].iloc[0]
    best = max(t["value"] for t in log)
    assert row["gain"] == pytest.approx(best - log[0]["value"]) and row["importance"] == pytest.approx(imp["gamma"])
    # a product dimension (the BIF's eps, drawn as eps*nbeta) is named as the study drew it
    product = [{**t, "params": {"gamma": t["params"]["gamma"], "draws*gamma": t["params"]["draws"]},
                "distributions": {"gamma": t["distributions"]["gamma"], "draws*gamma": t["distributions"]["draws"]}}
               for t in log]
    space = {"gamma": "x", "draws": "y times gamma"}
    tuned = {"search_space": space, "study": "s", "trial_log": product}
    rec = RunRecord.from_dict({"status": "ok", "task": "digits_mlp", "method": "bif", "n_train": 150,
                               "config": {"seed": 3}, "tuned": tuned})
    table = importance_table([rec]).set_index("parameter")
    assert set(table.index) == {"gamma", "draws*gamma"} and table.loc["draws*gamma", "importance"] < 0.2


def test_stagewise_table_has_a_column_per_step(tmp_path):
    from tdabench.harness.read.leaderboard import RowKey
    from tdabench.harness.read.stagewise import render_stagewise, stagewise_table

    snaps = [{"snapshot": t, "step": 10 * (t + 1), "lds": 0.1 * t, "ci": [0.0, 0.3]} for t in range(3)]
    rec = RunRecord.from_dict({"status": "ok", "method": "ekfac", "metrics": {"lds_stagewise": {"snapshots": snaps}}})
    other = RunRecord.from_dict({**rec.as_dict(), "metrics": {"lds_stagewise": {"snapshots": snaps[:2]}}})
    table = stagewise_table({RowKey("gt", "digits_mlp", "ekfac", "", ""): (rec, [rec]),
                             RowKey("gt2", "digits_mlp", "ekfac", "", ""): (other, [other])})
    heads = [line for line in render_stagewise(table) if line.startswith("## ")]
    assert len(heads) == 2 and "ground truth gt2" in heads[1]  # a table per ground truth
    table = table[table["ground_truth"] == "gt"]
    assert table["step"].tolist() == [10, 20, 30] and table["lds"].tolist() == pytest.approx([0, 0.1, 0.2])
    text = "\n".join(render_stagewise(table))
    assert "step 10" in text and "step 30" in text and "digits_mlp" in text
    import matplotlib

    matplotlib.use("Agg")
    from tdabench.harness.read.stagewise import plot_stagewise_table

    def save(fig, path):
        fig.savefig(path)
        return path

    ax = []
    paths = plot_stagewise_table(table, tmp_path, lambda fig, path: (ax.append(fig.axes[0]), save(fig, path))[1])
    assert [p.name for p in paths] == ["stagewise_gt.png"] and paths[0].stat().st_size > 0
    assert ax[0].lines[0].get_xdata().tolist() == [10, 20, 30]  # LDS against the training step
    ax.clear()  # runs outside a sweep (sweep None, as records have it) are drawn too
    plot_stagewise_table(table.assign(sweep=None), tmp_path,
                         lambda fig, path: (ax.append(fig.axes[0]), save(fig, path))[1])
    assert ax[0].lines[0].get_xdata().tolist() == [10, 20, 30]


def test_trace_keeps_each_query_tokens_loss_on_a_language_task(tmp_path):
    """On a per-token task the trace also holds every query token's loss of each retrained model;
    their mean over tokens is the sequence observable at the last snapshot."""
    from tdabench.tasks.text import TextNeoX
    from tests.test_tasks_text import text_cfg

    path = tmp_path / "corpus.txt"
    path.write_bytes(bytes(range(256)) * 40)
    task = TextNeoX(text_cfg(text_path=str(path), tokens="byte", n_train=20, n_query=2, n_test=2, seq_len=16,
                             recipe={"epochs": 1, "batch_size": 8, "lr": 0.1, "momentum": 0.9,
                                     "weight_decay": 0.0, "schedule": "constant", "warmup": 0.0}),
                    seed=0, cache_dir=tmp_path, log=lambda m: None)
    gt = dict(GT, subsets=2, seeds=1)
    trace = TraceBuilder(task, gt, tmp_path / "c", quiet)
    out = trace.build()
    assert trace.tokens and trace.n_tokens == 16 and out.outcomes.shape == (2, 1, 2 * (2 + 16))
    tokens, stages = trace.token_outcomes(out), trace.stage_outcomes(out)
    assert tokens.shape == (2, 1, 2, 16)
    assert torch.allclose(tokens.mean(dim=-1), stages[-1], atol=1e-5)
    model = task.fit_model(torch.nonzero(trace.masks[1])[:, 0], trace.job_seed(1, 0)).model
    expected = task.batched(task.token_observables, model, task.query_split)
    assert torch.allclose(tokens[1, 0], expected, atol=1e-6)


def test_the_removal_settings_leave_other_runs_hashes_alone():
    """Runs without the removal metric keep the hash they had before its settings existed (reruns
    skip their done work, tuned studies continue); runs with it hash its settings."""
    from tdabench.harness.engine.compose import compose
    from tdabench.harness.engine.run import config_hash, study_key

    cfg = compose([])
    before = {k: v for k, v in cfg.items() if k != "removal"}
    assert config_hash(cfg) == config_hash(before) and study_key(cfg) == study_key(before)
    with_removal = compose(["metric=[lds,removal]"])
    assert config_hash(with_removal) != config_hash(compose(["metric=[lds,removal]", "removal.seeds=3"]))
