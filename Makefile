# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-all clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

# Idempotent: reinstalls only when setup.py changes.
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

quickstart: install
	$(PY) -m optiml_jax.quickstart --workdir=quickstart_out

# PYTEST_ARGS: extra pytest flags, e.g. --runslow (what CI passes) or -k PATTERN.
test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# Also the tests marked `slow`.
test-all: install
	$(PY) -m pytest -q --runslow tests

clean:
	rm -rf $(VENV) quickstart_out .pytest_cache
