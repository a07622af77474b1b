"""Shared fixtures: the `../shared` sample data (skipped when absent) and the `slow` marker."""

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long test, run only with --runslow")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--runslow"):
    return
  skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test-all)")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """`../shared` beside the repository (real public sample data), or skip."""
  if not (SHARED_DIR / "data").is_dir():
    pytest.skip(f"real sample data not found at {SHARED_DIR}/data (a user's machine has no ../shared)")
  return SHARED_DIR


@pytest.fixture(scope="session")
def opt_tokenizer_dir(shared_dir) -> pathlib.Path:
  """OPT's byte-level BPE tokenizer folder from `../shared/tokenizers/opt`, or skip."""
  path = shared_dir / "tokenizers" / "opt"
  if not (path / "vocab.json").is_file():
    pytest.skip(f"OPT tokenizer not found at {path}")
  return path
