"""Imports flow one way: sources -> catalog -> registry -> packing -> trainer -> evaluation (docs: design).

Every import statement of the package (module level or inside a function) is read with `ast`, and each
stage may import only what comes before it. models/ and evaluation/ must also import without TensorFlow or
seqio (GPU images carry neither), which a fresh interpreter checks.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "optiml_jax"
ENTRY_POINTS = ("optiml_jax.train", "optiml_jax.eval", "optiml_jax.plan", "optiml_jax.bench", "optiml_jax.quickstart",
                "optiml_jax.reproduce", "optiml_jax.convert")
# Folder of the package -> packages its modules must not import (a prefix matches its sub-modules).
FORBIDDEN = {
    "data": ("optiml_jax.evaluation", "optiml_jax.trainer", "optiml_jax.planning", "optiml_jax.interop", *ENTRY_POINTS),
    "models": ("optiml_jax.data", "optiml_jax.trainer", "optiml_jax.evaluation", "optiml_jax.checkpoints",
               "optiml_jax.planning", "optiml_jax.interop", *ENTRY_POINTS),
    "checkpoints": ("optiml_jax.data", "optiml_jax.trainer", "optiml_jax.evaluation", "optiml_jax.planning",
                    "optiml_jax.interop", *ENTRY_POINTS),
    "trainer": ("optiml_jax.evaluation", "optiml_jax.planning", "optiml_jax.interop", *ENTRY_POINTS),
    "evaluation": ("optiml_jax.trainer", "optiml_jax.planning", "optiml_jax.interop", *ENTRY_POINTS),
    "reproduction": ("optiml_jax.trainer", "optiml_jax.planning", "optiml_jax.interop", *ENTRY_POINTS),
}
# The one exception: models/ reads the special token ids of its tokenizer (config.json's bos/eos/pad ids)
# from this standard-library module of the data side.
ALLOWED = {"models": ("optiml_jax.data.special_tokens",)}
# Modules that GPU images import without TensorFlow and seqio (the data modules: training from the bench cache).
LIGHT_MODULES = ("optiml_jax.data.special_tokens", "optiml_jax.data.metrics", "optiml_jax.data.cached_stream",
                 "optiml_jax.data.cache", "optiml_jax.data.packing_np", "optiml_jax.data.sampling",
                 "optiml_jax.data.vocab_info", "optiml_jax.models.opt", "optiml_jax.models.registry",
                 "optiml_jax.models.partitioning", "optiml_jax.checkpoints.discovery", "optiml_jax.evaluation.decoding",
                 "optiml_jax.evaluation.inference", "optiml_jax.evaluation.prompt_sharing",
                 "optiml_jax.reproduction.bundle", "optiml_jax.reproduction.claim")


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, module) of every import in a file; `from a import b` gives "a.b" (b may be a module)."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
  return out


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
  return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(folder: str) -> list[str]:
  found = []
  for path in sorted((PACKAGE / folder).rglob("*.py")):
    for line, module in imported_modules(path):
      if _matches(module, FORBIDDEN[folder]) and not _matches(module, ALLOWED.get(folder, ())):
        found.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
  return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_stage_imports_a_later_one(folder):
  assert violations(folder) == []


def test_the_scan_sees_every_kind_of_import(tmp_path, monkeypatch):
  # The check itself: each way of writing an import of the evaluation from data/ is caught.
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "bad.py").write_text("import optiml_jax.evaluation.metrics\n"
                                            "from optiml_jax.evaluation import metrics\n"
                                            "from optiml_jax import trainer\n"
                                            "def f():\n"
                                            "  from optiml_jax import convert\n"
                                            "from optiml_jax.data import special_tokens\n")
  monkeypatch.setitem(globals(), "PACKAGE", tmp_path)
  assert [v.split(" imports ")[1] for v in violations("data")] == [
      "optiml_jax.evaluation.metrics", "optiml_jax.evaluation.metrics", "optiml_jax.trainer", "optiml_jax.convert"
  ]


def test_light_modules_import_without_tensorflow_or_seqio():
  code = ("import sys\n"
          f"for name in {LIGHT_MODULES!r}:\n"
          "  __import__(name)\n"
          "print(sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules))\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=PACKAGE.parent)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == "[]"
