#!/usr/bin/env bash
# The cifar2_n5000 reference, computed in the background on idle CPU (one process at a time,
# one thread, nice 19), resumable: rerun this script and it goes on where it stopped.
#   results/reference/cifar2_n5000/run.sh COMMIT        # from the project root
# 1. freezes the code of COMMIT into $CODE/COMMIT (its own virtual environment over the main one),
#    so later edits of the checkout cannot change the models the ground truth is made of;
# 2. computes the ground truth's shards one after another, skipping finished ones (a shard
#    interrupted mid-way goes on from its last finished subset);
# 3. runs each untuned method on it (a run per method, skipping finished ones) into $RESULTS;
#    with `tuned` as second argument instead: computes the validation ground truth in the same
#    shards, then tunes each method of TUNED by the protocol (its trials on the validation ground
#    truth, then one test evaluation) into $RESULTS.
# WORKERS=2 runs two jobs at once (one thread each).
# Logs: $LOGS/NAME.log per job (shard-I, method-M, val-shard-I, tuned-M; with their CPU seconds),
# $LOGS/driver.log.
set -u
COMMIT=${1:?usage: run.sh COMMIT [untuned|tuned]}
PHASE=${2:-untuned}
CACHE=${TDABENCH_CACHE:-/root/.cache/tdabench}
LOGS=${TDABENCH_LOGS:-/root/.cache/tdabench-logs}/cifar2_n5000
CODE=${TDABENCH_CODE:-/root/.cache/tdabench-code}
RESULTS=${TDABENCH_RESULTS:-/root/.cache/tdabench-results}/cifar2_n5000
DATA=${TDABENCH_DATA:-/work/shared/data}
SHARDS=10
METHODS=ekfac,kfac,source,trak,tracin,grad_dot,bif
TUNED=${TUNED:-ekfac:16,bif:8}         # tuned phase: METHOD:TRIALS
MAX_CPU_S=${MAX_CPU_S:-1500}           # tuned phase: a trial's fit + score CPU seconds at most
ARGS=(task=cifar2_resnet9 recipe=fast task.n_train=5000 task.n_query=500 gt.subsets=100 gt.seeds=2
      threads=1 wandb.mode=disabled cost.count=off "cache_dir=$CACHE" "data_root=$DATA")
mkdir -p "$LOGS" "$RESULTS"
source "$(dirname "$0")/../lib/jobs.sh"   # freeze, pool (WORKERS jobs at once, claims, .done markers)
freeze "$COMMIT" || exit 1

# 1. the ground truth's shards
JOBS=()
for ((i = 0; i < SHARDS; i++)); do JOBS+=("shard-$i gt.shard=$i gt.num_shards=$SHARDS"); done
pool || exit 1

if [ "$PHASE" = untuned ]; then
  # 2. each untuned method in a run of its own (one record each in $RESULTS)
  JOBS=()
  for m in ${METHODS//,/ }; do JOBS+=("method-$m gt.num_shards=$SHARDS method=$m results_dir=$RESULTS"); done
  pool
  say "methods: every run ended, results in $RESULTS"
else
  # 2. the validation ground truth (tune.val_subsets x tune.val_seeds, default 50 x 2) in the same
  # shards: a shard run with tune.trials set computes its share of both ground truths
  JOBS=()
  for ((i = 0; i < SHARDS; i++)); do
    JOBS+=("val-shard-$i gt.shard=$i gt.num_shards=$SHARDS method=ekfac tune.trials=1")
  done
  pool || exit 1
  # 3. each tuned method (METHOD:TRIALS), its study in $RESULTS/studies.journal
  JOBS=()
  for mt in ${TUNED//,/ }; do
    JOBS+=("tuned-${mt%%:*} gt.num_shards=$SHARDS method=${mt%%:*} tune.trials=${mt##*:} tune.max_cpu_s=$MAX_CPU_S \
tune.storage=$RESULTS/studies.journal results_dir=$RESULTS")
  done
  pool
  say "tuned methods: every run ended, results in $RESULTS"
fi
