"""What the entry points print: one-line errors and warnings on the screen, library tracebacks in the log file."""

import logging
import sys

import pytest

from optiml_jax import cli_logging
from optiml_jax import train as train_entry


def _boom() -> ValueError:
  try:
    raise ValueError("OUT_OF_RANGE: deep inside a library\n" + "spec line\n" * 50)
  except ValueError as e:
    return e


def test_library_tracebacks_go_to_the_log_file_and_ours_stay_on_the_screen(tmp_path, capsys):
  log_file = tmp_path / "logs" / "train.log"
  hook = sys.unraisablehook
  with cli_logging.session("train", str(log_file)) as log:
    assert not log.log_written() and not log_file.exists()  # created on its first record only
    logging.getLogger("optiml_jax.trainer").info("resumed from step 20")
    logging.getLogger("absl").error("Checkpointer failed", exc_info=_boom())
    logging.getLogger("asyncio").error("Future exception was never retrieved", exc_info=_boom())
    logging.getLogger("absl").warning("a library warning\nwith a second line")
    logging.getLogger("absl").info("Renaming the tmp folder")  # a library's INFO: neither screen nor file
    sys.unraisablehook(
        type(
            "Unraisable", (), {
                "err_msg": "Exception ignored in",
                "object": "coroutine",
                "exc_type": ValueError,
                "exc_value": _boom(),
                "exc_traceback": None
            })())
    log.report(RuntimeError("step 30: the checkpoint could not be written to /run/30: disk full"))
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert "INFO resumed from step 20" in lines and "WARNING a library warning" in lines
  assert lines[-1] == (f"error: step 30: the checkpoint could not be written to /run/30: disk full "
                       f"(details: {log_file})")
  for noise in ("Traceback", "Checkpointer failed", "Future exception", "spec line", "Renaming", "second line"):
    assert noise not in err, err
  text = log_file.read_text()
  assert text.count("Traceback") >= 2 and "Future exception was never retrieved" in text and "Renaming" not in text
  assert "resumed from step 20" in text and "Exception ignored in" in text
  assert sys.unraisablehook is hook
  # The session put the handlers back: a record now reaches neither the screen handler nor the file.
  logging.getLogger("absl").error("after the session", exc_info=_boom())
  assert "after the session" not in log_file.read_text()


def test_debug_shows_everything_on_the_screen(tmp_path, capsys):
  with cli_logging.session("eval", str(tmp_path / "x.log"), debug=True) as log:
    logging.getLogger("absl").error("Checkpointer failed", exc_info=_boom())
    log.report(_boom())
  err = capsys.readouterr().err
  assert "Checkpointer failed" in err and err.count("Traceback") == 2 and "(details:" not in err


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):

  def run(config):
    raise KeyError("a bug, not a storage fault")

  monkeypatch.setattr(train_entry, "run", run)
  with pytest.raises(KeyError, match="a bug"):
    train_entry.main([
        "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path}", "--gin.CATALOG_DIR=/c",
        f"--log_file={tmp_path / 'x.log'}"
    ])


def test_a_repeated_library_warning_is_shown_once_with_one_note_where_it_repeats(tmp_path, capsys):
  log_file = tmp_path / "train.log"
  message = "Using an uncached FunctionDataset for training is not recommended"
  with cli_logging.session("train", str(log_file)):
    for _ in range(500):  # seqio, once per Task a 500-task mixture opens
      logging.getLogger("absl").warning(message)
    logging.getLogger("absl").warning("another warning")
    logging.getLogger("optiml_jax.trainer").info("step 1")
    logging.getLogger("optiml_jax.trainer").info("step 1")  # ours are never folded
  lines = capsys.readouterr().err.splitlines()
  assert lines.count(f"WARNING {message}") == 1 and "WARNING another warning" in lines
  assert lines.count("INFO step 1") == 2
  note = f"(a library warning repeated word for word is shown once; all are in {log_file})"
  assert lines.count(note) == 1 and lines.index(note) == lines.index(f"WARNING {message}") + 1
  assert lines[-1] == "INFO step 1"  # nothing after the command's own last line (an error line stays last)
  assert log_file.read_text().count(message) == 500


def test_an_error_line_drops_the_note_gin_appends_to_errors_of_a_configurable(tmp_path, capsys):
  import gin  # pylint: disable=g-import-not-at-top

  @gin.configurable("cli_logging_test_fn")
  def fails():
    raise ValueError("CATALOG_DIR: /c/catalog.json: not a catalog's JSON")

  try:
    fails()
  except ValueError as e:
    error = e
  assert "In call to configurable 'cli_logging_test_fn'" in str(error)  # what gin makes of it
  assert cli_logging.message(error) == "CATALOG_DIR: /c/catalog.json: not a catalog's JSON"
  with cli_logging.session("eval", str(tmp_path / "x.log")) as log:
    log.report(error)
  assert capsys.readouterr().err == "error: CATALOG_DIR: /c/catalog.json: not a catalog's JSON\n"


async def _orbax_like_read():
  """Stands in for a library's coroutine (Orbax's `_read_array_index_and_device_put`)."""


def test_a_library_coroutine_dropped_unawaited_warns_in_the_log_file_not_on_the_screen(tmp_path, capsys, monkeypatch):
  import gc  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top

  def to_stderr(message, category, filename, lineno, file=None, line=None):  # Python's own, outside pytest
    del file
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

  monkeypatch.setattr(warnings, "showwarning", to_stderr)
  log_file = tmp_path / "train.log"
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    with cli_logging.session("train", str(log_file)):
      reads = [_orbax_like_read(), _orbax_like_read()]  # a restore failed before they were awaited
      del reads
      gc.collect()
      warnings.warn("a library's own warning", UserWarning, stacklevel=1)  # other warnings are shown as before
  err = capsys.readouterr().err
  assert "never awaited" not in err and "a library's own warning" in err, err
  assert "RuntimeWarning: coroutine '_orbax_like_read' was never awaited" in log_file.read_text()
  assert warnings.showwarning is to_stderr  # put back when the session ended
