"""``tdabench-leaderboard RESULTS_DIR... [--out OUT] [--wandb [online]] [--no-report]``.

Writes the leaderboard of one results folder, or of several compared side by side (``--out``
required; a ``sweep`` column tells their rows apart), into OUT (default: the one folder):
``leaderboard.md``, ``leaderboard.csv``, ``pairwise.csv`` (:mod:`harness.leaderboard`) and, when a
method ran at two or more settings on a ground truth, ``frontier.csv`` (:mod:`harness.frontier`),
prints the leaderboard tables (the pairwise comparisons too with ``-v``; nothing with ``-q``), and
writes ``report.html`` with its plots (:mod:`harness.report`; ``--no-report`` skips them).
``--wandb`` also logs one summary run per ground truth into the wandb group, project and entity of
the runs it summarises, updating it at later calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tdabench.harness.core.logs import setup as setup_logging
from tdabench.harness.read.frontier import write as write_frontier
from tdabench.harness.read.leaderboard import read_folders, write
from tdabench.harness.read.report import log_to_wandb, write_report
from tdabench.harness.read.results import one_line_errors


@one_line_errors("tdabench-leaderboard")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tdabench-leaderboard", description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", nargs="*", default=["results"], metavar="RESULTS_DIR",
                        help="results folders; several are compared in one leaderboard (needs --out)")
    parser.add_argument("--out", default=None,
                        help="folder for the leaderboard, report and plots (default: the one RESULTS_DIR)")
    parser.add_argument("--wandb", nargs="?", const="offline", choices=["offline", "online"],
                        help="also log one summary run per ground truth to wandb, in the group, project "
                             "and entity of the summarised runs (offline by default)")
    parser.add_argument("--no-report", action="store_true", help="skip report.html and the plots")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debugging detail")
    args = parser.parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    if len(args.results_dirs) > 1 and args.out is None:
        missing = [d for d in args.results_dirs if not Path(d).is_dir()]
        parser.error(f"--out is required with {len(args.results_dirs)} results folders "
                     f"({', '.join(map(repr, args.results_dirs))}); add --out DIR for the combined leaderboard"
                     + (f" ({', '.join(map(repr, missing))} not found: quote a folder whose name has a space)"
                        if missing else ""))
    out = Path(args.out or args.results_dirs[0])
    verbosity = args.verbose - args.quiet
    write(args.results_dirs, out)
    if verbosity >= 0:
        markdown = (out / "leaderboard.md").read_text()
        print(markdown if verbosity > 0 else without_pairwise(markdown, out))
    frontier = write_frontier(read_folders(args.results_dirs), out)
    if frontier and verbosity >= 0:
        print(f"frontier: {frontier}")
    if not args.no_report:
        report = write_report(args.results_dirs, out)
        if verbosity >= 0:
            print(f"report: {report}")
    if args.wandb:
        for run_dir in log_to_wandb(args.results_dirs, args.wandb, out):
            if verbosity >= 0:
                print(f"wandb summary run: {run_dir}")
    sys.stdout.flush()


def without_pairwise(markdown: str, out: Path) -> str:
    """``leaderboard.md`` without its pairwise-comparison tables (one line says where they are)."""
    kept, skipping = [], False
    for block in markdown.split("\n\n"):
        if block.startswith("Pairwise comparisons"):
            skipping = True
        elif not block.startswith("|"):
            skipping = False
        if not skipping:
            kept.append(block)
    kept.append(f"Pairwise comparisons: {out / 'leaderboard.md'} and {out / 'pairwise.csv'} (tdabench-leaderboard -v "
                "prints them).")
    return "\n\n".join(kept).rstrip() + "\n"


if __name__ == "__main__":
    main()
