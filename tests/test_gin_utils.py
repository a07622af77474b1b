"""Where gin files are found (`gin_utils.search_paths_for`, `resolve_gin_file`, `parse`).

The order is: the path as given, `--gin_search_paths`, the gin folder shipped with the package, the working
directory; `include` lines inside gin files follow the same order. A probe configurable defined here tells
which copy of a file gin read; the real shipped files are checked from a directory outside the checkout.
"""

from __future__ import annotations

import os
import pathlib
import re

import gin
import pytest

from optiml_jax import gin_utils
from optiml_jax import resources

REPO = pathlib.Path(__file__).resolve().parent.parent
# An include of t5x's own run files resolves from the t5x checkout (t5x's --gin_search_paths), not from ours.
T5X_OWN_PREFIX = "t5x/configs/"
INCLUDE = re.compile(r"^include\s+'([^']+)'", re.MULTILINE)


@gin.configurable("gin_lookup_probe")
def _probe(source: str = "unset") -> str:
  return source


def _probe_source() -> str:
  return gin.query_parameter("gin_lookup_probe.source")


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> pathlib.Path:
  """A stand-in for the shipped gin folder, so each copy of a file can say where it came from."""
  folder = tmp_path / "shipped_gin"
  folder.mkdir()
  monkeypatch.setattr(resources, "gin_dir", lambda: folder)
  return folder


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> pathlib.Path:
  """A working directory outside the checkout."""
  folder = tmp_path / "elsewhere"
  folder.mkdir()
  monkeypatch.chdir(folder)
  return folder


def test_search_paths_are_given_then_shipped_then_working_directory(shipped, elsewhere):
  assert gin_utils.search_paths_for("/a,/b") == ["/a", "/b", str(shipped), str(elsewhere)]
  assert gin_utils.search_paths_for(["/a"]) == ["/a", str(shipped), str(elsewhere)]
  assert gin_utils.search_paths_for("") == [str(shipped), str(elsewhere)]


def test_the_path_as_given_wins_over_search_paths_and_shipped(shipped, elsewhere, tmp_path):
  search = tmp_path / "search"
  for folder, source in ((elsewhere, "given"), (search, "search"), (shipped, "shipped")):
    _write(folder / "sub" / "run.gin", f"gin_lookup_probe.source = '{source}'\n")
  gin_utils.parse(["sub/run.gin"], [], str(search))
  assert _probe_source() == "given"


def test_search_paths_win_over_shipped_in_the_order_given(shipped, elsewhere, tmp_path):
  first, second = tmp_path / "first", tmp_path / "second"
  for folder, source in ((first, "first"), (second, "second"), (shipped, "shipped")):
    _write(folder / "run.gin", f"gin_lookup_probe.source = '{source}'\n")
  gin_utils.parse(["run.gin"], [], f"{second},{first}")
  assert _probe_source() == "second"
  gin.clear_config()
  gin_utils.parse(["run.gin"], [], [str(first), str(second)])
  assert _probe_source() == "first"


def test_a_bare_name_finds_the_shipped_file_from_any_directory(shipped, elsewhere):
  _write(shipped / "run.gin", "gin_lookup_probe.source = 'shipped'\n")
  assert gin_utils.resolve_gin_file("run.gin", gin_utils.search_paths_for()) == str(shipped / "run.gin")
  gin_utils.parse(["run.gin"], [])
  assert _probe_source() == "shipped"


def test_a_checkout_path_finds_the_shipped_file_outside_the_checkout(shipped, elsewhere):
  _write(shipped / "models" / "m.gin", "gin_lookup_probe.source = 'shipped'\n")
  gin_utils.parse(["gin/models/m.gin"], [])
  assert _probe_source() == "shipped"
  # ...but a gin/ folder of the working directory is the path as given, and wins.
  _write(elsewhere / "gin" / "models" / "m.gin", "gin_lookup_probe.source = 'mine'\n")
  gin.clear_config()
  gin_utils.parse(["gin/models/m.gin"], [])
  assert _probe_source() == "mine"


def test_includes_follow_the_same_order(shipped, elsewhere, tmp_path):
  _write(shipped / "run.gin", "include 'models/m.gin'\n")
  _write(shipped / "models" / "m.gin", "gin_lookup_probe.source = 'shipped'\n")
  gin_utils.parse(["run.gin"], [])
  assert _probe_source() == "shipped"

  override = tmp_path / "override"
  _write(override / "models" / "m.gin", "gin_lookup_probe.source = 'override'\n")
  gin.clear_config()
  gin_utils.parse(["run.gin"], [], str(override))
  assert _probe_source() == "override"

  _write(elsewhere / "models" / "m.gin", "gin_lookup_probe.source = 'given'\n")
  gin.clear_config()
  gin_utils.parse(["run.gin"], [], str(override))
  assert _probe_source() == "given"


def test_search_paths_of_one_parse_do_not_leak_into_the_next(shipped, elsewhere, tmp_path):
  _write(shipped / "run.gin", "include 'models/m.gin'\n")
  _write(shipped / "models" / "m.gin", "gin_lookup_probe.source = 'shipped'\n")
  old = tmp_path / "old"
  _write(old / "models" / "m.gin", "gin_lookup_probe.source = 'old'\n")
  gin_utils.parse(["run.gin"], [], str(old))
  assert _probe_source() == "old"
  gin.clear_config()
  gin_utils.parse(["run.gin"], [])
  assert _probe_source() == "shipped"


def test_a_missing_file_names_every_place_looked_at(shipped, elsewhere, tmp_path):
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_utils.parse(["gin/nope.gin"], [], str(tmp_path / "search"))
  message = str(error.value)
  assert "'gin/nope.gin' not found" in message
  for looked in (elsewhere / "gin" / "nope.gin", tmp_path / "search" / "gin" / "nope.gin", shipped / "nope.gin"):
    assert str(looked) in message


def test_a_missing_include_names_it(shipped, elsewhere):
  _write(shipped / "run.gin", "include 'models/absent.gin'\n")
  with pytest.raises(gin_utils.GinConfigError, match="models/absent.gin"):
    gin_utils.parse(["run.gin"], [])


def test_the_shipped_gin_folder_is_the_checkouts_in_a_checkout():
  # This suite runs from an editable install or a checkout: the files are read where the wheel is built from.
  assert resources.gin_dir() == REPO / "gin"
  assert resources.task_file("toybench.yaml") == REPO / "tasks" / "toybench.yaml"


def test_every_include_of_a_shipped_file_resolves_to_a_shipped_file_from_elsewhere(elsewhere):
  gin_dir = resources.gin_dir()
  files = sorted(gin_dir.rglob("*.gin"))
  assert files and {p.relative_to(gin_dir).parts[0] for p in files} >= {"models", "t5x", "quickstart.gin"}
  checked = 0
  for path in files:
    for name in INCLUDE.findall(path.read_text(encoding="utf-8")):
      if name.startswith(T5X_OWN_PREFIX):
        continue
      found = gin_utils.resolve_gin_file(name, gin_utils.search_paths_for())
      assert pathlib.Path(found) == gin_dir / name, f"{path.relative_to(gin_dir)}: include '{name}' -> {found}"
      checked += 1
  assert checked >= 10  # the run files include models/ and recipe.gin; t5x files include t5x/...


def test_a_shipped_run_file_parses_with_its_includes_from_elsewhere(elsewhere):
  from optiml_jax import train  # noqa: F401  (registers the configurables)

  gin_utils.parse(["optiml_30b.gin"], [])  # includes models/opt_30b.gin and recipe.gin
  assert "'opt-30b'" in gin.config_str()
  assert not any(os.path.exists(elsewhere / name) for name in ("models", "recipe.gin"))


@pytest.mark.parametrize(
    "text", ["gin_lookup_probe.source = 'x'\nTRAIN_STEPS = (5\n", "X = {'a': [1, 2\n", "X = '\'\'unclosed\n"])
def test_an_unclosed_bracket_or_string_names_the_file(shipped, elsewhere, text):
  bad = _write(elsewhere / "bad.gin", text)
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_utils.parse([str(bad)], [])
  assert str(bad) in str(error.value) and "\n" not in str(error.value)
  # ...also when an included file has it, and in a binding of the flags.
  _write(shipped / "run.gin", "include 'bad.gin'\n")
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match=str(bad)):
    gin_utils.parse(["run.gin"], [])
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match="bindings of the flags"):
    gin_utils.parse([str(_write(elsewhere / "ok.gin", "X = 1\n"))], ["X = (5"])


def test_a_macro_no_file_uses_is_refused_with_the_close_names(shipped, elsewhere):
  _write(shipped / "run.gin", "include 'models/m.gin'\nTRAIN_STEPS = 5\nBATCH_SIZE = 2\n"
         "gin_lookup_probe.source = %BATCH_SIZE\n")
  _write(shipped / "models" / "m.gin", "SOURCE = 'file'\nTRAIN_STEPS_NOTE = %TRAIN_STEPS\n")
  for binding, close in (("TRAIN_STEP = 5", "TRAIN_STEPS"), ("BATCHSIZE = 2", "BATCH_SIZE")):
    gin.clear_config()
    with pytest.raises(gin_utils.GinConfigError) as error:
      gin_utils.parse(["run.gin"], [binding])
    name = binding.split()[0]
    assert f"macro {name} is set by a binding" in str(error.value) and f"did you mean {close}?" in str(error.value)
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match="NOT_A_MACRO.*macros in use: BATCH_SIZE, TRAIN_STEPS"):
    gin_utils.parse(["run.gin"], ["NOT_A_MACRO = 3"])
  # A macro used by a binding of an included file, by a flag's binding, or by another macro is in use.
  gin.clear_config()
  gin_utils.parse(["run.gin"], ["TRAIN_STEPS = 7", "BATCH_SIZE = %MINE", "MINE = 'x'"])
  assert gin.query_parameter("%MINE") == "x" and str(gin.query_parameter("%BATCH_SIZE")) == "%MINE"
  # A macro whose every use a flag overrode is not used either: the override is what counts.
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match="macro BATCH_SIZE is set by a binding"):
    gin_utils.parse(["run.gin"], ["BATCH_SIZE = 3", "gin_lookup_probe.source = 'flag'"])
  assert gin_utils.macros_bound_by(["A = 1", "s/B = %A", "probe.x = 1\nC = {'k':\n 1}"]) == ["A", "s/B", "C"]


def test_every_macro_the_documented_commands_set_is_used_by_their_gin_files(elsewhere):
  from optiml_jax import train  # noqa: F401  (registers the configurables)

  train_macros = [
      "MODEL_DIR = '/r'", "CATALOG_DIR = '/c'", "INITIAL_CHECKPOINT_PATH = '/i'", "CACHE_DIR = None", "TRAIN_STEPS = 5",
      "BATCH_SIZE = 2", "MIXTURE_OR_TASK_NAME = 'm'", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 8}"
  ]
  files = [["quickstart.gin"], ["recipe.gin", "models/smollm2_135m.gin"], ["optiml_30b.gin"], ["optiml_1.3b.gin"],
           ["optiml_175b.gin"], ["reproduce_smollm2.gin"], ["reproduce_smollm2_cpu.gin"],
           ["quickstart.gin", "models/llama_tiny.gin"]]
  for gin_files in files:
    gin.clear_config()
    gin_utils.parse(gin_files, train_macros)
  gin.clear_config()
  with pytest.raises(gin_utils.GinConfigError, match="TOKENIZER_DIR"):  # quickstart's OPT reads no TOKENIZER_DIR
    gin_utils.parse(["quickstart.gin"], ["TOKENIZER_DIR = '/t'"])
  gin.clear_config()
  gin_utils.parse(["recipe.gin", "models/llama3_8b.gin"], ["TOKENIZER_DIR = '/t'"])


def test_a_number_given_to_a_path_flag_stays_a_string_and_other_numbers_stay_numbers():
  # From inside a MODEL_DIR, --gin.CHECKPOINT_PATH=5 names the step folder ./5 (docs/training.md: paths need no quotes).
  flags = [
      "--gin.CHECKPOINT_PATH=5", "--gin.EVAL_OUTPUT_DIR=1e3", "--gin.CATALOG_DIR=None", "--gin.MODEL_DIR=/runs/7",
      "--gin.TRAIN_STEPS=5", "--gin.LEARNING_RATE=1e-3", "--gin.SHOTS=[0, 5]"
  ]
  bindings = [arg[len("--gin_bindings="):] for arg in gin_utils.rewrite_gin_args(flags)]
  gin.clear_config()
  try:
    gin.parse_config(bindings)
    values = {
        name: gin.query_parameter(f"%{name}") for name in ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "CATALOG_DIR",
                                                          "MODEL_DIR", "TRAIN_STEPS", "LEARNING_RATE", "SHOTS")
    }
  finally:
    gin.clear_config()
  assert values == {
      "CHECKPOINT_PATH": "5",
      "EVAL_OUTPUT_DIR": "1e3",
      "CATALOG_DIR": None,
      "MODEL_DIR": "/runs/7",
      "TRAIN_STEPS": 5,
      "LEARNING_RATE": 1e-3,
      "SHOTS": [0, 5]
  }
  [binding] = gin_utils.rewrite_gin_args(["--gin.evaluate.tokenizer_dir=12"])  # a parameter's name counts too
  assert binding == "--gin_bindings=evaluate.tokenizer_dir = '12'"


@pytest.mark.parametrize("key,is_path", [("CHECKPOINT_PATH", True), ("scope/MODEL_DIR", True),
                                         ("RunArgs.compilation_cache_dir", True), ("TRAIN_STEPS", False),
                                         ("DIR_COUNT", False), ("evaluate.batch_size", False)])
def test_path_keys_are_the_names_ending_in_dir_or_path(key, is_path):
  assert gin_utils.is_path_key(key) is is_path
