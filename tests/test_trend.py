"""The trend of a difference between two methods with the training-set size (trend.csv)."""

from __future__ import annotations

import numpy as np

from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.trend import pair_trend, slope_fit, trends

SIZES = (100, 200, 400, 800, 1600)


def _rec(method, n, seed, values, subsets=20):
    cfg = {"seed": seed, "task": {"name": "digits_mlp", "n_train": n},
           "gt": {"subsets": subsets, "seeds": 2, "alpha": 0.5, "shard": None}, "method": {"name": method}}
    return RunRecord.from_dict({"method": method, "task": "digits_mlp", "status": "ok", "config": cfg,
                                "gt_key": f"digits_mlp-{n}-{seed}", "n_train": n, "gt_subsets": subsets,
                                "gt_seeds": 2, "lds_per_query": list(values)})


def _rows(gap, seeds=(0, 1, 2), noise=0.05, subsets=20):
    """Records of methods a and b at every size and seed, a - b = gap(n) plus noise."""
    rng = np.random.default_rng(7)
    rows = {}
    for n in SIZES:
        for seed in seeds:
            base = rng.normal(0.5, 0.1, 60)
            for method, shift in (("a", gap(n)), ("b", 0.0)):
                values = base + shift + rng.normal(0, noise, 60)
                rows.setdefault((f"gt{n}-{seed}", "digits_mlp", method, "", None), (None, []))[1].append(
                    _rec(method, n, seed, values, subsets))
    return rows


def test_slope_is_least_squares():
    x = np.log2(np.array(SIZES, float))
    assert np.isclose(slope_fit(x, 0.3 + 0.02 * x), 0.02)
    assert np.isclose(slope_fit(x, np.polyval([-0.1, 2.0], x)), np.polyfit(x, np.polyval([-0.1, 2.0], x), 1)[0])


def test_a_growing_gap_is_found_and_a_constant_one_is_not():
    growing = trends(_rows(lambda n: 0.1 + 0.03 * np.log2(n / 100)))
    assert len(growing) == 1
    row = growing.iloc[0]
    assert (row["a"], row["b"]) == ("a", "b") and row["sizes"] == "100 200 400 800 1600"
    assert row["seeds"] == "3 3 3 3 3"
    assert 0.02 < row["slope_per_doubling"] < 0.04 and row["ci_low"] > 0 and row["p_holm"] < 0.01
    assert np.isclose(row["diff_smallest"], 0.1, atol=0.03) and np.isclose(row["diff_largest"], 0.22, atol=0.03)
    flat = trends(_rows(lambda n: 0.1)).iloc[0]
    assert flat["ci_low"] < 0 < flat["ci_high"] and flat["p_value"] > 0.05


def test_series_need_two_sizes_and_the_same_ground_truth_settings():
    rows = _rows(lambda n: 0.1 + 0.05 * (n == 200))
    one_size = {k: v for k, v in rows.items() if k[0].startswith("100", 2)}
    assert trends(one_size).empty
    two_sizes = {k: v for k, v in rows.items() if k[0].startswith(("100", "200"), 2)}
    pair = trends(two_sizes).iloc[0]  # one doubling: the slope is the change between the sizes
    assert pair["sizes"] == "100 200"
    assert np.isclose(pair["slope_per_doubling"], pair["diff_largest"] - pair["diff_smallest"])
    assert len(trends(rows)) == 1
    # another subset count is another series: two series of five sizes each, two trends
    other = _rows(lambda n: 0.1, subsets=40)
    both = {**rows, **{(k[0] + "b", *k[1:]): v for k, v in other.items()}}
    assert sorted(trends(both)["series"]) == ["digits_mlp 20x2 alpha=0.5 loss", "digits_mlp 40x2 alpha=0.5 loss"]


def test_a_seed_where_the_two_rows_saw_other_queries_is_left_out():
    a = {n: {0: np.full(10, 0.6), 1: np.full(10, 0.6)} for n in SIZES[:3]}
    b = {n: {0: np.full(10, 0.5), 1: np.full(12, 0.5)} for n in SIZES[:3]}
    fit = pair_trend(a, b, n_boot=200)
    assert fit["seeds"] == "1 1 1" and np.isclose(fit["diff_smallest"], 0.1)
    assert pair_trend({n: a[n] for n in SIZES[:1]}, b, n_boot=200) is None


def test_size_points_average_the_seeds_with_the_two_level_interval():
    from tdabench.harness.read.size_plot import size_points

    rows = _rows(lambda n: 0.1)
    recs = [r for _, rs in rows.values() for r in rs]
    for r in recs:
        r.lds = float(np.mean(r.lds_per_query))
        r.lds_ci = [r.lds - 0.01, r.lds + 0.01]
    points = size_points(recs)["digits_mlp"]
    assert sorted(points) == ["a", "b"] and [p[0] for p in points["a"]] == list(SIZES)
    n, lds, lo, hi, _, seeds = points["a"][0]
    by_seed = [r.lds for r in recs if r.method == "a" and r.n_train == 100]
    assert seeds == 3 and np.isclose(lds, np.mean(by_seed)) and lo < lds < hi
    assert hi - lo > 0.02  # wider than one record's query interval: the seeds vary
    one = size_points([r for r in recs if (r.config or {}).get("seed") == 0])["digits_mlp"]["a"][0]
    assert one[5] == 1 and np.isclose(one[2], one[1] - 0.01)  # a single seed: its record's interval
