# Everything a developer or CI runs. `make test` is the one command the README and .ci/run use.
export UV_PYTHON_DOWNLOADS ?= never
UV ?= uv
RUN := $(UV) run --locked

.PHONY: setup test lint typecheck pytest format

include deploy.mk
include demo.mk
include bench.mk

setup:
	$(UV) sync --locked

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: setup
	$(RUN) mypy

pytest: setup
	$(RUN) pytest

test: lint typecheck pytest sam-validate checkov sam-build

format: setup
	$(RUN) ruff format .
	$(RUN) ruff check --fix .
