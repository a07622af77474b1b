"""Logging of the command-line entry points: short lines on the screen, tracebacks of libraries in a log file.

Where it sits: under `python -m optiml_jax.train`, `optiml_jax.eval` and `optiml_jax.convert`, which open a
`session(command, log_file, debug)` around their work. Library code only logs (the standard `logging` module)
and raises errors whose message is one line; this module decides what reaches the screen:

  screen (stderr)   this package's records (INFO and up) as `LEVEL message`, and other libraries' warnings
                    and errors as their first line, each text once (a count of the repeats at the end); never
                    a traceback of a library (Orbax, TensorStore, asyncio's "Future exception was never
                    retrieved", "Exception ignored in" of a coroutine) nor Python's "RuntimeWarning: coroutine
                    ... was never awaited" of a library's coroutine that a failed restore dropped;
  log file          everything above plus those tracebacks and the ones behind this package's one-line
                    errors (logger `optiml_jax.details`): by default `$TMPDIR/optiml_jax/<command>-<time>-<pid>.log`,
                    created on its first record only; `--log_file PATH` chooses it.
  --debug           every record and traceback on the screen as well (and `report` prints the traceback of an
                    expected error too).

An error the entry point expects is printed as `error: <message(error)>`: one line, without the note gin appends
to an error raised in a configurable ("In call to configurable 'evaluate' (<function evaluate at 0x...>)"). An
error the entry point does not expect is not caught there, so Python prints its traceback as usual.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Iterator, NoReturn, TextIO
import warnings

DETAILS = "optiml_jax.details"  # tracebacks behind one-line errors: the log file (and --debug) only
_OURS = ("optiml_jax", "__main__")
LINE_LIMIT = 300  # characters of a library's warning shown on the screen
_last_log_file: str | None = None  # the log file of the last session that wrote one (for `run_quietly`)
_quiet_process = False  # set by `run_quietly`: after a session, a library's unraisable exceptions are dropped
# What gin appends to an error raised inside a configurable ("\n  In call to configurable 'evaluate' (<function
# evaluate at 0x7f...>)"): a Python detail, not part of the one-line message.
_GIN_NOTE = re.compile(r"\n\s*In call to configurable '[^'\n]*' \([^\n]*\)(?: in scope '[^'\n]*')?")
# Python's warning for a library's coroutine dropped unawaited (Orbax's reads, when a restore fails part-way).
_NEVER_AWAITED = re.compile(r"^coroutine '[^']*' was never awaited")


def message(error: BaseException) -> str:
  """The text of an error without the notes gin appends to errors raised in a configurable (the function's name
  and address); what the entry points print after `error: `."""
  return _GIN_NOTE.sub("", str(error))


def _ours(name: str) -> bool:
  return name == "root" or any(name == n or name.startswith(n + ".") for n in _OURS)


class _ScreenFilter(logging.Filter):
  """This package's records but its details logger; other libraries' warnings without their traceback, each
  text once (seqio warns once per Task it opens: thousands of times at the paper's scale). The first repeat prints
  one note where it happens, so that a failing command's error line stays its last."""

  def __init__(self, where: str) -> None:
    super().__init__()
    self.shown: set[tuple[str, str]] = set()
    self.repeats = 0
    self.where = where

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == DETAILS or record.name.startswith(DETAILS + "."):
      return False
    if _ours(record.name):
      return True
    if record.levelno < logging.WARNING or record.exc_info or record.stack_info:
      return False
    key = (record.name, record.getMessage())
    if key in self.shown:
      self.repeats += 1
      if self.repeats == 1:
        print(f"(a library warning repeated word for word is shown once; {self.where})", file=sys.stderr)
      return False
    self.shown.add(key)
    return True


class _ScreenFormatter(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    text = super().format(record)
    if _ours(record.name):
      return text
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= LINE_LIMIT else first[:LINE_LIMIT - 3] + "..."


class _FileFilter(logging.Filter):
  """This package's records from INFO, other libraries' from WARNING (Orbax logs every save at INFO)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return _ours(record.name) or record.levelno >= logging.WARNING


class _QuietFileHandler(logging.FileHandler):
  """A log file that goes silent when it cannot be written (a full disk must not print logging's own errors)."""

  def handleError(self, record: logging.LogRecord) -> None:
    self.addFilter(lambda _: False)


def _drop(_: Any) -> None:
  """An unraisable-exception hook that drops it."""


def default_log_file(command: str) -> str:
  stamp = time.strftime("%Y%m%d-%H%M%S")
  return os.path.join(tempfile.gettempdir(), "optiml_jax", f"{command}-{stamp}-{os.getpid()}.log")


class Session:
  """What `session` set up: the log file, and whether tracebacks go to the screen (`debug`)."""

  def __init__(self, log_file: str, debug: bool, handler: logging.FileHandler | None):
    self.log_file = log_file
    self.debug = debug
    self._handler = handler

  def log_written(self) -> bool:
    """Whether the log file was created (it is, on its first record)."""
    return self._handler is not None and self._handler.stream is not None

  def report(self, error: BaseException, prefix: str = "error") -> None:
    """Prints an expected error as one line (plus where its details are); its traceback goes to the log."""
    # The log is named when something went there before (a library's traceback behind this error).
    hint = f" (details: {self.log_file})" if self.log_written() and not self.debug else ""
    logging.getLogger(DETAILS).info("%s: %s", prefix, error, exc_info=error)
    if self.debug:
      traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    print(f"{prefix}: {message(error)}{hint}", file=sys.stderr)


@contextlib.contextmanager
def session(command: str, log_file: str | None = None, debug: bool = False,
            level: int = logging.INFO) -> Iterator[Session]:
  """Sets up the screen and the log file for one command; everything is put back when the block ends."""
  root = logging.getLogger()
  previous_level = root.level
  previous_hook = sys.unraisablehook
  screen = logging.StreamHandler(sys.stderr)
  screen.setFormatter(_ScreenFormatter("%(levelname)s %(message)s"))
  path = log_file or default_log_file(command)
  file_handler: logging.FileHandler | None
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    file_handler = _QuietFileHandler(path, delay=True, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    file_handler.addFilter(_FileFilter())
  except OSError:  # no writable temporary folder: the screen only
    file_handler = None
  if not debug:
    kept = f"all are in {path}" if file_handler is not None else "no log file keeps the repeats"
    screen.addFilter(_ScreenFilter(kept))
  handlers: list[logging.Handler] = [screen] + ([file_handler] if file_handler is not None else [])
  # Screen handlers installed before (logging.basicConfig, also the implicit one of a module-level
  # `logging.warning` while the root logger had none) would print tracebacks: set aside while the command runs.
  displaced = [h for h in root.handlers if type(h) is logging.StreamHandler]  # exactly: not file or test handlers
  for other in displaced:
    root.removeHandler(other)
  for handler in handlers:
    root.addHandler(handler)
  root.setLevel(level)

  def unraisable(info: Any) -> None:  # "Exception ignored in: <coroutine ...>" of a library's dropped future
    logging.getLogger(DETAILS).warning("%s: %r", info.err_msg or "Exception ignored in", info.object,
                                       exc_info=(info.exc_type, info.exc_value, info.exc_traceback))

  def excepthook(kind: Any, value: Any, tb: Any) -> None:  # what a library's callback thread prints via PyErr_Print
    logging.getLogger(DETAILS).warning("an exception in a library callback", exc_info=(kind, value, tb))

  previous_showwarning = warnings.showwarning

  # warnings.showwarning's signature (its first parameter shadows `message` in here only).
  def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A library's coroutine dropped unawaited (Orbax's reads, after a restore failed) goes to the log only."""
    if issubclass(category, RuntimeWarning) and _NEVER_AWAITED.match(str(message)):
      logging.getLogger(DETAILS).warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
      if not debug:
        return
    previous_showwarning(message, category, filename, lineno, file, line)

  previous_excepthook = sys.excepthook
  sys.unraisablehook = unraisable
  sys.excepthook = excepthook  # an uncaught error of the command leaves this block first: Python's hook prints it
  warnings.showwarning = showwarning
  try:
    yield Session(path, debug, file_handler)
  finally:
    gc.collect()  # dropped futures report their exceptions now, while these handlers still route them
    global _last_log_file  # noqa: PLW0603  (what the last session wrote, for run_quietly)
    if file_handler is not None and file_handler.stream is not None:
      _last_log_file = path
    sys.unraisablehook = _drop if _quiet_process else previous_hook
    sys.excepthook = previous_excepthook
    warnings.showwarning = previous_showwarning
    for handler in handlers:
      root.removeHandler(handler)
      handler.close()
    for other in displaced:
      root.addHandler(other)
    root.setLevel(previous_level)


def run_quietly(main: Callable[[], int]) -> NoReturn:
  """Runs an entry point's `main()` as its `__main__` and exits with its code. A library's abandoned threads and
  coroutines keep reporting after the command has said everything ("Exception ignored", "Event loop is
  closed"), also while the interpreter shuts down: in this process they are dropped once a session has ended,
  and what is printed at shutdown goes to the last session's log file (or nowhere). An error `main` does not
  handle is raised as usual, with its traceback."""
  global _quiet_process  # noqa: PLW0603  (this process is a command line: sessions leave a silent hook behind)
  _quiet_process = True
  try:
    code = main()
  except BaseException:
    sys.unraisablehook = sys.__unraisablehook__
    raise
  sys.stdout.flush()
  sys.stderr.flush()
  with contextlib.suppress(OSError):
    target = os.open(_last_log_file or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, sys.stderr.fileno())
  sys.exit(code)
