"""t5x-style gin flags for the entry points: `--gin_file`, `--gin.KEY=VALUE`, `--gin_bindings`, `--gin_search_paths`.

Only the entry points (`train`, `eval`) use gin; this module parses their flags, loads the files and checks
the result before anything is built or compiled:
  - an unknown configurable or parameter, a syntax error (an unclosed bracket too) or a missing file: `parse`
    raises GinConfigError with gin's message, which names the binding and the file (and line);
  - a macro set by a binding (`--gin.TRAIN_STEP=5`) that no parsed file or binding uses (`%TRAIN_STEP`): `parse`
    raises GinConfigError naming it and the macros in use with close names (a mistyped macro would be ignored);
  - a required macro left unset: `check_required_macros(names)`;
  - anything a configurable needs that is unbound, `%gin.REQUIRED`, or a macro that no file defines:
    `check_bindings(name, fn)` walks the configurable and every configurable it references.
A value given as `--gin.MODEL_DIR=/tmp/run` that is not a gin literal is taken as a string, so paths need no
quoting; so is a number given to a path (a macro or parameter whose name ends in _DIR or _PATH, any case:
`--gin.CHECKPOINT_PATH=5` names the step folder ./5, not the int 5). Other numbers stay numbers.

Where gin files are found (`--gin_file` values and `include` lines inside gin files alike), first match wins:
  1. the path as given (absolute, or relative to the working directory): `--gin_file=gin/optiml_30b.gin`
     from a checkout;
  2. each `--gin_search_paths` folder, in order;
  3. the gin folder shipped with the package (`resources.gin_dir()`): `--gin_file=optiml_30b.gin`, and
     `include 'models/opt_1.3b.gin'` or `include 't5x/...'` inside shipped files, from any directory;
  4. the working directory.
A `--gin_file` written for a checkout (`gin/optiml_30b.gin`) that matches none of these finds the shipped
file of the same name, so the README's commands also work from an installed package.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import logging
import os
import re
import tokenize
import types
from typing import Any, Callable, Iterator, Sequence

import gin
from gin import config_parser

from optiml_jax import resources


class GinConfigError(ValueError):
  """A gin file or binding is wrong; the message names it."""


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[], help="gin file(s), in order")
  parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding(s) 'KEY = VALUE'")
  parser.add_argument("--gin_search_paths", default="", help="comma-separated folders searched for gin files")


# The name (last part of a `--gin.` key: `CHECKPOINT_PATH`, `evaluate.tokenizer_dir`, `scope/MODEL_DIR`) of a path.
_PATH_NAME = re.compile(r".*_(dir|path)", re.IGNORECASE)


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """`--gin.KEY=VALUE` -> `--gin_bindings=KEY = VALUE` (values that are not gin literals become strings, and so do
  numbers given to a path: `is_path_key`)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      key, value = arg[len("--gin."):].split("=", 1)
      out.append(f"--gin_bindings={key} = {_as_gin_value(value, is_path_key(key))}")
    else:
      out.append(arg)
  return out


def is_path_key(key: str) -> bool:
  """Whether the macro or parameter `key` of a `--gin.KEY=VALUE` flag names a path: its name ends in _DIR or _PATH
  (any case), as MODEL_DIR, CHECKPOINT_PATH and RunArgs.compilation_cache_dir do."""
  return _PATH_NAME.fullmatch(re.split(r"[./]", key.strip())[-1]) is not None


def _as_gin_value(value: str, path: bool = False) -> str:
  """`value` as gin text: itself when it is a gin literal, else quoted; a number quoted too when it is a `path`
  (a relative folder whose name is a number, such as a step folder). None, booleans and lists stay as given."""
  try:
    parsed = gin.config.parse_value(value)
  except Exception:  # pylint: disable=broad-except
    return repr(value)
  if path and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
    return repr(value.strip())
  return value


class _DropGinPathNoise(logging.Filter):
  """gin logs an ERROR for every search-path miss before it finds a file; those are not errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found")


@contextlib.contextmanager
def _quiet_search() -> Iterator[None]:
  noise = _DropGinPathNoise()
  logging.getLogger().addFilter(noise)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(noise)


def search_paths_for(search_paths: str | Sequence[str] = "") -> list[str]:
  """The folders gin files are looked up in: the given ones, the shipped gin folder, the working directory."""
  if isinstance(search_paths, str):
    search_paths = [p for p in search_paths.split(",") if p]
  try:
    shipped = resources.gin_dir()
  except resources.ResourceError as e:
    raise GinConfigError(str(e)) from e
  return [*search_paths, str(shipped), os.getcwd()]


def _shipped_name(name: str) -> str | None:
  """`gin/X` (a checkout path) -> `X`, the name of the shipped file; None for other names."""
  prefix = resources.GIN + "/"
  return name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else None


def resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
  """The path of gin file `name`: as given, else in the first `search_paths` folder, else (`gin/X`) shipped X.

  Raises:
    GinConfigError: naming `name` and every place looked at.
  """
  if os.path.isfile(name):
    return os.path.abspath(name)
  looked = [os.path.abspath(name)]
  if not os.path.isabs(name):
    for folder in search_paths:
      candidate = os.path.join(folder, name)
      if os.path.isfile(candidate):
        return os.path.abspath(candidate)
      looked.append(os.path.abspath(candidate))
    shipped_name = _shipped_name(name)
    if shipped_name is not None:
      candidate = os.path.join(resources.gin_dir(), shipped_name)
      if os.path.isfile(candidate):
        return os.path.abspath(candidate)
      looked.append(os.path.abspath(candidate))
  looked = list(dict.fromkeys(looked))  # the working directory is also where "as given" looks
  raise GinConfigError(f"gin file {name!r} not found (looked at: {', '.join(looked)})")


@contextlib.contextmanager
def _include_search_paths(paths: Sequence[str]) -> Iterator[None]:
  """Makes gin resolve `include` lines as given, then in `paths`, for one parse only.

  gin keeps one global, append-only list of folders; without the reset, a second parse in the same process
  (tests, the planner) would search the first one's `--gin_search_paths` before its own.
  """
  prefixes = getattr(gin.config, "_LOCATION_PREFIXES", None)
  if not isinstance(prefixes, list):  # another gin release: fall back to its public, append-only API
    for path in paths:
      gin.add_config_file_search_path(path)
    yield
    return
  saved = list(prefixes)
  prefixes[:] = ["", *paths]  # "": the include as given (absolute, or relative to the working directory)
  try:
    yield
  finally:
    prefixes[:] = saved


def parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: str | Sequence[str] = "") -> None:
  """Loads `gin_files` then `bindings` (later ones win). Raises GinConfigError naming what is wrong.

  Files and their `include` lines are looked up as the module docstring says.
  """
  if not gin_files:
    raise GinConfigError("no --gin_file given (e.g. --gin_file=quickstart.gin)")
  paths = search_paths_for(search_paths)
  files = [resolve_gin_file(f, paths) for f in gin_files]
  try:
    with _include_search_paths(paths), _quiet_search():
      gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)
  except tokenize.TokenError as e:  # an unclosed bracket or string: Python's tokenizer, which gin's parser uses
    raise GinConfigError(f"gin configuration: {_token_error(e)}") from e
  except (OSError, ValueError, KeyError, SyntaxError, TypeError) as e:
    raise GinConfigError(f"gin configuration: {e}") from e
  check_macros_are_used(bindings)


def _token_error(error: tokenize.TokenError) -> str:
  """'FILE: line N: EOF in multi-line statement (...)' for a gin file (or the flags) Python's tokenizer gave up on.

  gin reads each file, included ones too, with `parse_config_file(config_file)`: the innermost such call in the
  traceback names the file; without one, the text was a binding of the flags. (For an included file gin re-raises
  a proxy of the error whose text carries the include's location: its first line is the tokenizer's.)
  """
  where = "the gin bindings of the flags (--gin.KEY=VALUE, --gin_bindings)"
  frame: types.TracebackType | None = error.__traceback__
  while frame is not None:
    if frame.tb_frame.f_code.co_name == "parse_config_file":
      local = frame.tb_frame.f_locals
      where = os.path.abspath(str(local.get("config_file_with_prefix", local.get("config_file", where))))
    frame = frame.tb_next
  text = str(error).split("\n")[0]  # "('EOF in multi-line statement', (3, 0))"
  match = re.match(r"""\(['"](.+)['"], \((\d+), \d+\)\)$""", text)
  message = f"line {match.group(2)}: {match.group(1)}" if match else text
  return (f"{where}: {message} (an unclosed bracket, parenthesis or string: every '(', '[', '{{' and quote must be "
          "closed)")


class _NoValues(config_parser.ParserDelegate):
  """Parses bindings for their names only: references and macros in values become None."""

  def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> None:
    return None

  def macro(self, macro_name: str) -> None:
    return None


def macros_bound_by(bindings: Sequence[str]) -> list[str]:
  """The macros `bindings` set (`NAME = VALUE`, `scope/NAME = VALUE`), in order, each once."""
  names = []
  for statement in config_parser.ConfigParser("\n".join(bindings), _NoValues()):
    if isinstance(statement, config_parser.BindingStatement) and not statement.arg_name:
      names.append(f"{statement.scope}/{statement.selector}" if statement.scope else statement.selector)
  return list(dict.fromkeys(names))


def used_macros() -> set[str] | None:
  """The macros some parsed binding (of a file or a flag, macros' own values included) refers to as `%NAME`; None
  when this gin release keeps its bindings elsewhere (then nothing can be said)."""
  config = getattr(gin.config, "_CONFIG", None)
  if not isinstance(config, dict):
    return None
  return {"/".join(ref.scopes) for ref in gin.config.iterate_references(config) if _is_macro(ref)}


def check_macros_are_used(bindings: Sequence[str]) -> None:
  """Raises GinConfigError naming every macro `bindings` set that no parsed file or binding uses.

  gin takes `--gin.TRAIN_STEP=5` as the definition of a new macro TRAIN_STEP; nothing reads it, so the run would
  go on with the files' TRAIN_STEPS. Call after `gin.parse_config_files_and_bindings` (`parse` does): a macro used
  only inside an included file counts as used. The message suggests the used macros with close names.
  """
  used = used_macros()
  if used is None or not bindings:
    return
  unused = [name for name in macros_bound_by(bindings) if name not in used]
  if not unused:
    return
  problems = []
  for name in unused:
    close = difflib.get_close_matches(name, sorted(used), n=3, cutoff=0.6)
    if close:
      hint = f"; did you mean {' or '.join(close)}?"
    else:
      hint = f"; the macros in use: {', '.join(sorted(used))}" if used else "; the gin files use no macro"
    problems.append(f"the macro {name} is set by a binding (--gin.{name}=...) but no gin file or binding uses "
                    f"%{name}{hint}")
  raise GinConfigError("gin configuration: " + "; ".join(problems))


def missing_macros(names: Sequence[str]) -> list[str]:
  """The macros in `names` that are unset or still `%gin.REQUIRED`."""
  missing = []
  for name in names:
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      missing.append(name)
      continue
    if _is_required_marker(value):
      missing.append(name)
  return missing


def check_required_macros(names: Sequence[str]) -> None:
  """Raises GinConfigError naming every macro in `names` that is unset or still `%gin.REQUIRED`."""
  missing = missing_macros(names)
  if missing:
    raise GinConfigError("missing required gin macro(s): " + ", ".join(missing) + " (set them with --gin.NAME=VALUE)")


def _is_required_marker(value: Any) -> bool:
  if value is gin.REQUIRED:
    return True
  return (isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "constant" and
          "/".join(value.scopes) == "gin.REQUIRED")


def _is_macro(ref: gin.config.ConfigurableReference) -> bool:
  return ref.configurable.wrapped is gin.config.macro


def _value_problems(value: Any, where: str, seen: set[str]) -> list[str]:
  problems = []
  for ref in gin.config.iterate_references(value):
    if _is_required_marker(ref):
      problems.append(f"{where} is %gin.REQUIRED: give it a value")
    elif _is_macro(ref):
      macro = "/".join(ref.scopes)
      try:
        bound = gin.query_parameter(f"%{macro}")
      except ValueError:
        problems.append(f"{where} uses the macro %{macro}, which no gin file or flag defines")
        continue
      if _is_required_marker(bound):
        problems.append(f"{where} needs the macro {macro}: set it with --gin.{macro}=VALUE")
      else:
        problems += _value_problems(bound, f"{where} (via %{macro})", seen)
    elif ref.evaluate:
      problems += _configurable_problems(ref.configurable.name, ref.configurable.wrapped, seen,
                                         scope="/".join(ref.scopes))
  return problems


def _configurable_problems(name: str, fn: Callable[..., Any], seen: set[str], scope: str = "") -> list[str]:
  key = f"{scope}/{name}" if scope else name
  if key in seen:
    return []
  seen.add(key)
  problems = []
  for param in inspect.signature(fn).parameters.values():
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "self":
      continue
    try:
      bound = gin.query_parameter(f"{key}.{param.name}")
    except ValueError:
      if param.default is gin.REQUIRED or param.default is param.empty:  # a dataclass field without default
        problems.append(f"{key}.{param.name} is required but no gin file or flag binds it")
      continue
    problems += _value_problems(bound, f"{key}.{param.name}", seen)
  return problems


def binding_problems(name: str, fn: Callable[..., Any]) -> list[str]:
  """What configurable `name` (function `fn`) would be missing, one line each (see `check_bindings`)."""
  return _configurable_problems(name, fn, set())


def check_bindings(name: str, fn: Callable[..., Any], required_macros: Sequence[str] = ()) -> None:
  """Raises GinConfigError listing every value configurable `name` (function `fn`) would be missing.

  Looks at `fn`'s parameters and, through `@configurable()` references, at those of every configurable it
  would call; macros are followed to their values. Nothing is called or built. `required_macros` are
  checked too (see `check_required_macros`), so one message lists everything.
  """
  problems = [f"macro {m} is required: set it with --gin.{m}=VALUE" for m in missing_macros(required_macros)]
  problems += [p for p in binding_problems(name, fn) if not any(f"macro {m}:" in p for m in required_macros)]
  if problems:
    raise GinConfigError("gin configuration incomplete:\n  " + "\n  ".join(problems))
