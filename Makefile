# Two entry points, both self-installing into ./.venv:
#   make quickstart   - the default pipeline on real data fetched from PyPI
#   make test         - the CPU test suite (what CI runs)
#   make test-fast    - the tests that start no process (no DeepSpeed runs, no tools as commands): minutes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Data the tests read (real vocab and corpus); CI points this at its copy.
export MEGATRON_ZH_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install quickstart lint test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py csrc/helpers.cpp
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first and pinned: 2.13.0 CPU is on disk; anything unpinned pulls a CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $@

quickstart: install
	bash launch/quickstart.sh $(ARGS)

# The gates first (seconds), then the suite: lint, formatting, types, tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy megatron_zh

test: lint
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not integration" tests

clean:
	rm -rf build *.egg-info megatron_zh/_helpers*.so .pytest_cache
