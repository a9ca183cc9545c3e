#!/usr/bin/env bash
# The beyond_lds_text reference: text_neox (the settings of results/reference/text_neox: 500
# chunks of 64 characters, 50 queries, 40 subsets x 2 seeds) from scratch with the LDS, the
# per-token LDS and the stagewise LDS, and fine-tuned with the LDS and the per-token LDS,
# computed resumably (rerun it and it goes on):
#   results/reference/beyond_lds_text/run.sh COMMIT [gt|scratch|finetune|methods]   # from the project root
# The code of COMMIT is frozen into $CODE/COMMIT first. `gt` computes both regimes' ground truths
# (the LDS's and the one along training) in 4 shards each; `methods` (the default) computes what
# is missing of them, then runs each method, one tdabench run per method and regime, into $RESULTS;
# `scratch` or `finetune` does the same for one regime.
# WORKERS=2 runs two jobs at once (one thread each). Logs: $LOGS/NAME.log (with CPU seconds), driver.log.
set -u
COMMIT=${1:?usage: run.sh COMMIT [gt|scratch|finetune|methods]}
PHASE=${2:-methods}
CACHE=${TDABENCH_CACHE:-/root/.cache/tdabench}
LOGS=${TDABENCH_LOGS:-/root/.cache/tdabench-logs}/beyond_lds_text
CODE=${TDABENCH_CODE:-/root/.cache/tdabench-code}
RESULTS=${TDABENCH_RESULTS:-/root/.cache/tdabench-results}/beyond_lds_text
DATA=${TDABENCH_DATA:-/work/shared/data}
SHARDS=4
METHODS=${METHODS:-bif,ekfac,kfac,source,tracin,grad_dot,random}
ARGS=(task=text_neox gt.subsets=40 gt.seeds=2 "gt.num_shards=$SHARDS" threads=1 wandb.mode=disabled
      cost.count=off "cache_dir=$CACHE" "data_root=$DATA" "results_dir=$RESULTS")
SCRATCH=(task.regime=scratch metric=lds,lds_token,lds_stagewise)
FINETUNE=(task.regime=finetune metric=lds,lds_token)
mkdir -p "$LOGS" "$RESULTS"
source "$(dirname "$0")/../lib/jobs.sh"
freeze "$COMMIT" || exit 1

# PHASE: gt (both regimes' ground truths), scratch or finetune (that regime's ground truth, then
# its methods), methods (both regimes, scratch first)
regimes=(scratch finetune)
case "$PHASE" in scratch|finetune) regimes=("$PHASE");; gt|methods) ;; *) echo "unknown phase $PHASE"; exit 2;; esac
for reg in "${regimes[@]}"; do
  [ "$reg" = scratch ] && metrics=("${SCRATCH[@]}") || metrics=("${FINETUNE[@]}")
  JOBS=()
  for ((i = 0; i < SHARDS; i++)); do JOBS+=("$reg-shard-$i ${metrics[*]} gt.shard=$i"); done
  pool || exit 1
done
[ "$PHASE" = gt ] && { say "ground truths: done"; exit 0; }
for reg in "${regimes[@]}"; do
  [ "$reg" = scratch ] && metrics=("${SCRATCH[@]}") || metrics=("${FINETUNE[@]}")
  JOBS=()  # the longest first (the BIF; from scratch its 5 fits along training)
  for m in ${METHODS//,/ }; do JOBS+=("$reg-$m ${metrics[*]} method=$m"); done
  # TRAK's default projection (512) exceeds the 500 training chunks and is refused; 256 as before
  JOBS+=("$reg-trak ${metrics[*]} method=trak method.proj_dim=256")
  pool
done
say "methods: every run ended, results in $RESULTS"
