#!/usr/bin/env bash
# The cifar2_n5000 reference, computed in the background on idle CPU (one process at a time,
# one thread, nice 19), resumable: rerun this script and it goes on where it stopped.
#   results/reference/cifar2_n5000/run.sh COMMIT        # from the project root
# 1. freezes the code of COMMIT into $CODE/COMMIT (its own virtual environment over the main one),
#    so later edits of the checkout cannot change the models the ground truth is made of;
# 2. computes the ground truth's shards one after another, skipping finished ones (a shard
#    interrupted mid-way goes on from its last finished subset);
# 3. runs each untuned method on it (a run per method, skipping finished ones) into $RESULTS.
# WORKERS=2 runs two shards, then two methods, at once (one thread each).
# Logs: $LOGS/shard-I.log and $LOGS/method-M.log (with their CPU seconds), $LOGS/driver.log.
set -u
COMMIT=${1:?usage: run.sh COMMIT}
CACHE=${TDABENCH_CACHE:-/root/.cache/tdabench}
LOGS=${TDABENCH_LOGS:-/root/.cache/tdabench-logs}/cifar2_n5000
CODE=${TDABENCH_CODE:-/root/.cache/tdabench-code}
RESULTS=${TDABENCH_RESULTS:-/root/.cache/tdabench-results}/cifar2_n5000
DATA=${TDABENCH_DATA:-/work/shared/data}
MAIN_SITE=${MAIN_SITE:-/work/main/.venv/lib/python3.11/site-packages}
SHARDS=10
METHODS=ekfac,kfac,source,trak,tracin,grad_dot,bif
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
worker() {
  local w=$1 i
  for ((i = 0; i < SHARDS; i++)); do
    [ -f "$LOGS/shard-$i.done" ] && continue
    claim "shard-$i" "$w" || continue
    say "shard $i of $SHARDS: start (worker $w)"
    if /usr/bin/time -f "cpu_user_s %U cpu_sys_s %S wall_s %e" -a -o "$LOGS/shard-$i.log" \
         nice -n 19 .venv/bin/tdabench "${ARGS[@]}" gt.shard=$i gt.num_shards=$SHARDS >>"$LOGS/shard-$i.log" 2>&1; then
      touch "$LOGS/shard-$i.done"; say "shard $i of $SHARDS: done ($(tail -1 "$LOGS/shard-$i.log"))"
    else
      say "shard $i of $SHARDS: failed, see $LOGS/shard-$i.log"; rm -rf "$LOGS/shard-$i.claim"; return 1
    fi
    rm -rf "$LOGS/shard-$i.claim"
  done
}
for ((w = 1; w < ${WORKERS:-1}; w++)); do worker "$w" & done
worker 0; status=$?
wait || status=1
[ "$status" = 0 ] || exit 1
for ((i = 0; i < SHARDS; i++)); do
  [ -f "$LOGS/shard-$i.done" ] || { say "shard $i is not done"; exit 1; }
done

# each method in a run of its own (one record each in $RESULTS), WORKERS at once
method_worker() {
  local w=$1 m
  for m in ${METHODS//,/ }; do
    [ -f "$LOGS/method-$m.done" ] && continue
    claim "method-$m" "$w" || continue
    say "method $m: start (worker $w)"
    if /usr/bin/time -f "cpu_user_s %U cpu_sys_s %S wall_s %e" -a -o "$LOGS/method-$m.log" \
         nice -n 19 .venv/bin/tdabench "${ARGS[@]}" gt.num_shards=$SHARDS "method=$m" \
         "results_dir=$RESULTS" >>"$LOGS/method-$m.log" 2>&1; then
      touch "$LOGS/method-$m.done"; say "method $m: done ($(tail -1 "$LOGS/method-$m.log"))"
    else
      say "method $m: failed, see $LOGS/method-$m.log"
    fi
    rm -rf "$LOGS/method-$m.claim"
  done
}
for ((w = 1; w < ${WORKERS:-1}; w++)); do method_worker "$w" & done
method_worker 0
wait
say "methods: every run ended, results in $RESULTS"
