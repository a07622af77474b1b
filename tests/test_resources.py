"""The shipped configuration files (`optiml_jax.resources`) and bench definitions given by name."""

from __future__ import annotations

import pathlib

import pytest

from optiml_jax import bench
from optiml_jax import resources

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> pathlib.Path:
  monkeypatch.chdir(tmp_path)
  return tmp_path


def test_a_bench_definition_is_found_as_given_before_the_shipped_one(elsewhere):
  mine = elsewhere / "tasks" / "toybench.yaml"
  mine.parent.mkdir()
  mine.write_text("name: mine\n")
  assert resources.find_task_file("tasks/toybench.yaml") == pathlib.Path("tasks/toybench.yaml")
  assert resources.find_task_file(str(mine)) == mine


@pytest.mark.parametrize("name", ["optiml_bench.yaml", "tasks/optiml_bench.yaml"])
def test_a_shipped_bench_definition_is_found_by_name_from_any_directory(elsewhere, name):
  assert resources.find_task_file(name) == resources.tasks_dir() / "optiml_bench.yaml"
  assert resources.tasks_dir() == REPO / "tasks"  # an editable install or checkout reads the top-level folder


@pytest.mark.parametrize("name", ["nope.yaml", "tasks/nope.yaml", "/abs/optiml_bench.yaml"])
def test_a_missing_bench_definition_names_where_it_was_looked_for(elsewhere, name):
  with pytest.raises(resources.ResourceError) as error:
    resources.find_task_file(name)
  assert repr(name) in str(error.value)
  if not name.startswith("/"):
    assert str(resources.tasks_dir() / "nope.yaml") in str(error.value)


def test_a_missing_shipped_file_lists_the_shipped_ones():
  with pytest.raises(resources.ResourceError, match="optiml_bench.yaml, reproduce_small.yaml, toybench.yaml"):
    resources.task_file("nope.yaml")


def test_bench_build_exits_2_naming_a_missing_config(elsewhere, capsys):
  code = bench.main(["build", "--config", "nope.yaml", "--sni_dir", str(elsewhere), "--out", str(elsewhere / "o")])
  assert code == 2
  assert "'nope.yaml' not found" in capsys.readouterr().err
  assert not (elsewhere / "o").exists()


def test_the_module_prints_a_shipped_folder(capsys):
  assert resources.main(["gin"]) == 0
  assert capsys.readouterr().out.strip() == str(resources.gin_dir())
  assert resources.main(["nope"]) == 2
