# `make help` lists the targets below from their `## ` comments.
.DEFAULT_GOAL := help
.PHONY: help install test test-slow train bench lint

# The project's virtual environment when there is one, else the python on PATH.
PYTHON ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
# Extra command-line arguments, e.g. make train ARGS="granularity=kim trainer.max_epochs=1"
ARGS ?=

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-10s %s\n", $$1, $$2}'

install: ## Install cimexp and its dev tools, editable: pip install -e ".[dev]"
	$(PYTHON) -m pip install -e ".[dev]"

test: ## Fast test tier (what CI runs): unit tests, every config option, short trainings on synthetic data
	$(PYTHON) -m pytest

test-slow: ## Slow tier: debug profiles and real CIFAR-10 runs as subprocesses (CIFAR needs CIMEXP_DATA)
	$(PYTHON) -m pytest -m slow

train: ## Train ResNet-20 on CIFAR-10 with the paper's CIM settings; overrides in ARGS="..."
	$(PYTHON) -m cimexp.train $(ARGS)

bench: ## Benchmark the CIM layer (python -m cimexp.bench); options in ARGS="..."
	$(PYTHON) -m cimexp.bench $(ARGS)

lint: ## Ruff lint and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
