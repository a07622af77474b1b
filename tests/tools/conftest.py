"""Fixtures of the tests of tools/benchmarks: a tool script imported as a module."""

import importlib.util
import pathlib
import sys

import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools" / "benchmarks"


@pytest.fixture
def load_tool(monkeypatch):
  """`load_tool(name)`: tools/benchmarks/<name>.py run afresh as a module (its import-time settings again), with its
  folder on sys.path (the tools import their siblings), both undone after the test."""

  def load(name):
    monkeypatch.syspath_prepend(str(TOOLS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}_tool", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # model.py's dataclass looks its module up there
    spec.loader.exec_module(module)
    return module

  return load
