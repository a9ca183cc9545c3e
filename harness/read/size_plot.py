"""LDS against the training-set size (``plots/n_train_<task>.png``), one line per leaderboard row.

Where a size was run at several data seeds (the same ground-truth settings at several ``seed``
values), its point is the mean over seeds (the newest ok record of each) with the two-level 95%
interval of the "across data seeds" table (seeds, then queries within each seed:
:func:`harness.read.seeds.two_level_bootstrap`), and the normalized LDS is the mean of the seeds'
normalized LDS with that interval scaled alike; a size run at one seed shows its record's LDS and
query-bootstrap interval.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from tdabench.harness.read.leaderboard import row_keys, row_label
from tdabench.harness.read.record import RunRecord
from tdabench.harness.read.seeds import finite_per_query, two_level_bootstrap


def size_points(records: list[RunRecord]) -> dict[str, dict[str, list[tuple]]]:
    """``{task: {row label: [(n_train, lds, low, high, normalized, seeds), ...]}}`` sorted by
    n_train, for the ok records with an LDS and an n_train."""
    ok = [r for r in records if r.is_ok and r.lds is not None and r.n_train is not None]
    newest: dict[tuple, RunRecord] = {}
    for r, (_, _, method, setting, sweep) in zip(ok, row_keys(ok)):
        line = row_label((None, None, method, setting, sweep))
        newest[(r.task, line, r.n_train, (r.config or {}).get("seed"))] = r  # records in the order written
    cells: dict[tuple, list[RunRecord]] = defaultdict(list)
    for (task, line, n, _), r in newest.items():
        cells[(task, line, n)].append(r)
    out: dict[str, dict[str, list[tuple]]] = defaultdict(lambda: defaultdict(list))
    for (task, line, n), recs in sorted(cells.items(), key=lambda kv: kv[0][2]):
        per_seed = [v for v in map(finite_per_query, recs) if len(v) >= 2]
        if len(recs) > 1 and len(per_seed) == len(recs):
            lds = float(np.mean([v.mean() for v in per_seed]))
            lo, hi = np.quantile(two_level_bootstrap(per_seed), [0.025, 0.975])
        else:
            r = recs[-1]
            lds, (lo, hi) = r.lds, (r.lds_ci or [np.nan, np.nan])
        norms = [r.normalized_lds for r in recs if r.normalized_lds is not None]
        norm = float(np.mean(norms)) if len(norms) == len(recs) else np.nan
        out[task][line].append((n, lds, float(lo), float(hi), norm, len(recs)))
    return out


def plot_n_train(records: list[RunRecord], out: Path, save: Callable) -> list[Path]:
    """Per task whose records vary n_train: LDS (95% interval) and normalized LDS (LDS over the
    ground truth's ceiling; the same interval scaled by it) against n_train; ``save(fig, path)``
    writes a figure."""
    import matplotlib.pyplot as plt

    paths = []
    for task, lines in size_points(records).items():
        if len({p[0] for pts in lines.values() for p in pts}) < 2:
            continue
        several = any(p[5] > 1 for pts in lines.values() for p in pts)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for line, pts in lines.items():
            n, lds, lo, hi, norm, _ = (np.array(c, float) for c in zip(*pts))
            for ax, y in zip(axes, (lds, norm)):
                if np.isnan(y).all():
                    continue
                scale = y / lds  # 1 for LDS, 1 / ceiling for normalized LDS
                err = [np.nan_to_num((lds - lo) * scale), np.nan_to_num((hi - lds) * scale)]
                ax.errorbar(n, y, yerr=err, fmt="o-", capsize=3, label=line)
        for ax, label in zip(axes, ("LDS (95% interval)", "normalized LDS (LDS / ceiling)")):
            ax.set_xscale("log")
            ax.set_xlabel("n_train (log)")
            ax.set_ylabel(label)
        axes[0].set_title(f"{task}: LDS against training-set size"
                          + (" (mean over data seeds)" if several else ""), fontsize=10)
        axes[1].set_title("normalized by each ground truth's ceiling", fontsize=10)
        axes[1].legend(fontsize=7)
        paths.append(save(fig, out / f"n_train_{task}.png"))
    return paths
