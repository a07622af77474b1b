# Two commands do everything on a fresh machine: `make quickstart` and `make test`.
# `make install` installs the package (editable) for training, evaluation, the bench and planning: no torch.
# `make test` adds the test extra, with PyTorch's CPU build (the tests compare against transformers' OPT).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
GGUF_STAMP := $(VENV)/.installed-gguf
# A bare `torch` from PyPI is a CUDA build of several GB; this pin takes the CPU build (from this machine's
# disk). The test extra's range (setup.py) admits it, so pip installs nothing more for torch.
TORCH_CPU ?= torch==2.13.0

.PHONY: install install-test install-gguf quickstart reproduce lint format test test-all clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

# Idempotent: each stamp is redone only when setup.py changes (or the venv is new).
$(STAMP): setup.py | $(PY)
	$(PY) -m pip install -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install $(TORCH_CPU)
	$(PY) -m pip install -e '.[test]'
	touch $(TEST_STAMP)

$(GGUF_STAMP): $(STAMP)
	$(PY) -m pip install $(TORCH_CPU)
	$(PY) -m pip install -e '.[gguf]'
	touch $(GGUF_STAMP)

install: $(STAMP)

install-gguf: $(GGUF_STAMP)

install-test: $(TEST_STAMP)

quickstart: install
	$(PY) -m optiml_jax.quickstart --workdir=quickstart_out

# OPT-IML's claim on a real model (SmolLM2-135M-Instruct, base vs tuned): docs/reproducing.md. The gguf extra reads
# the model's GGUF file. REPRODUCE_ARGS: e.g. --setting cpu (the small run), --data_dir DIR (default ../shared/data).
reproduce: $(GGUF_STAMP)
	$(PY) -m optiml_jax.reproduce --out=reproduce_out $(REPRODUCE_ARGS)

# The formatter (yapf, Google style), the linter (ruff) and the type checker (mypy); `make format` fixes
# what the first two can.
LINTED := optiml_jax tests tools setup.py
lint: install-test
	$(PY) -m yapf --diff --recursive --parallel $(LINTED)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m mypy optiml_jax tools setup.py

format: install-test
	$(PY) -m yapf --in-place --recursive --parallel $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

# PYTEST_ARGS: extra pytest flags, e.g. --runslow (what CI passes) or -k PATTERN.
# PYTEST_WORKERS: the tests run in that many processes (pytest-xdist), each test file whole in one of them, so a
# module's fixtures are built once. 2 suits CI's 2 cores: the default suite took 14:28 there against 20:16 in one
# process (2026-12-07), since much of a test's time is one core compiling or waiting on a subprocess. 0 runs them
# all in this process (for --pdb, or to time one test alone); auto, one per core.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test: lint
	$(PYTEST) tests $(PYTEST_ARGS)

# Also the tests marked `slow`.
test-all: lint
	$(PYTEST) --runslow tests

clean:
	rm -rf $(VENV) quickstart_out reproduce_out .pytest_cache
