"""Tests for optiml_jax/tempfiles.py: staged outputs get the permissions a plain open() or mkdir() gives."""

import os
import stat

import pytest

from optiml_jax import tempfiles


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
  old = os.umask(request.param)
  yield request.param
  os.umask(old)


def test_umask_is_read_without_being_changed(umask):
  assert tempfiles.umask() == umask
  assert tempfiles.umask() == umask


def test_staged_files_and_folders_have_the_modes_of_open_and_mkdir(tmp_path, umask):
  fd, path = tempfiles.mkstemp(prefix=".x.tmp-", dir=tmp_path)
  os.close(fd)
  with open(tmp_path / "plain", "w", encoding="utf-8"):
    pass
  (tmp_path / "plain_dir").mkdir()
  folder = tempfiles.mkdtemp(prefix=".d.tmp-", dir=tmp_path)
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask
  assert stat.S_IMODE(os.stat(folder).st_mode) == stat.S_IMODE((tmp_path / "plain_dir").stat().st_mode)
  assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask


def test_a_file_in_the_way_is_the_nearest_existing_parent_that_is_not_a_folder(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  assert tempfiles.file_in_the_way(tmp_path / "notes.txt" / "a" / "b") == tmp_path / "notes.txt"
  assert tempfiles.file_in_the_way(tmp_path / "notes.txt") is None  # itself: the caller's rule
  assert tempfiles.file_in_the_way(tmp_path / "new" / "out") is None


def test_replace_dir_puts_the_staged_folder_in_place_of_the_old_one(tmp_path):
  out = tmp_path / "out"
  for content in ("old", "new"):
    staged = tempfiles.mkdtemp(prefix=".out.tmp-", dir=tmp_path)
    with open(os.path.join(staged, "f.txt"), "w", encoding="utf-8") as f:
      f.write(content)
    tempfiles.replace_dir(staged, out)
  assert (out / "f.txt").read_text(encoding="utf-8") == "new"
  assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the staged folder nor the old one is left
