"""What ``tdabench --help`` prints before Hydra's configuration groups: tdabench's own usage."""

USAGE = """\
tdabench: benchmark training-data attribution methods (LDS against a retraining ground truth,
cost per phase), one run per task x method pairing, records in RESULTS_DIR/runs.jsonl.

Usage:
  tdabench [-q|-v] [KEY=VALUE ...]        one run (default: task=digits_mlp method=grad_dot)
  tdabench -m [-q|-v] [KEY=A,B ...]       a sweep: every combination (-m alone: every method)
  tdabench --list                         the registered methods and tasks (plugins included)
  tdabench --version                      version and git commit
  tdabench --cfg job [KEY=VALUE ...]      print the composed config of one run and exit

Other commands:
  tdabench-leaderboard RESULTS_DIR        leaderboard.md/.csv, pairwise tests, report.html, plots
  tdabench-insight task=T method=M --out D  views of what a method's scores credit, as PNG files
  tdabench-insight --scores FILE --out D  the same views of a finished run (its settings from its record)
  tdabench-adequacy RESULTS_DIR           is the ground truth precise enough to rank the methods?

Keys people change (all keys: docs/reference/configuration.md):
  task=NAME method=NAME method.KEY=VALUE  pairing and any method parameter
  gt.subsets=100 gt.seeds=3 gt.alpha=0.5  ground truth: subsets, seeds per subset, subset fraction
  task.n_train=N task.n_query=N           data sizes
  results_dir=results cache_dir=...       where records and cached checkpoints/ground truths go
  threads=1 device=cpu|cuda               torch threads per run, device
  wandb.mode=offline|online|disabled      Weights & Biases logging
  cost.count=separate|inline|off          how FLOPs and tensor memory are counted
  limits.max_seconds=S                    wall-clock limit of a method's fit + score
  -q  warnings, errors and one result line per run;  -v  debugging detail

Launchers (with -m):
  hydra/launcher=parallel                 local processes (joblib), the cores shared among them
  hydra/launcher=submitit_local           local submitit jobs, the same way
  hydra/launcher=slurm                    SLURM jobs (pip install 'tdabench[slurm]'); device=cuda
                                          asks one GPU per job and is checked in the job

Examples:
  tdabench task=digits_mlp method=ekfac
  tdabench -m hydra/launcher=parallel method=grad_dot,ekfac,trak gt.subsets=50
  tdabench -m task=cifar2_resnet9 method=bif method.draws=100,200,400 threads=1
"""
