"""Temporary files and folders that become outputs once renamed into place, with the usual permissions.

Where it sits: under every writer that stages an output beside its destination and renames it when complete
(the bench catalog, the cache's shards and manifest, recorded evaluation requests and answers). `tempfile`
creates its files and folders readable by their owner only (0600 and 0700), whatever the process's umask: an
output renamed from one would stay private, so a catalog or cache meant to be shared between hosts or accounts
could not be read by them. `mkstemp` and `mkdtemp` here are `tempfile`'s, then given the mode that `open()` and
`os.mkdir()` would have given under the current umask; `replace_dir` puts a complete staged folder in place of
its destination. Standard library only.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import threading

_UMASK_LOCK = threading.Lock()


def umask() -> int:
  """The process's umask, read without changing it where the system says it (Linux's /proc)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:  # Elsewhere the only way to read it is to set it (briefly) and put it back.
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def mkstemp(*, prefix: str, dir: str | os.PathLike) -> tuple[int, str]:  # pylint: disable=redefined-builtin
  """`tempfile.mkstemp(prefix=prefix, dir=dir)`, with the mode `open(path, "w")` would give (0666 less the umask)."""
  fd, path = tempfile.mkstemp(prefix=prefix, dir=dir)
  os.fchmod(fd, 0o666 & ~umask())
  return fd, path


def mkdtemp(*, prefix: str, dir: str | os.PathLike) -> str:  # pylint: disable=redefined-builtin
  """`tempfile.mkdtemp(prefix=prefix, dir=dir)`, with the mode `os.mkdir` would give (0777 less the umask)."""
  path = tempfile.mkdtemp(prefix=prefix, dir=dir)
  os.chmod(path, 0o777 & ~umask())
  return path


def replace_dir(staged: str | os.PathLike, out: str | os.PathLike) -> None:
  """Renames the complete folder `staged` to `out`, replacing an existing `out` as a whole.

  The old `out` is first renamed to a temporary sibling and removed only once `staged` is in place, so an
  interruption leaves either the old folder or the new one at `out` (and at worst the old one beside it).
  """
  out = pathlib.Path(out)
  backup = None
  if out.exists():
    backup = pathlib.Path(mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, backup / out.name)
  os.replace(staged, out)
  if backup is not None:
    shutil.rmtree(backup)


def file_in_the_way(path: str | os.PathLike) -> pathlib.Path | None:
  """The nearest existing one of `path`'s parents when it is a file rather than a folder (so that no folder can be
  made at `path`), else None. `path` itself may be anything: whether it may be replaced is the caller's rule."""
  for parent in pathlib.Path(path).absolute().parents:
    if parent.exists():
      return None if parent.is_dir() else parent
  return None
