# Two commands a newcomer needs: `make dev` and `make test`. Both create .venv if needed.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint format bench fuzz clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Ports: `make dev API_PORT=8001 TEMPORAL_PORT=7300 UI_PORT=8300`, or the settings
# NUDGE_API_PORT, NUDGE_TEMPORAL_PORT, NUDGE_TEMPORAL_UI_PORT (environment or .env).
DEV_FLAGS = $(if $(API_PORT),--api-port $(API_PORT)) \
	$(if $(TEMPORAL_PORT),--temporal-port $(TEMPORAL_PORT)) $(if $(UI_PORT),--ui-port $(UI_PORT))

dev: $(STAMP)
	$(BIN)/nudge dev $(DEV_FLAGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The fault tests at their full count (make test runs them smaller): minutes, not for every push.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core workflows

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Schemathesis against the served OpenAPI schema: 1000 positive and 1000 negative cases per
# operation (operations with few possible inputs get fewer); a fresh draw each run.
fuzz: $(STAMP)
	NUDGE_FUZZ_EXAMPLES=1000 NUDGE_FUZZ_SEED=random $(BIN)/python -m pytest -q -s -p no:cacheprovider \
		-o timeout=3600 tests/fuzz

bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .nudge
