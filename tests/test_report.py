"""The leaderboard's report: plots, report.html, the wandb summary run, and a headless browser
rendering of the page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tdabench.harness.engine.compose import compose
from tdabench.harness.engine.run import execute
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.report import log_to_wandb, write_report

SMALL = ["task.n_train=150", "task.n_query=15", "task.hidden=16", "task.recipe.epochs=15",
         "gt.subsets=6", "gt.seeds=2", "lds.bootstrap=100", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    for extra in (["method=random"], ["method=grad_dot"], ["method=grad_dot", "task.n_train=100"],
                  ["method=random", "task.n_train=100"]):
        rec = execute(compose([*SMALL, *extra, f"cache_dir={base / 'cache'}", f"results_dir={base / 'r'}"]))
        assert rec["status"] == "ok"
    return base / "r"


def test_report_has_table_and_every_plot(results):
    path = write_report(results)
    page = path.read_text()
    plots = sorted(p.name for p in (results / "plots").glob("*.png"))
    # one LDS plot and one cost plot per ground truth (n_train 150 and 100): the rows' seconds differ
    assert sum(p.startswith("lds_digits_mlp_") for p in plots) == 2
    assert sum(p.startswith("cost_digits_mlp_") for p in plots) == 2
    assert "n_train_digits_mlp.png" in plots  # the sweep varies n_train
    assert page.count("<img") == len(plots) and "data:image/png;base64," in page
    assert "grad_dot" in page and "LDS ceiling" in page and "Pairwise" in page
    assert page.count("<h3>digits_mlp n=150 6x2 alpha=0.5 loss #") == 2  # its table and its pairwise matrix
    assert "6 subsets x 2 seeds" in page


def test_leaderboard_logs_a_wandb_summary_run(results):
    from tdabench.harness.read.tracking import _offline_records, read_offline_run

    run_dirs = [Path(d).parent for d in log_to_wandb(results, "offline")]
    assert len(run_dirs) == 2  # one summary run per ground truth
    for run_dir in run_dirs:
        kinds = {r.WhichOneof("record_type") for r in _offline_records(next(run_dir.glob("run-*.wandb")))}
        assert "history" in kinds, (run_dir, sorted(run_dir.rglob("*")))  # the table and images were logged
        assert list((run_dir / "files" / "media" / "images").glob("plots/*.png"))
        back = read_offline_run(run_dir)
        assert back["summary"]["leaderboard/_type"] == "table-file"
        assert back["config"]["gt_key"].startswith("digits_mlp-") and back["group"]
        table = json.loads(next((run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")).read_text())
        cols = table["columns"]
        assert {"lds", "lds_ci_low", "lds_ci_high", "normalized_lds", "fit_s"} <= set(cols)
        for row in table["data"]:
            for col in ("lds", "lds_ci_low", "lds_ci_high"):
                assert isinstance(row[cols.index(col)], float)  # numbers, so error bars can be drawn


def test_a_second_leaderboard_call_updates_the_summary_runs_instead_of_adding_some(results):
    first = sorted(Path(d).parent.name.rsplit("-", 1)[-1] for d in log_to_wandb(results, "offline"))
    second = sorted(Path(d).parent.name.rsplit("-", 1)[-1] for d in log_to_wandb(results, "offline"))
    assert first == second and len(set(first)) == 2  # one run id per ground truth, the same each time


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package `chromium`; "
                                              ".ci/run installs it where apt is available)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    page = write_report(results)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2400",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 2400)
    colors = img.getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50  # not a blank page
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert dom.count("<img") == len(list((results / "plots").glob("*.png")))


def test_adequacy_curves_from_saved_scores(results):
    import pandas as pd

    from tdabench.harness.views.adequacy import adequacy

    said = []
    paths = adequacy(results, "digits_mlp", say=said.append)
    assert [p.name for p in paths] == ["adequacy_digits_mlp.png"]
    df = pd.read_csv(results / "adequacy_digits_mlp.csv")
    assert set(df["seeds"]) == {1, 2} and df["subsets"].max() == 6
    assert df.loc[df["seeds"] == 1, "ceiling"].isna().all()  # one seed: no ceiling
    assert df.loc[df["seeds"] == 2, "ceiling"].notna().all()
    assert {"random", "grad_dot", "grad_dot_ci_low", "grad_dot_ci_high", "ceiling_ci_low"} <= set(df.columns)
    assert (df["grad_dot_ci_low"] <= df["grad_dot"]).all() and (df["grad_dot"] <= df["grad_dot_ci_high"]).all()
    # the verdict: ceiling and LDS with intervals, and which comparison the ground truth resolves
    assert said[0].startswith("digits_mlp n=100 6x2") and "LDS ceiling" in said[0] and "[" in said[0]
    assert "grad_dot" in said[1] and "random" in said[1]
    assert "comparisons" in said[2] and ("resolves 1 of 1" in said[2] or "cannot resolve" in said[3])


def test_cost_by_size_lists_every_size_and_marks_cached_fits():
    from tdabench.harness.read.leaderboard import build, cost_by_size, render_markdown

    def rec(method, params, size, fit, cached=None, status="ok"):
        return RunRecord(task="pythia_scaling", method=method, status=status, num_params=params,
                         lds=None, config={"task": {"size": size}}, time_s={"fit": fit, "score": 1.0},
                         peak_mem_mb={"fit": 10.0 * params, "score": 5.0},
                         diagnostics=None if cached is None else {"factors_from_cache": cached})

    records = [rec("ekfac", 1, "14m", 3.0, False), rec("ekfac", 2, "31m", 0.1, True),
               rec("bif", 1, "14m", 5.0), rec("bif", 2, "31m", 9.0, status="timeout"),
               RunRecord(task="digits_mlp", method="grad_dot", status="ok", num_params=7, lds=0.1)]
    costs = cost_by_size(records)
    assert list(costs["task"].unique()) == ["pythia_scaling"]  # one size only: no table
    assert len(costs) == 4 and costs["fit_from_cache"].tolist() == [False, False, False, True]
    assert costs[costs["method"] == "bif"]["status"].tolist() == ["ok", "timeout"]
    md = render_markdown(*build(records), costs)
    assert "Cost by model size (pythia_scaling)" in md and "| 31m" in md
    assert "fit_s and score_s of ekfac: work read from the cache" in md  # the shown ekfac run


def _metric_records():
    """Two ok records on one ground truth with all three metrics: ekfac ahead of trak on each."""
    import numpy as np

    rng = np.random.default_rng(0)
    flipped = [0, 3, 5, 8, 13, 21, 34]
    labels = np.zeros(60, bool)
    labels[flipped] = True
    out = []
    for method, shift, sharp in (("ekfac", 0.1, 2.0), ("trak", 0.0, 0.5)):
        loo = (0.5 + shift + 0.05 * rng.standard_normal(30)).round(6).tolist()
        lds = (0.4 + shift + 0.05 * rng.standard_normal(30)).round(6).tolist()
        suspicion = (sharp * labels + rng.random(60)).round(6).tolist()
        out.append(RunRecord.from_dict({
            "run_id": method, "task": "digits_mlp", "method": method, "status": "ok", "config_hash": method,
            "lds": float(np.mean(lds)), "lds_ci": [float(np.mean(lds)) - 0.05, float(np.mean(lds)) + 0.05],
            "lds_per_query": lds, "gt_key": "digits_mlp-abcdef123456", "n_train": 60, "gt_subsets": 20,
            "gt_seeds": 2, "config": {"task": {"name": "digits_mlp"}, "method": {"name": method, "seed": 0},
                                      "gt": {"subsets": 20, "seeds": 2, "alpha": 0.5}},
            "time_s": {"fit": 1.0, "score": 1.0}, "flops": {"fit": 2_300_000_000, "score": 0},
            "metrics": {"loo": {"status": "ok", "value": float(np.mean(loo)), "ci": [0.4, 0.7], "ceiling": 0.9,
                                "per_query": loo, "outcomes_key": "digits_mlp-loo-1"},
                        "mislabel_auc": {"status": "ok", "value": 0.8, "ci": [0.6, 0.95], "ceiling": None,
                                         "suspicion": suspicion, "flipped_idx": flipped}}}))
    return out


def test_every_metric_has_paired_tests_and_a_report_section(tmp_path):
    from tdabench.harness.read.leaderboard import chosen_records, write
    from tdabench.harness.read.metric_tables import pairwise_metrics

    records = _metric_records()
    pairs = pairwise_metrics(chosen_records(records))
    assert sorted(pairs["metric"]) == ["lds", "loo", "mislabel_auc"]  # one pair per metric, its own family
    by = pairs.set_index("metric")
    assert (by["method_a"] == "ekfac").all() and (by["mean_diff"] > 0).all() and (by["p_holm"] == by["p_value"]).all()
    assert by.loc["loo", "ci_low"] > 0 and by.loc["loo", "n"] == 30 and "Wilcoxon" in by.loc["loo", "test"]
    assert by.loc["mislabel_auc", "n"] == 60 and "examples" in by.loc["mislabel_auc", "test"]
    assert by.loc["mislabel_auc", "ci_low"] < by.loc["mislabel_auc", "mean_diff"] < by.loc["mislabel_auc", "ci_high"]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in records))
    write(tmp_path)
    assert (tmp_path / "pairwise_metrics.csv").exists()
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| 2.3e9 " in md and "2.3e+09" not in md  # FLOPs in engineering notation
    page = write_report(tmp_path).read_text()
    assert "<h2>Metric: leave-one-out correlation (loo)</h2>" in page
    assert "<h2>Metric: mislabel detection AUC (mislabel_auc)</h2>" in page
    assert page.count("<h3>loo: ") == 1 and page.count("<h3>mislabel_auc: ") == 1
    assert sorted(p.name.split("_digits")[0] for p in (tmp_path / "plots").glob("*.png")
                  if p.name.startswith(("loo", "mislabel"))) == ["loo", "mislabel_auc"]
    # the matrices show the interval and hold the p-values in a tooltip
    lds_pair = pairs[pairs["metric"] == "lds"].iloc[0]
    assert f"[{lds_pair['ci_low']:+.3f}, {lds_pair['ci_high']:+.3f}]" in page
    assert "Holm-adjusted p = " in page and page.count("title='ekfac minus trak") == 3
    assert "2.3e9" in page and "2300000000" not in page


def test_the_console_line_shows_every_computed_metric():
    from tdabench.harness.engine.run import _summary

    line = _summary(_metric_records()[0])
    assert line.startswith("LDS 0.") and "; loo 0." in line and "; mislabel_auc 0.8000 [0.600, 0.950]" in line
