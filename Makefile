# Two commands for a newcomer: `make demo` (the whole pipeline on generated VOC-format data, CPU, ~3 min)
# and `make test`. Everything installs into .venv from pyproject.toml, pinned by constraints.txt.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup test test-e2e test-scaleout test-all test-fast lint bench demo run clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the project (pinned)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip 'setuptools>=68' wheel
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pipelines.plots_html --repo .  # `dvc plots show` with the Vega scripts inlined (works offline)
	@touch $@

test: $(STAMP)  ## the test suite, rehearsal of the real run included (< 10 min on 2 idle cores; sets up first)
	$(VENV)/bin/pytest -q -m "not scaleout and not e2e"

test-e2e: $(STAMP)  ## the longest end-to-end chains: dvc repro + Prefect flow, mlflow models serve, a real MLflow server
	$(VENV)/bin/pytest -q -m "e2e and not scaleout"

test-scaleout: $(STAMP)  ## real servers on loopback: MLflow on PostgreSQL, a Prefect work pool, a DVC remote
	$(VENV)/bin/pytest -q -m scaleout

test-all: test test-e2e test-scaleout  ## everything CI runs before the demo

test-fast: $(STAMP)  ## the tests without the slow end-to-end ones
	$(VENV)/bin/pytest -q -m "not slow and not scaleout and not e2e"

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check yolov1 pipelines tests benchmarks

bench: $(STAMP)  ## the CPU benchmarks (figures go in the README)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit $$?; done

demo: $(STAMP)  ## the whole chain on generated VOC-format data, CPU, in demo/ (Prefect flow over DVC stages)
	$(PY) -m pipelines.demo

run: $(STAMP)  ## the chain on real PASCAL VOC with the paper profile (needs the VOC archives and a GPU; ALLOW_CPU=1: no GPU check)
	$(PY) -m pipelines.preflight $(if $(filter 1 yes true,$(ALLOW_CPU)),--allow-cpu)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pipelines.flows --workspace .

clean:  ## remove caches (keeps .venv, data and models)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
