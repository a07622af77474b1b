"""File helpers shared by the checkpoint writers and readers: JSON with named errors, atomic output folders.

Where it sits: under `optiml_jax.checkpoints.hf` and `optiml_jax.checkpoints.orbax_io`. Every writer stages
its output in a temporary sibling of the destination (`staged_dir`) and renames it into place only when
complete, so a failed or interrupted conversion leaves the destination as it was. `check_out_dir` refuses a
destination that cannot be replaced as asked (`OutDirError`, a usage error: exit 2 on the command line), including
one that is, or holds, what is being converted.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
from typing import Any, Iterator, Sequence
import uuid

from optiml_jax import tempfiles
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str


class OutDirError(layout.ConversionError):
  """The output folder cannot be written as asked: a file, a non-empty folder without overwrite, or a folder that is
  or holds the source being converted. The message names the folder and what to do."""


def read_json(path: pathlib.Path) -> Any:
  """The JSON value in `path`; ConversionError naming the file if it cannot be read or parsed."""
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise layout.ConversionError(f"{path}: cannot read JSON: {e}") from e


def check_out_dir(path: Path, overwrite: bool = False, sources: Sequence[Path] = ()) -> None:
  """Raises OutDirError unless `path` is absent, an empty folder, or a folder to overwrite.

  Args:
    path: the output folder, replaced as a whole when complete.
    overwrite: whether a non-empty folder may be replaced.
    sources: what the conversion reads (a folder or file): an output folder that is one of them, or holds one, is
      refused with or without `overwrite`, since replacing it would delete the source.
  """
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise OutDirError(f"{path}: exists and is not a folder; name a new or empty folder")
  blocking = tempfiles.file_in_the_way(path)
  if blocking is not None:
    raise OutDirError(f"{path}: {blocking} is a file, not a folder")
  resolved = path.resolve()
  for source in sources:
    source_path = pathlib.Path(source).resolve()
    if resolved == source_path or resolved in source_path.parents:
      what = "is" if resolved == source_path else "holds"
      raise OutDirError(f"{path}: {what} the source {source}, which replacing it would delete; name another output "
                        "folder")
  if path.exists() and any(path.iterdir()) and not overwrite:
    raise OutDirError(f"{path}: exists and is not an empty folder (pass overwrite=True / --overwrite)")


@contextlib.contextmanager
def staged_dir(path: Path, overwrite: bool = False, sources: Sequence[Path] = ()) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary sibling of `path`, renamed to `path` when the block completes.

  `path` is checked first (`check_out_dir`, with `overwrite` and `sources`). On any failure the temporary folder
  (and any parent folder made for it) is removed and `path` is untouched.
  """
  path = pathlib.Path(path).absolute()
  check_out_dir(path, overwrite, sources)
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
