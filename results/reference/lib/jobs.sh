# Shared by the reference folders' run.sh drivers (sourced, not run): freeze a commit's code into
# its own environment, and run named tdabench jobs resumably, WORKERS at once.
# The caller sets LOGS (job logs and markers), CODE (frozen checkouts) and ARGS (the arguments
# every job shares), then calls `freeze COMMIT` and `pool` on an array JOBS of "NAME ARG...".
# A job is skipped once $LOGS/NAME.done exists; a worker claims a job by creating $LOGS/NAME.claim
# (atomic mkdir) with its pid inside, and a claim whose pid is gone is taken over.

MAIN_SITE=${MAIN_SITE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/.venv/lib/python3.11/site-packages}

say() { echo "$(date -u +%FT%TZ) $*" | tee -a "$LOGS/driver.log"; }

freeze() {  # COMMIT: its code in $CODE/COMMIT with a virtual environment over the main one; cd there
  local src="$CODE/$1"
  if [ ! -x "$src/.venv/bin/tdabench" ]; then
    say "freezing $1 into $src"
    rm -rf "$src" && mkdir -p "$src"
    git archive "$1" | tar -x -C "$src" || { say "git archive $1 failed"; return 1; }
    # no packages of its own: pip, setuptools and everything else come from the main environment
    python3 -m venv --without-pip "$src/.venv" \
      && echo "$MAIN_SITE" > "$src/.venv/lib/python3.11/site-packages/zz_main_site.pth"
    (cd "$src" && .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .) \
      || { say "install failed"; return 1; }
  fi
  cd "$src" || return 1
  export OMP_NUM_THREADS=1 WANDB_MODE=disabled TQDM_MININTERVAL=60
}

claim() {
  local d="$LOGS/$1.claim"
  if mkdir "$d" 2>/dev/null; then echo $$.$2 > "$d/owner"; return 0; fi
  local pid; pid=$(cut -d. -f1 "$d/owner" 2>/dev/null)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 1; fi
  rm -rf "$d" && mkdir "$d" 2>/dev/null && echo $$.$2 > "$d/owner"
}

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

pool() {  # the jobs of JOBS, WORKERS at once (default 1); 0 when every one is done
  local w spec
  for ((w = 1; w < ${WORKERS:-1}; w++)); do pool_worker "$w" & done
  pool_worker 0; wait
  for spec in "${JOBS[@]}"; do
    [ -f "$LOGS/${spec%% *}.done" ] || { say "${spec%% *} is not done"; return 1; }
  done
}
