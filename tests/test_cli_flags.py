"""The argparse value types the entry points share: a bad value is a usage error naming the flag (exit 2)."""

import argparse

import pytest

from optiml_jax import cli_flags


@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5", ""])
def test_positive_int_refuses_what_is_no_positive_integer_naming_the_flag(value, capsys):
  parser = argparse.ArgumentParser(prog="cmd")
  parser.add_argument("--train_steps", type=cli_flags.positive_int("steps"))
  with pytest.raises(SystemExit) as stopped:
    parser.parse_args(["--train_steps", value])
  assert stopped.value.code == 2
  assert f"argument --train_steps: expected a positive number of steps, got {value!r}" in capsys.readouterr().err


def test_positive_int_reads_positive_integers():
  assert cli_flags.positive_int("rows")("12") == 12
  with pytest.raises(argparse.ArgumentTypeError, match="expected a positive integer, got '0'"):
    cli_flags.positive_int()("0")
