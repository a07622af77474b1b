"""The files of the run over two machines: the model wheel in parts, the archives, the bundle's description."""

import json
import tarfile

import pytest

from optiml_jax.reproduction import bundle


def test_the_model_wheel_travels_in_parts_that_are_checked_when_joined(tmp_path):
  wheel = tmp_path / "w.whl"
  wheel.write_bytes(bytes(range(256)) * 41)
  names = bundle.split_file(wheel, tmp_path / "parts", part_bytes=4000)
  assert names == [f"w.whl.part-{i}" for i in range(3)]
  parts = [tmp_path / "parts" / n for n in names]
  sha = bundle.file_sha256(wheel)
  assert bundle.join_parts(parts, tmp_path / "joined.whl", sha).read_bytes() == wheel.read_bytes()
  parts[1].write_bytes(parts[1].read_bytes()[:-1])
  with pytest.raises(bundle.BundleError, match="sha256 differs"):
    bundle.join_parts(parts, tmp_path / "again.whl", sha)
  parts[2].unlink()
  with pytest.raises(bundle.BundleError, match="missing part"):
    bundle.join_parts(parts, tmp_path / "again.whl", sha)


def test_archives_are_written_whole_and_a_damaged_one_is_named(tmp_path):
  (tmp_path / "answers").mkdir()
  (tmp_path / "answers" / "a.json").write_text("{}")
  archive = tmp_path / "results.tar.gz"
  bundle.tar(archive, {"base_answers": tmp_path / "answers", "absent": tmp_path / "nowhere"})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["answers", "results.tar.gz"]  # no temporary left
  with tarfile.open(archive) as f:
    assert sorted(f.getnames()) == ["base_answers", "base_answers/a.json"]  # a missing member is left out
  bundle.untar(archive, tmp_path / "out")
  assert (tmp_path / "out" / "base_answers" / "a.json").read_text() == "{}"
  archive.write_bytes(archive.read_bytes()[:20])  # cut short in transfer
  with pytest.raises(bundle.BundleError, match=r"results\.tar\.gz: unreadable .*copy it again"):
    bundle.untar(archive, tmp_path / "again")
  with pytest.raises(bundle.BundleError, match="not found"):
    bundle.untar(tmp_path / "missing.tar.gz", tmp_path / "again")


def test_a_bundle_of_another_format_or_none_is_refused_with_the_command_that_makes_one(tmp_path):
  with pytest.raises(bundle.BundleError, match="no bundle here .*--stage prepare"):
    bundle.read_bundle(tmp_path)
  (tmp_path / bundle.BUNDLE_FILE).write_text(json.dumps({"format_version": bundle.BUNDLE_VERSION + 1}))
  with pytest.raises(bundle.BundleError, match=f"this version reads {bundle.BUNDLE_VERSION}; prepare it again"):
    bundle.read_bundle(tmp_path)
  (tmp_path / bundle.BUNDLE_FILE).write_text(json.dumps({"format_version": bundle.BUNDLE_VERSION, "setting": "cpu"}))
  assert bundle.read_bundle(tmp_path)["setting"] == "cpu"
