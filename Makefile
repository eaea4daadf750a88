# The README's two commands: `make demo` and `make test`. Both install what they need.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lint typecheck proto proto-check test test-unit test-integration demo bench chaos dev-up dev-down clean

$(BIN)/python:
	@command -v $(PY) >/dev/null || { echo "Python 3.11 is required (set PY=/path/to/python3.11)"; exit 1; }
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline
	$(BIN)/lint-imports --no-cache

proto: $(STAMP)  ## regenerate pipeline/adapters/proto from pipeline/schemas/provisioner.proto (a copy of schemas/)
	$(BIN)/python -m pipeline.adapters.proto.generate

proto-check: $(STAMP)
	$(BIN)/python -m pipeline.adapters.proto.generate --check

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/pytest tests/integration tests/acceptance -q $(PYTEST_ARGS)

# Lint, then every tier. Integration tests start their own Kafka (jars from Maven Central,
# cached in ~/.cache/pipeline-stack) and Postgres (initdb); nothing is skipped.
test: lint proto-check
	$(BIN)/pytest tests -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/pipeline demo

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/pipeline bench

# Chaos soak: the scenarios of tests/chaos at random, with random seeds (printed, so a failure
# replays), for DURATION minutes; prints a table of invariant results. `make test` runs each
# scenario once with its fixed seed.
DURATION ?= 20
chaos: $(STAMP)
	$(BIN)/python tests/chaos/soak.py --duration $(DURATION)

dev-up: $(STAMP)
	$(BIN)/pipeline dev up

dev-down: $(STAMP)
	$(BIN)/pipeline dev down

clean:
	rm -rf $(VENV) .pipeline-data .pytest_cache .mypy_cache .ruff_cache
