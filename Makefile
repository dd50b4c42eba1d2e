# mlbus — developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= uv
# Two pytest workers (pytest-xdist), each test file on one of them: most tests wait on
# brokers and processes, so the suite takes about half the time on 2 cores. Every session
# fixture is per worker (own broker, own PostgreSQL database, namespaced Redis keys).
# `make test PYTEST_ARGS=` runs it in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: help setup demo up protos protos-check lint format typecheck test check bench docs docs-check clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[1m%-13s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install uv if missing, then the locked workspace into .venv
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet "uv==0.13.9"
	$(UV) sync --locked

demo: setup ## The whole story on the embedded stack: train, approve, deploy, serve real-time, async and batch
	$(UV) run mlbus demo

up: setup ## Run the embedded broker and all seven services (Ctrl-C stops them)
	$(UV) run mlbus up

protos: ## Regenerate libs/proto from protos/
	$(UV) run python scripts/gen_protos.py

protos-check: ## Fail when regenerating the protos would change libs/proto
	$(UV) run python scripts/gen_protos.py --check

lint: ## ruff lint and format check
	$(UV) run ruff check .
	$(UV) run ruff format --check .

format: ## Apply ruff fixes and formatting
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

typecheck: ## mypy (strict) on libs and services; generated code excluded
	$(UV) run mypy

docs: ## Regenerate the settings tables in the service READMEs
	$(UV) run python scripts/settings_docs.py

docs-check: ## Fail when a service README's settings table is out of date
	$(UV) run python scripts/settings_docs.py --check

test: ## Run the test suite (real broker, PostgreSQL, Redis)
	$(UV) run pytest $(PYTEST_ARGS)

check: setup lint typecheck protos-check docs-check test ## Everything CI runs

bench: setup ## Run the benchmarks under bench/ and record their figures
	$(UV) run python bench/run.py

clean: ## Remove caches (not the stack's state under ~/.mlbus)
	rm -rf .mypy_cache .ruff_cache .pytest_cache
