#!/usr/bin/env bash
# The whole suite, as `make test` runs it (after scripts/bootstrap.sh):
#
#   lab:      the lab and root tests, one at a time (they share labs, namespaces and
#             the kernel's tables), at normal priority, started first, in the background;
#   beside it, one after the other, at nice 10 (the lab's Defenders get the CPU first):
#   lint:     ruff;
#   types:    mypy;
#   pure:     the tests that need no root, lab, PostgreSQL or browser, on two processes;
#   services: the PostgreSQL and browser tests (not lab, not root), on two processes.
#
# CNNF_TEST_SERIAL=1 runs the lab stage after the others instead, alone (for a lab
# test that fails only with the other stages beside it).
#
# The lab stage is mostly waiting (for containers, Consoles, Defenders, timeouts):
# alone it kept the 2 cores about half idle. The stages beside it share nothing
# with it but the CPU: PostgreSQL servers and Consoles listen on free loopback
# ports, temporary directories are their own, and only lab and root tests make
# namespaces or netfilter rules. Every stage runs whatever the others did; each
# stage's output is kept in test-artifacts/stages/NAME.log (tail -f it to follow
# a stage) and printed whole when the stage ends; every minute a line says where
# the running stages are; then a summary. Exit status: 0 only if every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
# Python writes its bytecode caches whatever the environment says (see the Makefile).
unset PYTHONDONTWRITEBYTECODE

PY=${PY:-.venv/bin/python}
LOGS=${CNNF_TEST_LOGS:-test-artifacts/stages}  # tests/test_stages.py runs it elsewhere
PURE="not lab and not root and not postgres and not browser"
SERVICES="(postgres or browser) and not lab and not root"
LAB="lab or root"
SERIAL=${CNNF_TEST_SERIAL:-0}
# Beside the lab stage, the other stages yield the CPU to it.
NICE=(nice -n "${CNNF_TEST_NICE:-10}")
((SERIAL)) && NICE=()
# Each stage runs in the background of this script (so that a signal reaches the
# script at once, not when the stage ends), and a background job of a script
# ignores SIGINT, and so would its pytest: DEFAULT_INT gives it back, so that
# Ctrl-C, or a SIGTERM to this script passed on as SIGINT, lets pytest tear its
# labs and servers down instead of leaving them behind.
DEFAULT_INT=(-c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')

# One run at a time in a checkout (the lab stages would share lab names and kernel
# tables): the lock is held by the stages too, so that stages left running by a
# script that was killed keep a second run out.
mkdir -p "$(dirname "$LOGS")"
exec 8>"$LOGS.lock"
if ! flock -n 8; then
  echo "test.sh: another run of the stages holds $LOGS.lock:" \
    "$(fuser "$LOGS.lock" 2>/dev/null | xargs)" >&2
  exit 1
fi
rm -rf "$LOGS"
mkdir -p "$LOGS"
start=$SECONDS

say() {  # one message at a time: stages may end together
  { flock 9; printf "$@"; } 9>"$LOGS/.print"
}

# Runs one stage: its output to its log, then the log printed whole and its result
# recorded.
stage() {
  local name=$1 began=$SECONDS rc
  shift
  say '===== stage %s started (follow it: tail -f %s)\n' "$name" "$LOGS/$name.log"
  : >"$LOGS/$name.running"
  # In a session of its own: a Ctrl-C reaches it once, passed on by stop().
  setsid "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  rm -f "$LOGS/$name.running"
  say '\n===== stage %s: %s (exit %d) in %d s: %s\n%s\n===== end of stage %s\n' "$name" \
    "$( ((rc == 0)) && echo passed || echo FAILED)" "$rc" "$((SECONDS - began))" "${*@Q}" \
    "$(cat "$LOGS/$name.log")" "$name"
  printf '%s %d %d %d\n' "$name" "$rc" "$((began - start))" "$((SECONDS - began))" \
    >"$LOGS/$name.result"
  return "$rc"
}

# Every minute: each running stage and the last line of its log (pytest's progress).
heartbeat() {
  local f name progress pct file failed n=0
  while [ ! -e "$LOGS/.done" ]; do
    sleep 1
    (( ++n % 60 == 0 )) || continue
    for f in "$LOGS"/*.running; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .running)
      # pytest's progress: the last percentage, the test file, failures so far.
      progress=$(grep -E '^(tests/[^ ]+ )?[.FEsxX]+ *(\[ *[0-9]+%\])?$' "$LOGS/$name.log" \
        2>/dev/null)
      pct=$(grep -oE '\[ *[0-9]+%\]' <<<"$progress" | tail -n 1 | tr -d '[] ')
      file=$(grep -oE '^tests/[^ ]+' <<<"$progress" | tail -n 1)
      failed=$(sed -E 's/^tests\/[^ ]+ //; s/\[ *[0-9]+%\]$//' <<<"$progress" | tr -cd 'FE' \
        | wc -c)
      say '[%4d s] %s running: %s done%s, %d failed so far\n' "$((SECONDS - start))" "$name" \
        "${pct:-0%}" "${file:+, in $file}" "$failed"
    done
  done
}

pids=()
# Ctrl-C, or SIGINT or SIGTERM to this script, is passed on once as SIGINT to each
# running stage's process group (pytest, its xdist workers, what they started), as
# a terminal's Ctrl-C would be: pytest then tears its labs and servers down.
stop() {  # $1: the signal received
  local p leader
  for p in "${pids[@]}"; do
    for leader in $(pgrep -P "$p"); do kill -INT -- "-$leader" 2>/dev/null; done
  done
  wait "${pids[@]}"
  : >"$LOGS/.done"
  wait "$beat"
  case $1 in INT) exit 130 ;; HUP) exit 129 ;; *) exit 143 ;; esac
}
trap 'stop INT' INT
trap 'stop TERM' TERM
trap 'stop HUP' HUP  # the stages, in sessions of their own, would not get it

heartbeat &
beat=$!
# The lab stage keeps pytest's cache (--lf, --ff) apart: pytest writes its cache
# when a session ends, and two sessions at once would each overwrite the other's.
run_lab() {
  stage lab "$PY" "${DEFAULT_INT[@]}" -m pytest -o cache_dir=.pytest_cache/lab \
    --durations=25 -m "$LAB" &
  pids+=($!)
}
run_stage() {  # one stage in the background, waited for
  stage "$@" &
  pids+=($!)
  wait "$!"
}
((SERIAL)) || run_lab
run_stage lint "${NICE[@]}" "$PY" "${DEFAULT_INT[@]}" -m ruff check src tests bench
run_stage types "${NICE[@]}" "$PY" "${DEFAULT_INT[@]}" -m mypy
run_stage pure "${NICE[@]}" "$PY" "${DEFAULT_INT[@]}" -m pytest -n 2 --dist worksteal --durations=15 \
  -m "$PURE"
run_stage services "${NICE[@]}" "$PY" "${DEFAULT_INT[@]}" -m pytest -n 2 --dist worksteal \
  --durations=15 -m "$SERVICES"
((SERIAL)) && run_lab
wait "${pids[@]}"
: >"$LOGS/.done"
wait "$beat"

failed=0
say '\n%-9s %-7s %8s %8s  %s\n' stage result "start s" "wall s" "summary"
for name in lint types pure services lab; do
  read -r _ rc began took <"$LOGS/$name.result" 2>/dev/null || { rc=1 began=- took=-; }
  ((rc == 0)) || failed=1
  summary=$(grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s|^All checks passed|^Found [0-9]+ error|^Success: no issues' \
    "$LOGS/$name.log" 2>/dev/null | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  say '%-9s %-7s %8s %8s  %s\n' "$name" "$( ((rc == 0)) && echo passed || echo FAILED)" \
    "$began" "$took" "$summary"
done
say 'all stages: %d s%s\n' "$((SECONDS - start))" "$( ((SERIAL)) && echo ' (serial)')"
exit "$failed"
