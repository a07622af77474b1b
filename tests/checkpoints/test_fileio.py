"""Tests of optiml_jax.checkpoints.fileio: staged output folders, and the cleanup after a conversion killed outright."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from optiml_jax.checkpoints import fileio

# A conversion killed with SIGKILL inside its staging folder, as the out-of-memory killer ends one.
_KILLED = """
import os, pathlib, signal, sys
from optiml_jax.checkpoints import fileio
with fileio.staged_dir(sys.argv[1]) as tmp:
  (tmp / "model.safetensors").write_bytes(b"x" * 4096)
  os.kill(os.getpid(), signal.SIGKILL)
"""


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _dead_pid() -> int:
  done = subprocess.Popen([sys.executable, "-c", "pass"])  # pylint: disable=consider-using-with
  done.wait()
  return done.pid


def test_the_next_conversion_into_out_removes_what_a_killed_one_left(tmp_path):
  out = tmp_path / "out"
  killed = _run(_KILLED, str(out))
  assert killed.returncode == -9, killed.stderr[-2000:]
  left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
  assert len(left) == 1 and (left[0] / "model.safetensors").is_file() and not out.exists()

  with fileio.staged_dir(out) as tmp:
    (tmp / "config.json").write_text("{}")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_only_stale_staging_folders_of_this_out_made_here_are_removed(tmp_path):
  """A live conversion's staging folder (a running process), another machine's (its process ids mean nothing here),
  another output's, and names of other patterns are left alone; an `.old-` folder (the previous OUT, renamed aside)
  only goes once OUT exists."""
  owner, dead = fileio._owner(), _dead_pid()  # pylint: disable=protected-access
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # pylint: disable=consider-using-with
  try:
    names = {
        "stale": f".out.partial-{owner}-{dead}-0123abcd",
        "live": f".out.partial-{owner}-{live.pid}-0123abcd",
        "ours": f".out.partial-{owner}-{os.getpid()}-0123abcd",
        "other_host": f".out.partial-{'0' * 8 if owner != '0' * 8 else '1' * 8}-{dead}-0123abcd",
        "other_out": f".out2.partial-{owner}-{dead}-0123abcd",
        "unknown_owner": ".out.partial-0123abcd",  # the naming before owners were recorded
        "stale_old": f".out.old-{owner}-{dead}-0123abcd",
    }
    for name in names.values():
      (tmp_path / name).mkdir()
      (tmp_path / name / "params").write_text("x")
    assert fileio.remove_stale_staging(tmp_path / "out") == [tmp_path / names["stale"]]
    assert (tmp_path / names["stale_old"]).is_dir()  # OUT does not exist: it may be the only copy
    (tmp_path / "out").mkdir()
    assert fileio.remove_stale_staging(tmp_path / "out") == [tmp_path / names["stale_old"]]
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == sorted(["out"] + [names[k] for k in ("live", "ours", "other_host", "other_out", "unknown_owner")])
  finally:
    live.kill()
    live.wait()


def test_staging_folders_record_their_process(tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "previous").write_text("x")
  renamed = []
  real_rename = pathlib.Path.rename

  def rename(self, target):
    renamed.append((self.name, pathlib.Path(target).name))
    return real_rename(self, target)

  monkeypatch.setattr(pathlib.Path, "rename", rename)
  prefix = f"{fileio._owner()}-{os.getpid()}-"  # pylint: disable=protected-access
  with fileio.staged_dir(out, overwrite=True) as tmp:
    assert tmp.name.startswith(f".out.partial-{prefix}"), tmp.name
    (tmp / "new").write_text("y")
  (old_from, old_to), (tmp_from, tmp_to) = renamed
  assert (old_from, tmp_from, tmp_to) == ("out", tmp.name, "out") and old_to.startswith(f".out.old-{prefix}")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and sorted(p.name for p in out.iterdir()) == ["new"]
