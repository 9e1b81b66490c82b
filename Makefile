# spegel-py: `make demo` and `make test` are all a fresh Debian machine (as root) needs.
#   make deps    Debian packages (scripts/install-deps.sh; idempotent)
#   make venv    .venv with spegel-py and its test extra (re-run only when pyproject.toml changes)
#   make lint    ruff, mypy (strict), import contracts
#   make test    deps + venv + lint + the whole pytest suite, serially (PYTEST_ARGS=... to pass options)
#   make test-fast  the tests that start no process and need no network beyond in-process sockets
#                (-m "not process and not integration"), on FAST_WORKERS pytest-xdist workers:
#                about a minute on 2 cores. No lint (a cold mypy alone takes ~25 s): `make lint`.
#   make demo    the local multi-node demo (scripts/demo.py)
#   make bench   the issue-2 serving benchmark next to nginx (root; BENCH_ARGS=... to pass options)
#   make clean   caches, built test images and the virtualenv
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
# checkov (the chart's policy scan) pins too much to share the test virtualenv: see pyproject.toml.
CHECKOV_VENV := $(VENV)/tools/checkov
PYTEST_ARGS ?=
FAST_WORKERS ?= 2

.PHONY: all deps venv lint test test-fast demo bench clean

all: test

deps:
	scripts/install-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	test -x $(CHECKOV_VENV)/bin/python || $(VENV)/bin/python -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q --group pyproject.toml:policy-scan
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	if [ -f .importlinter ]; then $(VENV)/bin/lint-imports; fi

# pytest exit status 5 means "no tests collected": not a failure of the code under test.
test: deps venv lint
	$(VENV)/bin/pytest -ra --durations=15 $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest: no tests collected"; status=0; fi; exit $$status

test-fast: venv
	$(VENV)/bin/pytest -q -n $(FAST_WORKERS) -m "not process and not integration" $(PYTEST_ARGS)

demo: deps venv
	$(VENV)/bin/python scripts/demo.py

bench: deps venv
	$(VENV)/bin/python -m bench.serve_bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info .work/cache
	find . -name __pycache__ -type d -not -path './tests/interop/node_modules/*' -prune -exec rm -rf {} +
