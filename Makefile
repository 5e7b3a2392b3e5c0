# jetgate: `make run` (embedded NATS + gateway) and `make test` (lint + whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint proto tools bench clean fuzz faults

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: venv
	$(BIN)/jetgate up --config jetgate.toml

proto: venv
	$(BIN)/python proto/generate.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict tools/trace_png.py

# The interop tests run real third-party peers, built from the Go module proxy into .tools/bin.
tools:
	bash tools/install-go-tool.sh nats github.com/nats-io/natscli/nats v0.5.0
	bash tools/install-go-tool.sh grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl v1.9.3
	bash tools/install-go-tool.sh jaeger github.com/jaegertracing/jaeger/cmd/jaeger v1.76.0

test: venv tools lint
	$(BIN)/python -m pytest -q

# The fuzz suite's long profile: 3000 random examples per test against a live gateway (tests/fuzz;
# `make test` runs the bounded, derandomized `ci` profile), with hypothesis' case counts.
fuzz: venv
	JETGATE_FUZZ_PROFILE=long $(BIN)/python -m pytest -q tests/fuzz --hypothesis-show-statistics

# The fault suite (tests/faults) with ten times the events per scenario of `make test`.
faults: venv
	JETGATE_FAULTS_EVENTS=3000 $(BIN)/python -m pytest -q tests/faults

# Publish, consume, end-to-end and tracing-cost figures next to their baselines, on its own servers (about 4 min).
bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
