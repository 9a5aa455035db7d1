# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
export PREFECT_API_URL ?= http://127.0.0.1:4200/api
export PREFECT_HOME ?= $(CURDIR)/.local/state/prefect

.PHONY: setup up down status deploy demo test test-shuffled test-unit bench gpu-check lint format clean

setup:  ## install both Python environments and the JVM artifacts (idempotent)
	bash infra/setup.sh

up: setup  ## start Pulsar, the Prefect server and worker, and Ray
	$(PY) -m infra.services up

down:  ## stop every service
	$(PY) -m infra.services down

status:  ## health and address of every service
	$(PY) -m infra.services status

deploy: up  ## register every deployment in prefect.yaml
	.venv/bin/prefect --no-prompt deploy --all

demo: deploy  ## the whole pipeline as Prefect deployment runs, with a reconciled summary
	$(PY) -m mlplatform.ops.demo

test: setup  ## unit, integration and end-to-end tests on the real services
	$(PY) -m pytest

test-shuffled: setup  ## the tests in a random order (pytest-randomly); ARGS=--randomly-seed=N repeats one
	$(PY) -m pytest -p randomly $(ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit

bench: up  ## the benchmarks under benchmarks/, JSON results in benchmarks/results/
	uv sync --frozen --inexact --group bench
	$(PY) -m benchmarks.retrain
	$(PY) -m benchmarks.streaming
	$(PY) -m benchmarks.batch_inference
	$(PY) -m benchmarks.preprocess
	$(PY) -m benchmarks.functions
	$(PY) -m benchmarks.growth
	$(PY) -m benchmarks.end_to_end

gpu-check: setup  ## on a GPU machine: batch inference with a CPU preprocessing stage and a GPU model stage
	$(PY) -m benchmarks.gpu_stages

lint: setup  ## ruff, and the import contracts in pyproject.toml (lint-imports)
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/lint-imports

format:
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

clean: down  ## remove all service state and data (keeps the installed environments)
	rm -rf .local/state .local/logs .local/warehouse .local/landing .local/models
