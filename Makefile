# The two commands of a fresh machine: `make dev` and `make test` (`make lint`: ruff and mypy, which `make test`
# runs first; `make unit`: the tier without services;
# `make chaos`: the chaos tier alone, which also rewrites docs/RELIABILITY.md (WRITE_RELIABILITY=1);
# `make test` runs it last and writes nothing, so the tree stays clean;
# `make cluster-test`: the cluster tier alone, a three-node RabbitMQ cluster losing a node under load).
# Each creates the virtual environment and installs the project first.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: dev lint test unit chaos cluster-test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/minalesh-workers dev --demo

# mypy's settings and the packages it checks (actors, pipeline, storage) are [tool.mypy] in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check actors pipeline storage tests bench
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest -q

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/unit

chaos: $(STAMP)
	WRITE_RELIABILITY=1 $(VENV)/bin/python -m pytest -q tests/chaos

cluster-test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests/cluster

$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# About 10 minutes on 2 cores: the comparison of issue 10 (written to docs/BENCHMARKS.md), then the others.
bench: $(BENCH_STAMP)
	$(VENV)/bin/python -m bench.throughput --write docs/BENCHMARKS.md
	$(VENV)/bin/python -m bench.email_throughput
	$(VENV)/bin/python -m bench.sending
