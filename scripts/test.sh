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
# The lab stage is mostly waiting (for containers, Consoles, Defenders, timeouts):
# alone it kept the 2 cores about half idle. The stages beside it share nothing
# with it but the CPU: PostgreSQL servers and Consoles listen on free loopback
# ports, temporary directories are their own, and only lab and root tests make
# namespaces or netfilter rules. Every stage runs whatever the others did; each
# stage's output is kept in test-artifacts/stages/NAME.log and printed whole when
# the stage ends, then a summary. Exit status: 0 only if every stage passed.
set -uo pipefail
cd "$(dirname "$0")/.."
# Python writes its bytecode caches whatever the environment says (see the Makefile).
unset PYTHONDONTWRITEBYTECODE

PY=${PY:-.venv/bin/python}
LOGS=test-artifacts/stages
PURE="not lab and not root and not postgres and not browser"
SERVICES="(postgres or browser) and not lab and not root"
LAB="lab or root"
# Beside the lab stage, the other stages yield the CPU to it.
NICE=(nice -n "${CNNF_TEST_NICE:-10}")

rm -rf "$LOGS"
mkdir -p "$LOGS"
start=$SECONDS

# Runs one stage: its output to its log, then the log printed whole (one stage at
# a time: the lab stage may end while another prints) and its result recorded.
stage() {
  local name=$1 began=$SECONDS rc
  shift
  { flock 9; printf '===== stage %s started (its log: %s)\n' "$name" "$LOGS/$name.log"; } \
    9>"$LOGS/.print"
  "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  {
    flock 9
    printf '\n===== stage %s: %s (exit %d) in %d s: %s\n' "$name" \
      "$( ((rc == 0)) && echo passed || echo FAILED)" "$rc" "$((SECONDS - began))" "${*@Q}"
    cat "$LOGS/$name.log"
    printf '===== end of stage %s\n' "$name"
  } 9>"$LOGS/.print"
  printf '%s %d %d %d\n' "$name" "$rc" "$((began - start))" "$((SECONDS - began))" \
    >"$LOGS/$name.result"
  return "$rc"
}

# The lab stage in the background. A background job of a script ignores SIGINT
# (and so would pytest): DEFAULT_INT gives it back, so that Ctrl-C, or a SIGTERM to
# this script passed on as SIGINT, lets pytest tear its labs down instead of
# leaving them behind.
DEFAULT_INT=(-c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')
stage lab "$PY" "${DEFAULT_INT[@]}" -m pytest --durations=25 -m "$LAB" &
lab=$!
trap 'wait "$lab"; exit 130' INT
trap 'pkill -INT -P "$lab"; wait "$lab"; exit 143' TERM

stage lint "${NICE[@]}" "$PY" -m ruff check src tests bench
stage types "${NICE[@]}" "$PY" -m mypy
stage pure "${NICE[@]}" "$PY" -m pytest -n 2 --dist worksteal --durations=15 -m "$PURE"
stage services "${NICE[@]}" "$PY" -m pytest -n 2 --dist worksteal --durations=15 \
  -m "$SERVICES"
wait "$lab"

failed=0
printf '\n%-9s %-7s %8s %8s  %s\n' stage result "start s" "wall s" "pytest's summary"
for name in lint types pure services lab; do
  read -r _ rc began took <"$LOGS/$name.result" 2>/dev/null || { rc=1 began=- took=-; }
  ((rc == 0)) || failed=1
  summary=$(grep -E '^=+ .*(passed|failed|error|no tests ran).* in [0-9.]+s' \
    "$LOGS/$name.log" 2>/dev/null | tail -n 1 | tr -d '=' | sed 's/^ *//;s/ *$//')
  printf '%-9s %-7s %8s %8s  %s\n' "$name" "$( ((rc == 0)) && echo passed || echo FAILED)" \
    "$began" "$took" "$summary"
done
printf 'all stages: %d s\n' "$((SECONDS - start))"
exit "$failed"
