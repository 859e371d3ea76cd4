# CNNF: every target installs what it needs first (scripts/bootstrap.sh).
PY := .venv/bin/python

# Python writes its bytecode caches (__pycache__, ignored by git), whatever the
# environment says: with PYTHONDONTWRITEBYTECODE set, every pytest process (and
# each xdist worker, and each `cnnf` the tests start) compiled the sources and
# pytest rewrote the asserts of every test and plugin module again, each time
# (collecting the pure tests took 25 s of CPU instead of 9 s).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: deps test test-unit lint typecheck bench demo image clean

deps:
	@scripts/bootstrap.sh

# The whole suite: ruff, mypy, unit, lab (root, namespaces, containers), PostgreSQL and
# browser tests, in stages (scripts/test.sh): the lab and root tests one at a time, in
# the background from the start (they share labs, namespaces and the kernel's tables,
# and are mostly waiting); beside them, at nice 10, ruff, mypy, the pure tests on two
# processes, then the PostgreSQL and browser tests on two (each process starts its own
# PostgreSQL server once, and a browser for each browser test module it runs).
# --dist worksteal: a process that runs out of tests takes some of the other's, so one
# long test (schemathesis, the import killed midway) does not leave a core idle at the
# end of a stage. Each stage prints its output whole when it ends (also kept in
# test-artifacts/stages/), its slowest tests, then a summary; any failed stage fails.
# SERIAL=1: the lab stage alone, after the others (for a lab test that fails only with
# the other stages beside it).
test: deps
	PY=$(PY) CNNF_TEST_SERIAL=$(if $(filter 1 yes true,$(SERIAL)),1,0) scripts/test.sh

# Only the pure, fast tests (no root, no lab, no services).
test-unit: deps
	$(PY) -m pytest -m "not lab and not root and not postgres and not browser"

lint: deps
	$(PY) -m ruff check src tests bench

typecheck: deps
	$(PY) -m mypy

# Every bench/*.py benchmark (root: some use the lab); writes bench/RESULTS.md.
bench: deps
	$(PY) bench/report.py

# The whole product on this machine (root): Console, the shop lab, one Defender per
# lab host, a starter policy and traffic; Ctrl-C removes everything. LISTEN=HOST:PORT,
# TOPOLOGY=kube for Kubernetes-like nodes (containerd, pods through the CRI).
demo: deps
	.venv/bin/cnnf demo --listen $(or $(LISTEN),127.0.0.1:8080) --topology $(or $(TOPOLOGY),shop)

# The container image localhost/cnnf:<version> without a registry (root: Podman, mmdebstrap):
# a Debian base made by mmdebstrap (built once), wheels built here, deploy/Containerfile.
# OCI_ARCHIVE=PATH also writes an archive for `ctr -n k8s.io images import PATH`.
image: deps
	deploy/build-image.sh $(if $(OCI_ARCHIVE),--oci-archive $(OCI_ARCHIVE))

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
	find src tests bench -name __pycache__ -prune -exec rm -rf {} +
