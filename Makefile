# Every target sets itself up (scripts/bootstrap: Debian packages when root, .venv from pyproject).
VENV := .venv
PY := $(VENV)/bin/python
KUBECONFIG_OUT ?= /tmp/bridge-test-cluster.kubeconfig
IMAGE ?= ghcr.io/bridge-k8s/sidecar:0.1.0

.PHONY: setup test lint typecheck unit demo cluster bench faults image clean

setup:
	@scripts/bootstrap

lint: setup
	$(VENV)/bin/ruff check bridge sidecar tests scripts

typecheck: setup
	$(VENV)/bin/mypy bridge sidecar

unit: setup
	$(PY) -m pytest -q

test: lint typecheck unit

demo: setup
	$(PY) scripts/demo

cluster: setup
	$(PY) scripts/test-cluster --kubeconfig $(KUBECONFIG_OUT)

bench: setup
	$(PY) scripts/bench

faults: setup
	$(PY) scripts/faults $(FAULTS_ARGS)

image:
	docker build -f sidecar/Dockerfile -t $(IMAGE) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
