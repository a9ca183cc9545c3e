"""tdabench harness: registry, CLI, ground truth, LDS, profiling, results, tracking, leaderboard."""

__version__ = "0.1.0"
