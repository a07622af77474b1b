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
