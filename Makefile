# The book's commands. Each target does its own set-up: it creates .venv when absent and
# reinstalls when requirements.txt, constraints.txt or pyproject.toml changed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MATHJAX := _mathjax/mathjax/es5/tex-chtml.js
NB ?=
# pip warns once per package about this machine's extra local indexes; keep real errors
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
export TQDM_DISABLE ?= 1
export PYDEVD_DISABLE_FILE_VALIDATION = 1

.PHONY: help setup book test execute serve lab clean gpu

help:
	@echo "make book     build the HTML book offline into _build/html"
	@echo "make test     lint, unit tests, nbval on every chapter, strict build, browser check"
	@echo "make execute  re-execute notebooks in place (NB=chapters/x.ipynb for one)"
	@echo "make gpu      on a CUDA machine: CUDA tests, then every GPU benchmark into results/ (< 8 min)"
	@echo "              (make gpu DRY=1: the same steps on the CPU at tiny sizes, in seconds)"
	@echo "make serve    serve _build/html on http://127.0.0.1:8000 (HOST=0.0.0.0 to share)"
	@echo "make lab      JupyterLab on this venv"
	@echo "make clean    remove build outputs (keeps .venv)"

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	@touch $@

# MathJax 3 served from a local copy (npm package), copied into the site by html_extra_path.
$(MATHJAX):
	@mkdir -p _mathjax/npm
	cd _mathjax/npm && npm install --silent --no-audit --no-fund --no-save mathjax@3
	rm -rf _mathjax/mathjax && cp -r _mathjax/npm/node_modules/mathjax _mathjax/mathjax && rm -rf _mathjax/npm

setup: $(STAMP) $(MATHJAX)

book: setup
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going
	@echo "Built: open file://$(CURDIR)/_build/html/index.html (or: make serve)"

test: setup
	$(BIN)/python -m tests.run_all

execute: $(STAMP)
	$(BIN)/python -m tests.execute $(NB)

# Every GPU measurement, unattended: CUDA-only tests, then the benchmarks (results/<chapter>/*_cuda.json).
# DRY=1 runs the same steps on the CPU at tiny sizes into a temporary folder (make test does this).
gpu: $(STAMP)
	$(BIN)/python -m tests.run_gpu $(if $(DRY),--dry)

serve: book
	$(BIN)/python -m http.server --bind $(or $(HOST),127.0.0.1) --directory _build/html $(or $(PORT),8000)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=chapters

clean:
	rm -rf _build .pytest_cache .coverage htmlcov
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
