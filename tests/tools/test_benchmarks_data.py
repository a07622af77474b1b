"""tools/benchmarks/data.py at the paper's scale: a replicated SNI catalog, the cache and its figures."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from optiml_jax.data import toybench
from optiml_jax.data.sources import sni

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tool():
  spec = importlib.util.spec_from_file_location("bench_data_tool", REPO / "tools" / "benchmarks" / "data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_replicated_checkout_renumbers_every_task_and_its_split(tmp_path):
  source = toybench.write(tmp_path / "toy", seed=0, num_instances=5)
  replica = _tool().replicate_sni(source, 3, tmp_path / "replica")
  originals = sorted(p.name for p in (source / "tasks").glob("task*.json"))
  copies = sorted(p.name for p in (replica / "tasks").glob("task*.json"))
  assert len(copies) == 3 * len(originals) and "task10001_toy_add_small.json" in copies
  before, after = sni.read_split(source), sni.read_split(replica)
  for part, names in before.items():
    assert len(after[part]) == 3 * len(names)
    assert {n.split("_", 1)[1] for n in after[part]} == {n.split("_", 1)[1] for n in names}
  assert (replica / "tasks" /
          "task20001_toy_add_small.json").read_bytes() == (source / "tasks" /
                                                           "task001_toy_add_small.json").read_bytes()


@pytest.mark.slow
def test_paper_scale_figures_from_the_cache(shared_dir):
  pytest.importorskip("apache_beam", reason="the cache is built with Apache Beam (the test extra installs it)")
  result = subprocess.run([
      sys.executable, "tools/benchmarks/data.py", "--tasks", "40", "--cache", "--batches", "4", "--inputs_length", "96",
      "--targets_length", "32", "--cache_workers", "1", "--sni_dir",
      str(shared_dir / "data" / "natural-instructions"), "--p3_dir",
      str(shared_dir / "data" / "p3")
  ], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["mode"] == "index" and report["tasks"] >= 30 and report["training_tasks"] > 0
  assert report["first_batch_s"] > 0 and report["resume_s"] > 0 and min(report["tokens_per_s"]) > 0
