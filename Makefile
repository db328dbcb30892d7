# Every target sets itself up (scripts/bootstrap: Debian packages when root, .venv from the lock).
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_OUT ?= /tmp/bridge-test-cluster.kubeconfig
REAL_KUBECONFIG_OUT ?= /tmp/bridge-real-cluster.kubeconfig
IMAGE ?= ghcr.io/bridge-k8s/sidecar:0.1.0

.PHONY: setup lock test-latest test lint typecheck unit suite e2e-real real-build real-cluster demo cluster bench faults image clean

setup:
	@scripts/bootstrap

# The lock: every package of the project, its tests and dev tools, hashed, for every platform
# (the macOS CI job uses it too); the sidecar image's pins are the lock's asyncssh and its
# dependencies. LOCK_DATE=2026-12-01T23:59:59Z resolves against the index as it was then
# (uv's --exclude-newer); without it, against today's (--upgrade: not the old pins).
LOCK_DATE ?=
UV_COMPILE = $(VENV)/bin/uv pip compile --upgrade --universal --generate-hashes --quiet \
	--custom-compile-command "make lock" $(if $(LOCK_DATE),--exclude-newer $(LOCK_DATE))
lock: setup
	$(UV_COMPILE) pyproject.toml requirements/build.in --extra dev -o requirements/lock.txt
	$(UV_COMPILE) requirements/sidecar.in -c requirements/lock.txt -o sidecar/requirements.txt
	@scripts/bootstrap

# The newest versions pyproject's ranges allow, in a venv of their own (.venv-latest): the unit
# and sidecar suites and the stderr test. Not part of `make test`; what the next user gets.
LATEST := .venv-latest
test-latest: setup
	@[ -x $(LATEST)/bin/python ] || python3 -m venv $(LATEST)
	@# the build backend too (not a dependency, so not upgraded otherwise): the wheel test
	@# builds without isolation, with the venv's setuptools
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check -U pip 'setuptools>=77'
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check -U --upgrade-strategy eager -e '.[dev]'
	@$(LATEST)/bin/python -m pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(asyncssh|cryptography|kubernetes|aiohttp|anyio|click) '
	$(LATEST)/bin/python -m pytest -q tests/unit tests/sidecar tests/e2e/test_stderr.py

lint: setup
	$(VENV)/bin/ruff check bridge sidecar tests scripts
	$(VENV)/bin/lint-imports --no-cache
	scripts/actionlint

typecheck: setup
	$(VENV)/bin/mypy bridge sidecar

# Unit tests only: no cluster, no root.
unit: setup
	$(PY) -m pytest -q tests/unit

# Every suite on the local test cluster: unit, sidecar, benchmark smoke and test-cluster checks;
# then end to end, then the short fault suite. One pytest process each: the e2e suite has its
# own session cluster and must not share session fixtures with the test-cluster checks (in one
# process its kubectl followed the checks' cluster while bridge used its own).
suite: setup
	$(PY) -m pytest -q tests/unit tests/sidecar tests/bench tests/clusterchecks
	$(PY) -m pytest -q tests/e2e
	$(PY) -m pytest -q tests/faults

# Everything, then the end-to-end suite (and the real cluster's own tests) again on a real
# Kubernetes; the cluster-lifecycle checks need the machine to themselves, so they run last.
# Budget (README, "The test time budget"): warm at most 40 min, cold at most 60. 48m36 warm
# before each e2e test said which cluster it needs (@pytest.mark.only_on("local"|"real",
# why=...), tests/e2e/conftest.py): local e2e 100 -> 91 tests, real e2e 94 -> 31; estimated
# 11-14 min saved (per-test --durations, 2026-12-08), about 35-38 min warm. A new e2e test
# that asserts nothing of the cluster gets only_on("local", why=...).
test: lint typecheck suite e2e-real

# Compile Kubernetes/etcd/CoreDNS and build the images (cached in ~/.cache/bridge).
real-build: setup
	$(PY) scripts/real-cluster --build-only

e2e-real: real-build
	BRIDGE_TEST_CLUSTER=real $(PY) -m pytest -q tests/e2e tests/realcluster --deselect tests/realcluster/test_lifecycle.py
	BRIDGE_TEST_CLUSTER=real $(PY) -m pytest -q tests/realcluster/test_lifecycle.py

real-cluster: real-build
	$(PY) scripts/real-cluster --kubeconfig $(REAL_KUBECONFIG_OUT)

demo: setup
	$(PY) scripts/demo

cluster: setup
	$(PY) scripts/test-cluster --kubeconfig $(KUBECONFIG_OUT)

bench: setup
	$(PY) scripts/bench

faults: setup
	$(PY) scripts/faults $(FAULTS_ARGS)

# One manifest list (linux/amd64 + linux/arm64) with buildah, podman or docker buildx, whichever
# is installed (scripts/build-image says which). IMAGE_BASE=stand-in: Debian stand-in bases built
# here (no registry needed; buildah); IMAGE_ARGS=--push REF / --output FILE.
IMAGE_BASE ?= official
image: setup
	$(PY) scripts/build-image --image $(IMAGE) --base $(IMAGE_BASE) $(IMAGE_ARGS)

clean:
	rm -rf $(VENV) $(LATEST) .mypy_cache .pytest_cache .ruff_cache
