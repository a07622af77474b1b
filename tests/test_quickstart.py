"""`python -m optiml_jax.quickstart`: a `--train_steps` run of any length gets a warmup that ends before its last
step (quickstart.gin's 10 steps, or half the run when that is fewer), and the flags it hands the trainer build a
valid TrainConfig. The bench, the training and the evaluation themselves are stubbed out: `make quickstart` runs
them, and tests/test_train_cli.py trains quickstart.gin for real."""

import gin
import pytest

from optiml_jax import gin_registry
from optiml_jax import quickstart
from optiml_jax import train as train_entry


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("steps,warmup", [(None, 10), (1, 0), (4, 2), (19, 9), (20, 10), (500, 10)])
def test_the_training_flags_build_a_config_whose_warmup_ends_before_the_last_step(tmp_path, monkeypatch, steps, warmup):
  built = []

  def configure(flags):  # what train.main checks first (exit 2 when it raises)
    args = train_entry.parse_flags(flags)
    built.append(gin_registry.configure_training(args.gin_file, args.gin_bindings, args.gin_search_paths))
    return 0

  monkeypatch.setattr(quickstart.bench, "main", lambda argv: 0)
  monkeypatch.setattr(quickstart.train_entry, "main", configure)
  monkeypatch.setattr(quickstart.subprocess, "call", lambda command, env=None: 0)
  argv = [f"--workdir={tmp_path}"] + ([] if steps is None else [f"--train_steps={steps}"])
  assert quickstart.main(argv) == 0
  [config] = built
  assert (config.run.train_steps, config.optimizer.warmup_steps) == (steps or 360, warmup)


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_a_train_steps_that_is_not_a_positive_number_is_a_usage_error(steps, capsys):
  with pytest.raises(SystemExit) as exit_info:
    quickstart.main([f"--train_steps={steps}"])
  assert exit_info.value.code == 2 and "--train_steps: expected a positive number of steps" in capsys.readouterr().err


def _stub_steps(monkeypatch, calls):
  """The bench, the training and the evaluation replaced by stubs that record that they ran."""
  monkeypatch.setattr(quickstart.bench, "main", lambda argv: calls.append("bench") or 0)
  monkeypatch.setattr(quickstart.train_entry, "main", lambda flags: calls.append("train") or 0)
  monkeypatch.setattr(quickstart.subprocess, "call", lambda command, env=None: calls.append("eval") or 0)


def test_a_model_folder_with_the_users_own_files_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
  calls = []
  _stub_steps(monkeypatch, calls)
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "important_weights.txt").write_text("my only copy")
  assert quickstart.main([f"--workdir={tmp_path}"]) == 2
  err = capsys.readouterr().err
  assert "--workdir" in err and str(tmp_path / "model") in err
  assert (tmp_path / "model" / "important_weights.txt").read_text() == "my only copy"
  assert not calls


def test_an_earlier_quickstarts_model_folder_is_replaced(tmp_path, monkeypatch):
  calls = []
  _stub_steps(monkeypatch, calls)
  model = tmp_path / "model"
  for folder in ("5/params", "3.orbax-checkpoint-tmp-1700000000", "2.unrestorable", "tensorboard/train"):
    (model / folder).mkdir(parents=True)
  for name in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
               "metrics.jsonl", "metrics.jsonl.tmp", "loss.png"):
    (model / name).write_text("{}")
  assert quickstart.main([f"--workdir={tmp_path}"]) == 0
  assert calls == ["bench", "train", "eval"] and not model.exists()  # the stubbed training wrote nothing


def test_an_empty_model_folder_is_used(tmp_path, monkeypatch):
  calls = []
  _stub_steps(monkeypatch, calls)
  (tmp_path / "model").mkdir()
  assert quickstart.main([f"--workdir={tmp_path}"]) == 0 and calls == ["bench", "train", "eval"]


def test_the_users_files_in_the_eval_folder_are_kept(tmp_path, monkeypatch):
  # the evaluation replaces an earlier evaluation's outputs itself (eval.staged_output) and keeps other files
  _stub_steps(monkeypatch, [])
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "notes.md").write_text("mine")
  assert quickstart.main([f"--workdir={tmp_path}"]) == 0
  assert (tmp_path / "eval" / "notes.md").read_text() == "mine"


@pytest.mark.parametrize("workdir", ["file", "file/below"])
def test_a_workdir_that_cannot_be_a_folder_is_an_error_naming_workdir(tmp_path, monkeypatch, capsys, workdir):
  calls = []
  _stub_steps(monkeypatch, calls)
  (tmp_path / "file").write_text("x")
  assert quickstart.main([f"--workdir={tmp_path / workdir}"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --workdir: ") and "--out" not in err and not calls
