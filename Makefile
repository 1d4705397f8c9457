# make demo  -- the main job on the embedded world (creates .venv on first use)
# make test  -- the test suite (fast tests; `make test-all` adds the slow ones)
SHELL := /bin/bash
PYTHON_BIN ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export WANDB_SILENT := true
export PROJECT_ROOT := $(CURDIR)

.PHONY: install system-deps demo test test-all bench clean-demo

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON_BIN) >/dev/null || { echo "need $(PYTHON_BIN) (Python 3.11) on PATH, or set PYTHON_BIN=..."; exit 1; }
	test -d $(VENV) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,slurm]'
	touch $@

install: $(VENV)/.installed

# Debian packages some tests and datasets use (Fashion-MNIST files, Chromium for the report check).
# Needs root; without them those tests skip with the reason.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null \
	  || echo "system-deps: apt-get failed; tests needing these packages will skip"; \
	else echo "system-deps: not root or no apt-get; tests needing Debian packages will skip"; fi

DEMO := logs/demo
demo: install
	$(PY) scripts/demo.py

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not hub"

bench: install
	$(PY) benchmarks/bench_train.py

clean-demo:
	rm -rf $(DEMO)
