"""File helpers shared by the checkpoint writers and readers: JSON with named errors, atomic output folders.

Where it sits: under `optiml_jax.checkpoints.hf` and `optiml_jax.checkpoints.orbax_io`. Every writer stages
its output in a temporary sibling of the destination (`staged_dir`) and renames it into place only when
complete, so a failed or interrupted conversion leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
from typing import Any, Iterator
import uuid

from optiml_jax.checkpoints import layout

Path = pathlib.Path | str


def read_json(path: pathlib.Path) -> Any:
  """The JSON value in `path`; ConversionError naming the file if it cannot be read or parsed."""
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise layout.ConversionError(f"{path}: cannot read JSON: {e}") from e


def check_out_dir(path: Path, overwrite: bool = False) -> None:
  """Raises ConversionError unless `path` is absent, an empty folder, or a folder to overwrite."""
  path = pathlib.Path(path)
  if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not overwrite)):
    raise layout.ConversionError(f"{path}: exists and is not an empty folder (pass overwrite=True / --overwrite)")


@contextlib.contextmanager
def staged_dir(path: Path, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary sibling of `path`, renamed to `path` when the block completes.

  On any failure the temporary folder (and any parent folder made for it) is removed and `path` is untouched.
  """
  path = pathlib.Path(path).absolute()
  check_out_dir(path, overwrite)
  made = [p for p in reversed(path.parents) if not p.exists()]
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    yield tmp
    if path.exists():
      old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
      path.rename(old)
      tmp.rename(path)
      shutil.rmtree(old)
    else:
      tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for parent in reversed(made):
      with contextlib.suppress(OSError):
        parent.rmdir()
    raise
