"""``tdabench-leaderboard RESULTS_DIR``: one row per task and method from ``runs.jsonl``.

Uses the newest ``ok`` record of each (task, method); failed pairings without any ok record are
listed with their status. Writes ``leaderboard.md`` and ``leaderboard.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.results import read_records

COLUMNS = ["task", "method", "status", "lds", "lds_ci", "fit_s", "score_s", "peak_mem_mb",
           "trainings", "n_train", "n_query", "test_acc", "runs"]


def _row(rec: dict, runs: int) -> dict:
    t, m = rec.get("time_s", {}), rec.get("peak_mem_mb", {})
    ci = rec.get("lds_ci") or [None, None]
    return {
        "task": rec["task"], "method": rec["method"], "status": rec["status"],
        "lds": rec.get("lds"),
        "lds_ci": f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else "",
        "fit_s": t.get("fit"), "score_s": t.get("score"),
        "peak_mem_mb": max([m.get("fit", 0), m.get("score", 0)]) if m else None,
        "trainings": rec.get("trainings"), "n_train": rec.get("n_train"), "n_query": rec.get("n_query"),
        "test_acc": rec.get("model_quality", {}).get("test_acc"), "runs": runs,
    }


def build(records: list[dict]) -> pd.DataFrame:
    rows = []
    by_pair: dict[tuple, list[dict]] = {}
    for rec in records:
        by_pair.setdefault((rec.get("task"), rec.get("method")), []).append(rec)
    for recs in by_pair.values():
        ok = [r for r in recs if r.get("status") == "ok"]
        rows.append(_row(ok[-1] if ok else recs[-1], len(recs)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if df.empty:
        return df
    df["_ok"] = df["status"] == "ok"
    df = df.sort_values(["task", "_ok", "lds"], ascending=[True, False, False]).drop(columns="_ok")
    return df.reset_index(drop=True)


def write(results_dir: str | Path) -> pd.DataFrame:
    results_dir = Path(results_dir)
    records = read_records(results_dir)
    if not records:
        raise SystemExit(f"tdabench-leaderboard: error: no records in {results_dir / 'runs.jsonl'}; "
                         "run `tdabench ... results_dir=DIR` first")
    df = build(records)
    df.to_csv(results_dir / "leaderboard.csv", index=False)
    (results_dir / "leaderboard.md").write_text(df.to_markdown(index=False, floatfmt=".4g") + "\n")
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tdabench-leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", nargs="?", default="results")
    args = parser.parse_args(argv)
    df = write(args.results_dir)
    print(df.to_markdown(index=False, floatfmt=".4g"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
