"""``tdabench-leaderboard RESULTS_DIR... [--out OUT] [--wandb [online]] [--no-report]``.

Writes the leaderboard of one results folder, or of several compared side by side (``--out``
required; a ``sweep`` column tells their rows apart), into OUT (default: the one folder):
``leaderboard.md``, ``leaderboard.csv``, ``pairwise.csv`` (:mod:`harness.leaderboard`) and, when a
method ran at two or more settings on a ground truth, ``frontier.csv`` (:mod:`harness.frontier`),
prints the Markdown, and writes ``report.html`` with its plots (:mod:`harness.report`; ``--no-report`` skips
them). ``--wandb`` also logs one summary run per ground truth into the wandb group, project and
entity of the runs it summarises.
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
        parser.error(f"--out is required with several results folders ({' '.join(args.results_dirs)}); "
                     "add --out DIR for the combined leaderboard")
    out = Path(args.out or args.results_dirs[0])
    write(args.results_dirs, out)
    print((out / "leaderboard.md").read_text())
    frontier = write_frontier(read_folders(args.results_dirs), out)
    if frontier:
        print(f"frontier: {frontier}")
    if not args.no_report:
        print(f"report: {write_report(args.results_dirs, out)}")
    if args.wandb:
        for run_dir in log_to_wandb(args.results_dirs, args.wandb, out):
            print(f"wandb summary run: {run_dir}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
