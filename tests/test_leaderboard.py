"""Leaderboard rows: one per ground truth, method and setting; ground truths never ranked
together; several folders compared; Holm-adjusted pairwise tests; wandb names and groups."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tdabench.harness.read.leaderboard import build, render_markdown, row_keys
from tdabench.harness.read.leaderboard_cli import main
from tdabench.harness.read.record import RunRecord, invalid_reason
from tdabench.harness.read.record_view import ground_truth_label, record_setting, setting
from tdabench.harness.read.statistics import holm, pairwise_table, tied_with_best
from tdabench.harness.read.tracking import summary_of, sweep_group

ROOT = Path(__file__).resolve().parent.parent


def rec(method, lds, gt_key="digits_mlp-aaaaaaaaaaaa", subsets=100, seeds=3, params=None, shift=0.0,
        ceiling=0.9, status="ok", seed=0, task="digits_mlp", **extra):
    """A synthetic ok record whose per-query LDS is ``lds`` plus a fixed pattern plus ``shift``."""
    rng = np.random.default_rng(abs(hash((method, gt_key, json.dumps(params, sort_keys=True)))) % 2**32)
    per_query = (lds + shift + 0.05 * rng.standard_normal(40)).round(6).tolist()
    return RunRecord.from_dict({"run_id": f"{method}-{len(str(params))}", "task": task, "method": method,
            "status": status,
            "lds": lds, "lds_ci": [lds - 0.02, lds + 0.02], "lds_per_query": per_query, "n_train": 1000,
            "n_query": 40, "gt_subsets": subsets, "gt_seeds": seeds, "gt_key": gt_key, "lds_ceiling": ceiling,
            "lds_ceiling_ci": [ceiling - 0.01, ceiling + 0.01], "gt_reliability": ceiling ** 2,
            "normalized_lds": lds / ceiling, "trainings": 1, "group": "g1", "config_hash": f"h-{method}-{lds}",
            "config": {"task": {"name": task, "observable": "loss"},
                       "method": {"name": method, "seed": seed, **(params or {})},
                       "gt": {"subsets": subsets, "seeds": seeds, "alpha": 0.5},
                       "wandb": {"project": "proj", "entity": None}},
            "time_s": {"fit": 1.0, "score": 2.0}, "peak_mem_mb": {"fit": 3.0, "score": 4.0}, **extra})


def test_rows_are_kept_apart_by_ground_truth_and_setting():
    records = [rec("grad_dot", 0.32), rec("ekfac", 0.66),
               rec("grad_dot", 0.50, gt_key="digits_mlp-bbbbbbbbbbbb", subsets=20, seeds=2, ceiling=0.7),
               rec("bif", 0.45, params={"chains": 2, "draws": 50}),
               rec("bif", 0.55, params={"chains": 2, "draws": 200})]
    df, pairs, gts = build(records)
    assert len(df) == 5  # nothing collapsed
    grad_dot = df[df["method"] == "grad_dot"]
    assert grad_dot["ground_truth"].nunique() == 2
    assert set(df[df["method"] == "bif"]["setting"]) == {"chains=2 draws=50", "chains=2 draws=200"}
    assert "digits_mlp n=1000 20x2 alpha=0.5 loss #bbbbbb" in set(df["ground_truth"])
    # each ground truth has its own ceiling, and the small one is never ranked with the others
    assert {g: round(i["lds_ceiling"], 2) for g, i in gts.items()} == {
        "digits_mlp n=1000 100x3 alpha=0.5 loss #aaaaaa": 0.9, "digits_mlp n=1000 20x2 alpha=0.5 loss #bbbbbb": 0.7}
    assert set(pairs["ground_truth"]) == {"digits_mlp n=1000 100x3 alpha=0.5 loss #aaaaaa"}
    assert len(pairs) == 6 and "p_holm" in pairs and (pairs["p_holm"] >= pairs["p_value"]).all()
    small = df[df["ground_truth"].str.endswith("#bbbbbb")]
    assert small["tied_with_best"].tolist() == [""]  # alone on its ground truth: no tie mark
    md = render_markdown(df, pairs, gts)
    assert md.count("LDS ceiling") == 2 and "0.700 [0.690, 0.710]" in md and "20 subsets x 2 seeds" in md


def test_seeds_of_one_setting_are_one_row_with_a_spread():
    records = [rec("bif", 0.50, seed=0, params={"draws": 50}), rec("bif", 0.54, seed=1, params={"draws": 50})]
    df, _, _ = build(records)
    assert len(df) == 1 and df.loc[0, "method_seeds"] == 2 and df.loc[0, "runs"] == 2
    assert df.loc[0, "lds_sd_over_seeds"] == pytest.approx(np.std([0.50, 0.54], ddof=1))


def test_setting_uses_the_class_signature_and_the_task_defaults():
    r = rec("bif", 0.5, params={"chains": 4, "draws": 100, "eps": 1e-4, "gamma": 30.0}, task="gone_task")
    assert record_setting(r) == "gamma=30"  # the other values are BIF's signature defaults
    r.config["task"]["method_defaults"] = {"bif": {"gamma": 30.0, "chains": 8}}
    assert record_setting(r) == "chains=4"  # gamma is this task's default; chains differs from it


def test_setting_follows_the_task_defaults_of_today_and_the_shared_ones():
    import yaml

    today = yaml.safe_load((ROOT / "conf" / "task" / "digits_mlp.yaml").read_text())["method_defaults"]
    at_today = {**today["bif"]}
    r = rec("bif", 0.5, params=at_today)
    r.config["task"]["method_defaults"] = {"bif": {"draws": 12345}}  # what the run saw
    assert record_setting(r) == ""  # labelled against the task's defaults as they are now
    r.config["method"]["draws"] = 12345
    assert record_setting(r) == "draws=12345"
    # a reference implementation reads the native method's task defaults (trak -> trak_traker)
    t = rec("trak_traker", 0.3, params={k: v for k, v in today["trak"].items()})
    assert record_setting(t) == ""


def test_rows_made_under_different_task_defaults_are_not_merged():
    # the same label '' (at its task's defaults) for two parameter sets: a task changed its defaults
    # (a task that is not installed here: its defaults are those its records hold)
    old = rec("bif", 0.55, params={"chains": 8, "draws": 800}, task="gone_task")
    old.config["task"]["method_defaults"] = {"bif": {"chains": 8, "draws": 800}}
    new = rec("bif", 0.52, params={"chains": 8, "draws": 400}, task="gone_task")
    new.config["task"]["method_defaults"] = {"bif": {"chains": 8, "draws": 400}}
    assert record_setting(old) == record_setting(new) == ""
    keys = [k[3] for k in row_keys([old, new])]
    assert keys == ["chains=8 draws=800", "chains=8 draws=400"]
    df, _, _ = build([old, new])
    assert len(df) == 2
    # records at one parameter set keep the short label
    assert [k[3] for k in row_keys([old, RunRecord.from_dict(old.as_dict())])] == ["", ""]


def test_setting_of_an_unregistered_method_compares_with_its_most_common_values():
    records = [rec("removed_plugin", 0.3, params={"k": 1, "mode": "a"}),
               rec("removed_plugin", 0.3, params={"k": 1, "mode": "a"}),
               rec("removed_plugin", 0.4, params={"k": 5, "mode": "a"})]
    assert [k[3] for k in row_keys(records)] == ["", "", "k=5"]
    assert setting(records[2], {}) == "k=5 mode=a"


def test_optional_cost_fields_and_overloaded_flag():
    records = [rec("grad_dot", 0.3, flops={"fit": 1e9, "score": 2e9}, cpu_time_s={"fit": 0.5}, overloaded=True),
               rec("ekfac", 0.6)]
    df, pairs, gts = build(records)
    row = df.set_index("method").loc["grad_dot"]
    assert row["flops"] == 3e9 and row["overloaded"] is True
    md = render_markdown(df, pairs, gts)
    assert "flops" in md and "⚠" in md and "overloaded" in md
    old_md = render_markdown(*build([rec("grad_dot", 0.3), rec("ekfac", 0.6)]))
    assert "flops" not in old_md and "overloaded" not in old_md
    s = summary_of(records[0])
    assert s["flops"] == 3e9 and s["fit_flops"] == 1e9 and s["fit_cpu_s"] == 0.5 and s["overloaded"] is True


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped, monotone
    assert holm([]) == []


def test_tie_marks_use_the_holm_adjusted_p_value():
    rng = np.random.default_rng(3)
    base = rng.normal(0.4, 0.15, 60)
    per_query = {"best": base + 0.02, "b": base + 0.02 - 0.012 + rng.normal(0, 0.04, 60)}
    for i in range(6):
        per_query[f"far{i}"] = base - 0.3 + rng.normal(0, 0.04, 60)
    pairs = pairwise_table(per_query)
    raw = next(p for p in pairs if {p.a, p.b} == {"best", "b"})
    ties = tied_with_best(per_query, pairs=pairs)
    assert ties["b"] == (raw.p_holm >= 0.05) and raw.p_holm >= raw.p_value
    assert not any(ties[f"far{i}"] for i in range(6))


def test_bitwise_equal_rows_are_one_hypothesis_in_the_holm_family():
    rng = np.random.default_rng(5)
    base = rng.normal(0.4, 0.15, 40)
    per_query = {"a": base + rng.normal(0.05, 0.05, 40), "b": base, "c": base - 0.1 + rng.normal(0, 0.05, 40)}
    alone = {(p.a, p.b): p.p_holm for p in pairwise_table(per_query)}
    pairs = pairwise_table({**per_query, "b_copy": base.copy(), "c_copy": per_query["c"].copy()})
    got = {(p.a, p.b): p.p_holm for p in pairs}
    assert len(pairs) == 10  # every pair is still listed ...
    for (x, y), p in alone.items():  # ... and the family is the three distinct hypotheses, as without copies
        assert got[(x, y)] == pytest.approx(p)
    assert got[("a", "b_copy")] == pytest.approx(alone[("a", "b")])
    assert {got[k] for k in got if set(k) in ({"b", "b_copy"}, {"c", "c_copy"})} == {1.0}  # no hypothesis
    assert tied_with_best({"a": per_query["a"], "a_copy": per_query["a"].copy(), "c": per_query["c"]})["a_copy"]


def test_reference_records_read_and_give_the_same_lds_table():
    from tdabench.harness.read.results import read_records

    for folder, top, lds in (("demo", "magic", 0.7515), ("cifar10_n500", "ekfac", 0.316)):
        records = read_records(ROOT / "results" / "reference" / folder)
        df, pairs, gts = build(records)
        assert df["ground_truth"].nunique() == 1 and len(gts) == 1
        assert not df.duplicated(["method", "setting"]).any()  # one row per method and setting
        assert df.loc[df["method"] == "source", "setting"].tolist() == [""]  # exclude: [] is the default None
        assert df.loc[0, "method"] == top and df.loc[0, "lds"] == pytest.approx(lds, abs=5e-4)
        assert "p_holm" in pairs
    md = render_markdown(*build(read_records(ROOT / "results" / "reference" / "demo")))
    assert "0.72" in md and "LDS ceiling 0.948" in md


def _write(folder: Path, records: list[RunRecord]) -> Path:
    folder.mkdir(parents=True)
    (folder / "runs.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in records))
    return folder


def test_two_folders_compare_in_one_leaderboard(tmp_path, capsys):
    a = _write(tmp_path / "a", [rec("grad_dot", 0.32), rec("ekfac", 0.66)])
    b = _write(tmp_path / "b", [rec("kfac", 0.61), rec("ekfac", 0.60, shift=-0.06)])
    main([str(a), str(b), "--out", str(tmp_path / "ab"), "--no-report"])
    df = pd.read_csv(tmp_path / "ab" / "leaderboard.csv")
    assert {tuple(x) for x in df[["method", "sweep"]].values} == {
        ("grad_dot", "a"), ("ekfac", "a"), ("kfac", "b"), ("ekfac", "b")}
    pairs = pd.read_csv(tmp_path / "ab" / "pairwise.csv")
    assert len(pairs) == 6 and "ekfac @a" in set(pairs["method_a"])
    assert not (a / "leaderboard.csv").exists()
    with pytest.raises(SystemExit):
        main([str(a), str(b)])  # several folders need --out
    assert "--out is required" in capsys.readouterr().err


def test_sweep_group_is_named_stored_and_kept(tmp_path):
    d = tmp_path / "results" / "bif_hparams"
    assert sweep_group(d, None, date(2026, 11, 27)) == "bif_hparams-2026-11-27"
    assert sweep_group(d, None, date(2026, 12, 1)) == "bif_hparams-2026-11-27"  # resumed: same group
    assert sweep_group(d, "accept") == "accept"
    assert sweep_group(d, None) == "accept"  # a later run without a name keeps the named group


def test_wandb_run_name_carries_the_setting():
    from tdabench.harness.read.tracking import run_name

    r = rec("bif", 0.5, params={"draws": 50})
    assert run_name(r, record_setting(r)) == "digits_mlp/bif [draws=50]"
    assert ground_truth_label(r) == "digits_mlp n=1000 100x3 alpha=0.5 loss #aaaaaa"
    s = summary_of(r)
    for k in ("lds", "lds_ci_low", "lds_ci_high", "normalized_lds", "lds_ceiling", "gt_reliability",
              "trainings", "fit_s", "score_s", "total_s", "peak_mem_mb", "lds_per_query"):
        assert k in s, k
    assert s["fit_s"] == 1.0 and s["total_s"] == 3.0 and s["peak_mem_mb"] == 4.0
    r.metrics = {"loo": {"status": "ok", "value": 0.4, "ci": [0.3, 0.5], "ceiling": None},
                    "mislabel_auc": {"status": "unsupported", "value": None, "message": "no labels"}}
    s = summary_of(r)
    assert s["metric/loo"] == 0.4 and s["metric/loo_ci_high"] == 0.5 and "metric/loo_ceiling" not in s
    assert not any(k.startswith("metric/mislabel_auc") for k in s)


def test_list_prints_every_registered_method_task_and_metric(capsys):
    from tdabench.harness.core.registry import METHODS, METRICS, TASKS
    from tdabench.harness.engine.listing import print_listing

    print_listing()
    out = capsys.readouterr().out.splitlines()
    names = METHODS.names() + TASKS.names() + METRICS.names()
    for name in names:
        assert sum(line.split()[0] == name for line in out if line.startswith("  ")) == 1, name
    spaces = [line for line in out if line.strip().startswith("search space: ")]
    with_space = [m for m in METHODS.names() if METHODS.get(m).search_space]
    assert len(spaces) == len(with_space) and "bif" in with_space and "gamma [5, 300] log" in spaces[0]
    assert "eps [0.02, 1] times nbeta log" in spaces[0]  # the BIF searches its step, eps * nbeta
    # a task that redeclares a method's space: one line per method under the task's name
    here = [line for line in out if "'s search space here: " in line]
    assert len(here) == sum(len(TASKS.get(t).search_spaces) for t in TASKS.names()) >= 2
    assert "bif's search space here: gamma [10, 1000] log" in here[0]
    assert len(out) == len(names) + len(spaces) + len(here) + 3
    assert {"lds", "loo", "mislabel_auc"} <= set(METRICS.names())


def test_shard_jobs_do_not_multiply_by_the_method_list():
    from tdabench.harness.engine.cli import shard_overrides

    argv = ["-m", "hydra/launcher=slurm", "gt.num_shards=8", "gt.shard=0,1,2,3,4,5,6,7"]
    assert shard_overrides(argv) == [*argv, "method=grad_dot"]
    assert shard_overrides([*argv, "method=ekfac"]) == [*argv, "method=ekfac"]
    assert shard_overrides(["-m", "method=bif,ekfac"]) == ["-m", "method=bif,ekfac"]


def test_language_model_rows_name_regime_observable_and_held_out_loss():
    quality = {"model_quality": {"test_acc": 0.27, "test_loss": 2.41}}
    scratch, finetune = ({"config": {"task": {"name": "text_neox", "observable": "loss", "regime": r},
                                     "method": {"name": "ekfac", "seed": 0},
                                     "gt": {"subsets": 40, "seeds": 2, "alpha": 0.5}}} for r in ("scratch", "finetune"))
    records = [RunRecord.from_dict({**rec("ekfac", 0.5, gt_key="text_neox-aaaaaaaaaaaa", task="text_neox").as_dict(),
                                    **scratch, **quality}),
               RunRecord.from_dict({**rec("ekfac", 0.3, gt_key="text_neox-bbbbbbbbbbbb", task="text_neox").as_dict(),
                                    **finetune, **quality})]
    assert [ground_truth_label(r) for r in records] == ["text_neox n=1000 100x3 alpha=0.5 loss scratch #aaaaaa",
                                                       "text_neox n=1000 100x3 alpha=0.5 loss finetune #bbbbbb"]
    df, pairs, gts = build(records)
    assert df["test_loss"].tolist() == [2.41, 2.41] and df["test_acc"].tolist() == [0.27, 0.27]
    md = render_markdown(df, pairs, gts)
    assert md.count("Observable: each query's mean token loss") == 2 and "mean over tokens" in md
    assert "mean token loss" not in render_markdown(*build([rec("ekfac", 0.5)]))  # digits: a class loss


def test_an_unknown_ceiling_names_its_real_cause():
    from tdabench.harness.read.leaderboard import ceiling_text

    info = {"gt_key": "k", "gt_subsets": 20, "gt_seeds": 3, "lds_ceiling": None}
    assert "gt.seeds >= 2" not in ceiling_text(info) and "reached the LDS" in ceiling_text(info)
    assert "gt.seeds >= 2" in ceiling_text({**info, "gt_seeds": 1})


def test_the_report_names_a_language_models_observable(tmp_path):
    from tdabench.harness.read.report import write_report

    folder = _write(tmp_path / "r", [rec("ekfac", 0.5, gt_key="text_neox-aaaaaaaaaaaa", task="text_neox"),
                                     rec("grad_dot", 0.4, gt_key="text_neox-aaaaaaaaaaaa", task="text_neox")])
    page = write_report([folder]).read_text()
    assert "mean token loss" in page and "mean over tokens" in page


def test_a_tuned_row_names_the_values_it_chose():
    tuned = {"trials": 4, "search_space": {"damping": "[0.001, 10] log"}, "best_params": {"damping": 0.0312}}
    chosen = rec("ekfac", 0.7, params={"damping": 0.0312}, tuned=tuned)
    at_default = rec("ekfac", 0.66, params={"damping": 0.1}, tuned={**tuned, "best_params": {"damping": 0.1}})
    assert record_setting(chosen) == "tuned (4 trials) damping=0.0312"
    assert record_setting(at_default) == "tuned (4 trials) damping=0.1"  # the default won: said so
    df, _, _ = build([chosen, rec("ekfac", 0.66)])
    assert set(df["setting"]) == {"tuned (4 trials) damping=0.0312", ""}
    # rows are keyed by the tuning procedure: another data seed's choice lines up with this one
    other_seed = rec("ekfac", 0.6, gt_key="digits_mlp-bbbbbbbbbbbb", params={"damping": 0.5},
                     tuned={**tuned, "best_params": {"damping": 0.5}})
    assert [k[3] for k in row_keys([chosen, other_seed])] == ["tuned (4 trials)"] * 2


def test_an_ok_record_without_an_lds_is_invalid_never_ranked_and_reported_once(tmp_path, capfd):
    source = ROOT / "results" / "reference" / "demo" / "runs.jsonl"
    lines = source.read_text().splitlines()
    good = next(json.loads(line) for line in lines if json.loads(line)["status"] == "ok")
    folder = tmp_path / "d"
    folder.mkdir()
    copy = {**good, "lds": None, "run_id": good["run_id"][:-8] + "deadbeef"}
    (folder / "runs.jsonl").write_text("\n".join(lines + [json.dumps(copy), '{"torn']) + "\n")
    main(["-q", str(folder)])
    err = capfd.readouterr().err
    assert err.count("status ok without an LDS") == 1, err
    assert err.count("not a complete record") == 1, err
    board = pd.read_csv(folder / "leaderboard.csv")
    assert board.loc[board["method"] == good["method"], "lds"].notna().all()
    cost_only = json.loads((ROOT / "results" / "reference" / "pythia_scaling" / "runs.jsonl").open().readline())
    assert cost_only["lds"] is None and invalid_reason(cost_only) is None  # no ground truth: no LDS claimed


def test_a_folder_without_records_is_a_library_error_and_one_cli_line(tmp_path):
    from tdabench.harness.read.leaderboard import read_folders
    from tdabench.harness.read.results import NoRecordsError

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoRecordsError, match="no records in"):  # a library call raises, never exits
        read_folders([tmp_path / "empty"])
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "empty"), "--no-report"])
    assert str(exc.value.code).startswith("tdabench-leaderboard: error: no records in")
