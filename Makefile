# `make test` sets everything up itself (a virtual environment in .venv, the dev requirements, Azurite from npm)
# and runs lint, the whole test suite and the infrastructure checks.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite

.PHONY: test lint pytest infra-check dev bench bench-docs soak workbook-pictures package-list setup clean

test: lint pytest infra-check

# The virtual environment and Azurite, nothing run (the devcontainer's postCreateCommand).
setup: $(STAMP) $(AZURITE)

$(STAMP): requirements.txt requirements-dev.txt requirements-ops.txt
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
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder tests --ignore=tests/infra

# Infrastructure checks: pycep parse, drift, security-property and telemetry tests (tests/infra), checkov on both
# network variants (tests/infra/test_infra_checkov.py runs it from its own .venv-infra, whose pinned dependencies
# stay out of the app's .venv), and bicep build/lint where the Bicep CLI is.
INFRA_VENV := .venv-infra
INFRA_STAMP := $(INFRA_VENV)/.installed
BICEP_FILES := $(wildcard infra/*.bicep infra/modules/*.bicep)

$(INFRA_STAMP): requirements-infra.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-infra.txt
	touch $@

infra-check: $(STAMP) $(INFRA_STAMP)
	$(PY) -m pytest -q tests/infra
	@if command -v bicep >/dev/null 2>&1; then \
		for f in $(BICEP_FILES); do \
			echo "bicep build $$f" && bicep build "$$f" --stdout >/dev/null && \
			echo "bicep lint $$f" && bicep lint "$$f" || exit 1; \
		done; \
	else \
		echo "infra-check: bicep CLI not on PATH; skipped bicep build and bicep lint"; \
	fi

# Benchmarks against the simulator and Azurite on loopback (about six minutes on two cores), each announced on
# standard error as it starts. `make bench` writes the table, its JSON and the charts into .bench/ (not tracked);
# `make bench-docs` rewrites the tracked BENCHMARKS.md and docs/bench-*.png instead.
BENCH_OUT := .bench
bench: $(STAMP) $(AZURITE)
	mkdir -p $(BENCH_OUT)
	$(PY) -m bench --markdown $(BENCH_OUT)/BENCHMARKS.md --json $(BENCH_OUT)/results.json
	@echo "results: $(BENCH_OUT)/BENCHMARKS.md ($(BENCH_OUT)/results.json); make bench-docs updates BENCHMARKS.md"

bench-docs: $(STAMP) $(AZURITE)
	$(PY) -m bench --markdown BENCHMARKS.md

# The reliability suite at full size: 1,008 commands through faults, 400 through a host restart, 1,116 through the
# operations run that measures memory and exports telemetry (about 8 minutes); and the create protocol explored with
# three deliveries that may all die and lose answers (longer).
soak: $(STAMP) $(AZURITE)
	SOAK=1 $(PY) -m pytest tests/reliability tests/integration/test_create_interleavings.py -q -s

# The operators' workbook drawn locally: an operations run at soak size (tests/reliability/test_reliability_operations.py,
# about 2 minutes) exports what the app sends to Application Insights, and each panel is drawn into docs/workbook/.
# Not part of `make test`.
WORKBOOK_EXPORT := .sandbox/operations
workbook-pictures: $(STAMP) $(AZURITE)
	rm -rf $(WORKBOOK_EXPORT)
	SOAK=1 TELEMETRY_EXPORT=$(WORKBOOK_EXPORT) $(PY) -m pytest tests/reliability/test_reliability_operations.py -q -s
	$(PY) -m observability.pictures $(WORKBOOK_EXPORT) docs/workbook

# `make dev PORT=7072` when 7071 is taken (SIMULATOR_PORT likewise); VERBOSE=1 also logs each invocation's
# Executing/Executed lines. Azurite takes its default ports (blob 10000, queue 10001, table 10002), so that Azure
# Storage Explorer's local emulator connection finds it; a taken one is replaced by a free port, and said.
# PERSIST=1 keeps Azurite's data in .sandbox/azurite across runs (default: in memory).
# DEBUG=1 runs it under debugpy, listening on 127.0.0.1:5678 for a debugger to attach (.vscode/launch.json).
PORT ?= 7071
SIMULATOR_PORT ?= 5443
AZURITE_BLOB_PORT ?= 10000
AZURITE_PORT ?= 10001
AZURITE_TABLE_PORT ?= 10002
dev: $(STAMP) $(AZURITE)
	$(PY) $(if $(DEBUG),-m debugpy --listen 127.0.0.1:5678) -m sandbox.dev --port $(PORT) --simulator-port $(SIMULATOR_PORT) --azurite-blob-port $(AZURITE_BLOB_PORT) \
		--azurite-port $(AZURITE_PORT) --azurite-table-port $(AZURITE_TABLE_PORT) $(if $(PERSIST),--persist) \
		$(if $(VERBOSE),--verbose)

# What `func azure functionapp publish` and `azd deploy` send: the files .funcignore lets through, with their sizes.
package-list: $(STAMP)
	$(PY) -m tools.package

clean:
	rm -rf $(VENV) $(INFRA_VENV) node_modules .pytest_cache .ruff_cache .sandbox .bench
