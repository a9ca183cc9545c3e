#!/usr/bin/env bash
# The tuning_budget reference, computed in the background (two processes, one thread each, nice 19),
# resumable: rerun this script and it goes on where it stopped (finished studies are skipped, a
# study interrupted mid-way continues from the journal).
#   results/reference/tuning_budget/run.sh COMMIT        # from the project root
# Freezes the code of COMMIT into $CODE/COMMIT (its own virtual environment over the main one), then
# runs benchmarks/tuning_budget.py over SIZES x SEEDS, split into one process per (size, seed list)
# in PARTS ("SIZE:SEED,SEED ..."), two at once; then writes the tables and plot into $RESULTS.
# Logs: $LOGS/part-SIZE-SEEDS.log (with its CPU seconds), $LOGS/driver.log.
set -u
COMMIT=${1:?usage: run.sh COMMIT}
CACHE=${TDABENCH_CACHE:-/root/.cache/tdabench}
LOGS=${TDABENCH_LOGS:-/root/.cache/tdabench-logs}/tuning_budget
CODE=${TDABENCH_CODE:-/root/.cache/tdabench-code}
RESULTS=${TDABENCH_RESULTS:-/root/.cache/tdabench-results}/tuning_budget
PARTS=${PARTS:-"200:0,1,2,3,4 400:0,1,2"}     # SIZE:SEEDS per process, two at once
COMPARE=${COMPARE:-}                          # further arms, e.g. "quasi_tpe:centred tpe:wide"
mkdir -p "$LOGS" "$RESULTS"
source "$(dirname "$0")/../lib/jobs.sh"   # freeze
freeze "$COMMIT" || exit 1
part() {  # SIZE SEEDS(comma-separated)
  local name="part-$1-${2//,/_}"
  say "$name: start"
  /usr/bin/time -f "cpu_user_s %U cpu_sys_s %S wall_s %e" -a -o "$LOGS/$name.log" \
    nice -n 19 .venv/bin/python benchmarks/tuning_budget.py --sizes "$1" --seeds ${2//,/ } \
      --set method.chains=4 method.draws=100 ${COMPARE:+--compare $COMPARE} \
      --cache-dir "$CACHE" --out "$RESULTS" >>"$LOGS/$name.log" 2>&1 \
    && say "$name: done ($(tail -1 "$LOGS/$name.log"))" || say "$name: failed, see $LOGS/$name.log"
}
running=0
for spec in $PARTS; do
  part "${spec%%:*}" "${spec#*:}" &
  running=$((running + 1))
  if [ "$running" -ge 2 ]; then wait -n; running=$((running - 1)); fi
done
wait
.venv/bin/python benchmarks/tuning_budget.py --summarize --out "$RESULTS" >>"$LOGS/driver.log" 2>&1
say "summary written to $RESULTS"
