"""t5x-style gin flags for the entry points: `--gin_file`, `--gin.KEY=VALUE`, `--gin_bindings`, `--gin_search_paths`.

Only the entry points (`train`, `eval`) use gin; this module parses their flags and loads the files. A value
given as `--gin.MODEL_DIR=/tmp/run` that is not a gin literal is taken as a string, so paths need no quoting.
Unknown configurables or parameters, and required macros left unset, are reported as `GinConfigError` with
the binding named, before anything is built or compiled.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Sequence

import gin

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


class GinConfigError(ValueError):
  """A gin file or binding is wrong; the message names it."""


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s), in order")
  parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s) 'KEY = VALUE'")
  parser.add_argument("--gin_search_paths", default="", help="comma-separated folders searched for gin files")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.KEY=VALUE` -> `--gin_bindings=KEY = VALUE` (values that are not gin literals become strings)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      key, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={key} = {_as_gin_value(value)}")
    else:
      out.append(arg)
  return out


def _as_gin_value(value: str) -> str:
  try:
    gin.config.parse_value(value)
    return value
  except Exception:  # pylint: disable=broad-except
    return repr(value)


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: str | Sequence[str] = "") -> None:
  """Loads `gin_files` then `bindings`, searching `search_paths`, the repo's gin/ and the working directory."""
  if isinstance(search_paths, str):
    search_paths = [p for p in search_paths.split(",") if p]
  for path in [*search_paths, str(REPO_GIN_DIR), os.getcwd()]:
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise GinConfigError("no --gin_file given (e.g. --gin_file=gin/quickstart.gin)")
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, IOError) as e:
    raise GinConfigError(f"gin configuration: {e}") from e


def check_required_macros(names: Sequence[str]) -> None:
  """Raises GinConfigError naming every macro in `names` that is unset or still `%gin.REQUIRED`."""
  missing = []
  for name in names:
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      missing.append(name)
      continue
    if repr(value) == "%gin.REQUIRED":
      missing.append(name)
  if missing:
    raise GinConfigError("missing required gin macro(s): " + ", ".join(missing) +
                         " (set them with --gin.NAME=VALUE)")
