#!/usr/bin/env bash
# The tests that need root, a lab, PostgreSQL or the browser, as two streams run at
# the same time (`make test` runs this after the pure tests):
#   lab:      tests marked lab or root, one at a time (labs, namespaces and chains
#             have fixed names, and some of these tests time what the machine does);
#   services: PostgreSQL and browser tests that need no lab, on two processes (each
#             starts its own PostgreSQL server and Console on free loopback ports).
# Each stream writes its own log; the services log is printed when both are done.
# Exits non-zero when either stream fails.
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOGS=${CNNF_TEST_LOGS:-test-artifacts}
mkdir -p "$LOGS"
TMP=$(mktemp -d /tmp/cnnf-tests-XXXXXX)
LAB_MARKS="lab or root"
SERVICE_MARKS="(postgres or browser) and not lab and not root"

"$PY" -m pytest -n 2 -m "$SERVICE_MARKS" --basetemp "$TMP/services" \
    >"$LOGS/services.log" 2>&1 &
services=$!
trap 'kill "$services" 2>/dev/null; rm -rf "$TMP"' EXIT

echo "== lab and root tests (the PostgreSQL and browser tests run beside them: $LOGS/services.log)"
"$PY" -m pytest -m "$LAB_MARKS" --basetemp "$TMP/lab"
lab_rc=$?

wait "$services"
services_rc=$?
trap 'rm -rf "$TMP"' EXIT
echo "== PostgreSQL and browser tests"
cat "$LOGS/services.log"
echo "== lab and root tests: exit $lab_rc; PostgreSQL and browser tests: exit $services_rc"
[ "$lab_rc" -eq 0 ] && [ "$services_rc" -eq 0 ]
