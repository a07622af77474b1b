"""File helpers shared by the checkpoint writers and readers: JSON with named errors, atomic output folders.

Where it sits: under `optiml_jax.checkpoints.hf` and `optiml_jax.checkpoints.orbax_io`. Every writer stages
its output in a temporary sibling of the destination (`staged_dir`) and renames it into place only when
complete, so a failed or interrupted conversion leaves the destination as it was; the staging folder of one
killed outright (its name records the process) is removed by the next conversion into that destination
(`remove_stale_staging`). `check_out_dir` refuses a destination that cannot be replaced as asked (`OutDirError`, a
usage error: exit 2 on the command line), including one that is, or holds, what is being converted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import socket
from typing import Any, Iterator, Sequence
import uuid

from optiml_jax import tempfiles
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str
LOG = logging.getLogger(__name__)


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


def _owner() -> str:
  """8 hex digits naming this machine and process id namespace, so that a process id read back from a staging
  folder's name is only looked up where it means the same process (not for another host on a shared disk)."""
  identity = socket.gethostname()
  with contextlib.suppress(OSError):
    identity += os.readlink("/proc/self/ns/pid")  # containers sharing a host name have their own process ids
  return hashlib.sha256(identity.encode()).hexdigest()[:8]


def _staging_name(path: pathlib.Path, kind: str) -> str:
  """`.OUT.partial-<owner>-<pid>-<random>` (or `.old-`): the staging folder's owner, read back by `_stale`."""
  return f".{path.name}.{kind}-{_owner()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_is_gone(pid: int) -> bool:
  if pid == os.getpid():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except OSError:  # PermissionError: it exists, as another user's
    return False
  return False


def remove_stale_staging(path: Path) -> list[pathlib.Path]:
  """Removes what killed conversions into `path` left beside it; returns what was removed.

  A conversion killed outright (SIGKILL, out of memory) leaves its hidden staging folder `.OUT.partial-...`, as
  large as the output, and one killed while deleting the folder it replaced leaves `.OUT.old-...`. Removed here:
  only folders of this naming pattern for `path`, made on this machine (and process id namespace) by a process that
  no longer runs; an `.old-` folder only once `path` exists (before that it is the only copy). A live conversion's
  folder, another machine's and any other file are left alone.
  """
  path = pathlib.Path(path).absolute()
  pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}")
  removed: list[pathlib.Path] = []
  if not path.parent.is_dir():
    return removed
  owner = _owner()
  for candidate in path.parent.iterdir():
    match = pattern.fullmatch(candidate.name)
    if not match or match.group(2) != owner or not candidate.is_dir() or candidate.is_symlink():
      continue
    if match.group(1) == "old" and not path.exists():
      continue
    if _process_is_gone(int(match.group(3))):
      shutil.rmtree(candidate, ignore_errors=True)
      removed.append(candidate)
      LOG.info("%s: removed the staging folder %s of a conversion that did not finish", path, candidate.name)
  return removed


@contextlib.contextmanager
def staged_dir(path: Path, overwrite: bool = False, sources: Sequence[Path] = ()) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary sibling of `path`, renamed to `path` when the block completes.

  `path` is checked first (`check_out_dir`, with `overwrite` and `sources`), and the staging folders that killed
  conversions into `path` left are removed (`remove_stale_staging`). On any failure the temporary folder (and any
  parent folder made for it) is removed and `path` is untouched.
  """
  path = pathlib.Path(path).absolute()
  check_out_dir(path, overwrite, sources)
  remove_stale_staging(path)
  made = [p for p in reversed(path.parents) if not p.exists()]
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / _staging_name(path, "partial")
  tmp.mkdir()
  try:
    yield tmp
    if path.exists():
      old = path.parent / _staging_name(path, "old")
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
