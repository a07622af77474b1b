"""Tests for the bench command line (`python -m optiml_jax.bench`), run in subprocesses."""

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from optiml_jax.data import toybench

REPO = pathlib.Path(__file__).resolve().parents[1]


def bench(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "optiml_jax.bench", *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return toybench.write(tmp_path_factory.mktemp("toy") / "bench")


def test_build_and_show_real_data(shared_dir, tmp_path):
  data = shared_dir / "data"
  out = tmp_path / "catalog"
  result = bench("build", "--config", "tasks/optiml_bench.yaml", "--sni_dir", data / "natural-instructions", "--p3_dir",
                 data / "p3", "--bigbench_dir", data / "bigbench", "--out", out)
  assert result.returncode == 0, result.stderr
  assert "benchmark" in result.stdout and "held_out_category" in result.stdout
  assert "reading tasks" in result.stderr  # the progress bar
  assert "skipped " in result.stderr and "trec" in result.stderr  # empty P3 templates in the sample
  catalog_json = json.loads((out / "catalog.json").read_text(encoding="utf-8"))
  assert {t["benchmark"] for t in catalog_json["tasks"]} == {"sni", "promptsource", "bigbench"}
  assert catalog_json["skipped"] and catalog_json["leakage"]
  assert catalog_json["config"]["name"] == "optiml_bench"
  shown = bench("show", out)
  assert shown.returncode == 0
  table = lambda text: text[:text.index("\nwrote ")] if "\nwrote " in text else text.rstrip("\n")
  assert table(shown.stdout) == table(result.stdout)


def test_strict_bad_file_and_custom_jsonl(toy_dir, tmp_path):
  bad_dir = tmp_path / "sni"
  (bad_dir / "tasks").mkdir(parents=True)
  (bad_dir / "splits").symlink_to(toy_dir / "splits")
  for name in toybench.task_names()[:3] + toybench.task_names()[-5:]:
    (bad_dir / "tasks" / f"{name}.json").write_bytes((toy_dir / "tasks" / f"{name}.json").read_bytes())
  (bad_dir / "tasks" / "task999_broken.json").write_bytes(b'{"Definition": ["x"], "Instances": [\xff\xfe')
  jsonl_dir = tmp_path / "crossfit"
  jsonl_dir.mkdir()
  (jsonl_dir / "copy_of_sni.jsonl").write_text(
      json.dumps({
          "src": "3 + 4",
          "tgt": "7",
          "dataset": "toy_add_small"
      }) + "\n", encoding="utf-8")
  (jsonl_dir / "unique.jsonl").write_text(
      "".join(json.dumps({
          "src": f"q{i}",
          "tgt": f"a{i}"
      }) + "\n" for i in range(10)), encoding="utf-8")
  config = yaml.safe_load(toybench.CONFIG_PATH.read_text(encoding="utf-8"))
  config["benchmarks"]["crossfit"] = {"share": 10}
  config["dedup"]["secondary"] = ["crossfit"]
  config_path = tmp_path / "toy_plus_crossfit.yaml"
  config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
  args = [
      "build", "--config", config_path, "--sni_dir", bad_dir, "--jsonl_dir", f"crossfit={jsonl_dir}", "--no_progress"
  ]

  strict = bench(*args, "--strict", "--out", tmp_path / "strict_out")
  assert strict.returncode == 1
  assert "task999_broken.json" in strict.stderr and "nothing written" in strict.stderr
  assert not (tmp_path / "strict_out").exists()

  lenient = bench(*args, "--out", tmp_path / "out")
  assert lenient.returncode == 0, lenient.stderr
  data = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
  assert [s["path"].endswith("task999_broken.json") for s in data["skipped"]] == [True]
  names = {t["name"] for t in data["tasks"]}
  assert "crossfit:unique" in names and "crossfit:copy_of_sni" not in names
  assert any(d["name"] == "crossfit:copy_of_sni" and "duplicate dataset" in d["reason"] for d in data["dropped"])
  assert len(data["missing_split_tasks"]["train"]) == 25 - 3
  assert "listed task(s) absent from the checkout" in lenient.stdout


@pytest.mark.parametrize("change, flags, message", [
    ({
        "benchmarks": {
            "sni": {
                "share": 100
            },
            "foo": {
                "share": 1
            }
        }
    }, [], "benchmarks.foo: unknown benchmark"),
    ({
        "rates": {
            "method": "magic"
        }
    }, [], "rates.method"),
    ({}, ["--jsonl_dir", "t5=DIR"], "benchmarks.t5: not declared"),
    ({}, ["--p3_dir", "/nonexistent/p3"], "benchmarks.promptsource: not declared"),
])
def test_bad_config_or_flags_exit_2_and_write_nothing(toy_dir, tmp_path, change, flags, message):
  config = yaml.safe_load(toybench.CONFIG_PATH.read_text(encoding="utf-8"))
  config.update(change)
  config_path = tmp_path / "bad.yaml"
  config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
  flags = [f.replace("DIR", str(toy_dir)) for f in flags]
  result = bench("build", "--config", config_path, "--sni_dir", toy_dir, *flags, "--out", tmp_path / "out")
  assert result.returncode == 2
  assert message in result.stderr and str(config_path) in result.stderr
  assert not (tmp_path / "out").exists()


def test_missing_source_folder_and_no_source(tmp_path):
  result = bench("build", "--config", toybench.CONFIG_PATH, "--sni_dir", tmp_path / "nope", "--out", tmp_path / "o")
  assert result.returncode == 2 and "source folder not found" in result.stderr
  result = bench("build", "--config", toybench.CONFIG_PATH, "--out", tmp_path / "o")
  assert result.returncode == 2 and "no source given" in result.stderr
  result = bench("show", tmp_path)
  assert result.returncode == 2 and "no catalog here" in result.stderr


def test_toy_command_writes_bench_and_catalog(tmp_path):
  result = bench("toy", "--out", tmp_path / "toy", "--catalog", tmp_path / "catalog")
  assert result.returncode == 0, result.stderr
  assert len(list((tmp_path / "toy" / "tasks").glob("*.json"))) == len(toybench.TASKS)
  data = json.loads((tmp_path / "catalog" / "catalog.json").read_text(encoding="utf-8"))
  assert {t["role"] for t in data["tasks"]} == {"train", "held_out_task", "held_out_category"}


def test_relative_folders_are_recorded_as_absolute_paths(tmp_path):
  # The catalog is read later from other working directories (the trainer, eval, every pod worker).
  result = bench("toy", "--out", "toy", "--catalog", "catalog", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  data = json.loads((tmp_path / "catalog" / "catalog.json").read_text(encoding="utf-8"))
  assert all(pathlib.Path(t["path"]).is_absolute() for t in data["tasks"])
  assert all(pathlib.Path(t["path"]).is_file() for t in data["tasks"])
