"""Value types for the entry points' argparse flags (`answer`, `quickstart`, `reproduce`).

Where it sits: beside `cli_logging`, below the command lines, above nothing. A type raises
`argparse.ArgumentTypeError`, which argparse turns into a usage error naming the flag (exit status 2) before the
command does anything.
"""

from __future__ import annotations

import argparse
from typing import Callable


def positive_int(what: str = "") -> Callable[[str], int]:
  """The type of a flag that takes a positive integer (`--batch_size`, `--train_steps`); `what` is what it counts,
  for the message: 'expected a positive number of steps, got '0''."""

  def parse(value: str) -> int:
    try:
      number = int(value)
    except ValueError:
      number = 0
    if number < 1:
      expected = f"a positive number of {what}" if what else "a positive integer"
      raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}")
    return number

  return parse
