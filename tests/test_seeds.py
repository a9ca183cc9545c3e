"""The leaderboard's across-data-seeds table (harness/read/seeds.py)."""

from __future__ import annotations

import numpy as np

from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.seeds import across_seeds, two_level_bootstrap


def _rec(method, seed, values):
    cfg = {"seed": seed, "task": {"name": "digits_mlp", "n_train": 200},
           "gt": {"subsets": 20, "seeds": 2, "alpha": 0.5, "shard": None}, "method": {"name": method}}
    return RunRecord.from_dict({"method": method, "task": "digits_mlp", "status": "ok", "config": cfg,
                                "gt_key": f"digits_mlp-{seed}", "n_train": 200, "gt_subsets": 20, "gt_seeds": 2,
                                "lds_per_query": list(values)})


def test_two_level_interval_is_wider_than_queries_alone():
    rng = np.random.default_rng(0)
    per_seed = [rng.normal(m, 0.1, 100) for m in (0.4, 0.5, 0.6)]
    boot = two_level_bootstrap(per_seed)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    assert lo < 0.5 < hi
    pooled = np.concatenate(per_seed)
    one_level = [pooled[rng.integers(0, 300, 300)].mean() for _ in range(500)]
    assert hi - lo > 2 * (np.quantile(one_level, 0.975) - np.quantile(one_level, 0.025))


def test_across_seeds_table_and_pairs():
    rng = np.random.default_rng(1)
    recs = {}
    for seed in (0, 1, 2):
        base = rng.normal(0.5, 0.1, 50)
        for method, shift in (("a", 0.2), ("b", 0.0)):
            recs[(f"gt{seed}", "digits_mlp", method, "", None)] = (None, [_rec(method, seed, base + shift)])
    recs[("gt9", "digits_mlp", "c", "", None)] = (None, [_rec("c", 0, rng.normal(0, 1, 50))])  # one seed only
    table, pairs = across_seeds(recs)
    assert list(table["method"]) == ["a", "b"] and list(table["seeds"]) == [3, 3]
    assert all(table["lds_ci_low"] <= table["lds_mean"]) and all(table["lds_mean"] <= table["lds_ci_high"])
    assert len(pairs) == 1 and pairs.iloc[0]["a"] == "a"
    assert abs(pairs.iloc[0]["mean_diff"] - 0.2) < 1e-9 and pairs.iloc[0]["ci_low"] > 0.19
    assert pairs.iloc[0]["p_holm"] < 0.05


def test_no_table_for_one_seed():
    table, pairs = across_seeds({("g", "t", "a", "", None): (None, [_rec("a", 0, [0.1, 0.2, 0.3])])})
    assert table.empty and pairs.empty
