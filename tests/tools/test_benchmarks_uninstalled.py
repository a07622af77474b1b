"""tools/benchmarks/*.py run as docs/benchmarks.md writes them (`python tools/benchmarks/X.py`) from a copy of the
repository where the package is not installed, as on an accelerator machine that gets the tree and no pip install."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ("train", "eval", "model", "profile_step", "data", "update")
# Run at start-up (after the site-packages' .pth files): forgets an editable install of this package, so that only
# what the script itself puts on sys.path can find optiml_jax.
HIDE_EDITABLE_INSTALL = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p]
sys.path_importer_cache.clear()
"""


@pytest.fixture(scope="module")
def uninstalled(tmp_path_factory):
  """(environment, working folder) of a Python that cannot import optiml_jax by itself."""
  site = tmp_path_factory.mktemp("uninstalled_site")
  (site / "sitecustomize.py").write_text(HIDE_EDITABLE_INSTALL, encoding="utf-8")
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
  cwd = tmp_path_factory.mktemp("elsewhere")
  probe = subprocess.run([sys.executable, "-c", "import optiml_jax; print(optiml_jax.__file__)"], cwd=cwd, env=env,
                         capture_output=True, text=True, check=False)
  if probe.returncode == 0:
    pytest.skip(f"optiml_jax stays importable here without the tree ({probe.stdout.strip()}): installed otherwise "
                "than editable")
  return env, cwd


@pytest.mark.parametrize("tool", TOOLS)
def test_each_benchmark_script_finds_the_package_of_its_own_tree(uninstalled, tool):
  env, cwd = uninstalled
  done = subprocess.run([sys.executable, str(REPO / "tools" / "benchmarks" / f"{tool}.py"), "--help"], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=180, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "usage:" in done.stdout
