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
MAIN_SITE=${MAIN_SITE:-/work/main/.venv/lib/python3.11/site-packages}
SHARDS=10
METHODS=ekfac,kfac,source,trak,tracin,grad_dot,bif
TUNED=${TUNED:-ekfac:16,bif:8}         # tuned phase: METHOD:TRIALS
MAX_CPU_S=${MAX_CPU_S:-1500}           # tuned phase: a trial's fit + score CPU seconds at most
ARGS=(task=cifar2_resnet9 recipe=fast task.n_train=5000 task.n_query=500 gt.subsets=100 gt.seeds=2
      threads=1 wandb.mode=disabled cost.count=off "cache_dir=$CACHE" "data_root=$DATA")
mkdir -p "$LOGS" "$RESULTS"
say() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOGS/driver.log"; }

src="$CODE/$COMMIT"
if [ ! -x "$src/.venv/bin/tdabench" ]; then
  say "freezing $COMMIT into $src"
  rm -rf "$src" && mkdir -p "$src"
  git archive "$COMMIT" | tar -x -C "$src" || { say "git archive $COMMIT failed"; exit 1; }
  # no packages of its own: pip, setuptools and everything else come from the main environment
  python3 -m venv --without-pip "$src/.venv" && echo "$MAIN_SITE" > "$src/.venv/lib/python3.11/site-packages/zz_main_site.pth"
  (cd "$src" && .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .) \
    || { say "install failed"; exit 1; }
fi
cd "$src" || exit 1
export OMP_NUM_THREADS=1 WANDB_MODE=disabled TQDM_MININTERVAL=60

# WORKERS processes at once (default 1); a worker claims a piece of work (a shard, then a method) by
# creating $LOGS/NAME.claim (atomic mkdir) with its pid inside; a claim whose pid is gone is taken over.
claim() {
  local d="$LOGS/$1.claim"
  if mkdir "$d" 2>/dev/null; then echo $$.$2 > "$d/owner"; return 0; fi
  local pid; pid=$(cut -d. -f1 "$d/owner" 2>/dev/null)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 1; fi
  rm -rf "$d" && mkdir "$d" 2>/dev/null && echo $$.$2 > "$d/owner"
}
# run the jobs "NAME ARG..." of the array JOBS (declared by the caller), WORKERS at once, each
# skipped once $LOGS/NAME.done exists; 0 when every job is done
job() {  # NAME ARG...: one tdabench process (nice 19), its CPU seconds appended to its log
  local name=$1; shift
  say "$name: start"
  if /usr/bin/time -f "cpu_user_s %U cpu_sys_s %S wall_s %e" -a -o "$LOGS/$name.log" \
       nice -n 19 .venv/bin/tdabench "${ARGS[@]}" "$@" >>"$LOGS/$name.log" 2>&1; then
    touch "$LOGS/$name.done"; say "$name: done ($(tail -1 "$LOGS/$name.log"))"
  else
    say "$name: failed, see $LOGS/$name.log"
  fi
}
pool_worker() {
  local w=$1 spec name
  for spec in "${JOBS[@]}"; do
    read -r -a words <<<"$spec"; name=${words[0]}
    [ -f "$LOGS/$name.done" ] && continue
    claim "$name" "$w" || continue
    job "${words[@]}"
    rm -rf "$LOGS/$name.claim"
  done
}
pool() {
  local w spec
  for ((w = 1; w < ${WORKERS:-1}; w++)); do pool_worker "$w" & done
  pool_worker 0; wait
  for spec in "${JOBS[@]}"; do
    [ -f "$LOGS/${spec%% *}.done" ] || { say "${spec%% *} is not done"; return 1; }
  done
}

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
