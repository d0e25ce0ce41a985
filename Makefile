# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv, installs
# the CPU build of torch first (a plain `torch` requirement would pull CUDA packages), then the
# package with its extras; a stamp file makes the second run skip all of it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.perennial-installed
TORCH := torch==2.13.0
export PERENNIAL_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perennial incremental --data clinc150 --step 10 --seed 0

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_ridge_cost.py
	$(PY) benchmarks/bench_incremental.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
