#!/usr/bin/env bash
# The beyond_lds_digits reference: every method on digits_mlp (500 training images, 100 queries,
# the ground truth of results/reference/metrics_digits: 50 subsets x 2 seeds) with the LDS, the
# stagewise LDS and counterfactual removal, computed resumably (rerun it and it goes on):
#   results/reference/beyond_lds_digits/run.sh COMMIT [extra]     # from the project root
# The code of COMMIT is frozen into $CODE/COMMIT first; one tdabench run per method into $RESULTS.
# WORKERS=2 runs two at once (one thread each). Logs: $LOGS/NAME.log (with CPU seconds), driver.log.
set -u
COMMIT=${1:?usage: run.sh COMMIT [extra]}
CACHE=${TDABENCH_CACHE:-/root/.cache/tdabench}
LOGS=${TDABENCH_LOGS:-/root/.cache/tdabench-logs}/beyond_lds_digits
CODE=${TDABENCH_CODE:-/root/.cache/tdabench-code}
RESULTS=${TDABENCH_RESULTS:-/root/.cache/tdabench-results}/beyond_lds_digits
METHODS=${METHODS:-random,grad_dot,grad_cos,ekfac,kfac,exact_if,trak,tracin,source,bif,magic,ekfac_kronfluence,kfac_kronfluence,trak_traker,bif_devinterp}
ARGS=(task=digits_mlp task.n_train=500 gt.subsets=50 gt.seeds=2 metric=lds,lds_stagewise,removal
      threads=1 wandb.mode=disabled cost.count=off "cache_dir=$CACHE" "results_dir=$RESULTS")
mkdir -p "$LOGS" "$RESULTS"
source "$(dirname "$0")/../lib/jobs.sh"
freeze "$COMMIT" || exit 1

# 1. the LDS ground truth and the one along training (one run: it is small), then each method
JOBS=("ground-truth gt.shard=0 gt.num_shards=1")
pool || exit 1
JOBS=()
for m in ${METHODS//,/ }; do JOBS+=("method-$m method=$m"); done
pool
# 2. with `extra` as second argument: TRAK as one model (its 10-model ensemble is fitted on models
# trained in full, so the stagewise LDS does not apply to it) for the LDS along training, and SOURCE
# again (force=true) with the code that lets it fit a run cut before it has a snapshot per segment
if [ "${2:-}" = extra ]; then
  JOBS=("trak-single method=trak method.models=1 metric=lds,lds_stagewise"
        "source-again method=source force=true")
  pool
fi
say "methods: every run ended, results in $RESULTS"
