"""metrics.jsonl, TensorBoard events, MFU and the loss plot."""

import contextlib
import json
import os
import sys
from unittest import mock

from etils import epath
import pytest

from optiml_jax.trainer import metrics


def test_writer_appends_jsonl_and_tensorboard_and_truncates_on_resume(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, {"loss": 4.0 - step, "learning_rate": 1e-4, "mfu": None})
  writer.close()
  records = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[0] == {"step": 1, "loss": 3.0, "learning_rate": 1e-4, "mfu": None}
  events = [f for _, _, fs in os.walk(tmp_path / "tensorboard") for f in fs if "tfevents" in f]
  assert events
  # Resuming from step 2 drops the lines a killed run logged after its checkpoint.
  writer = metrics.MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False)
  writer.write(3, {"loss": 0.5})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
  assert json.loads(lines[-1])["loss"] == 0.5


def test_mfu():
  assert metrics.model_flops_utilization(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
  assert metrics.model_flops_utilization(1000.0, 1e9, 2, None) is None


def test_plot_loss_curve(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step, "learning_rate": step * 1e-5})
  writer.close()
  png = metrics.plot_loss_curve(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_loss_is_a_clear_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="no logged loss"):
    metrics.plot_loss_curve(str(tmp_path / "metrics.jsonl"), str(tmp_path / "x.png"))


@contextlib.contextmanager
def _bucket_in(folder):
  """Serves gs://bucket/... from `folder` through etils.epath, refusing appends as object stores do."""
  local = epath.backend.os_backend

  def on_disk(fn):
    return lambda _, path, *args, **kwargs: fn(os.path.join(folder,
                                                            os.fspath(path).split("://", 1)[1]), *args, **kwargs)

  def open_no_append(_, path, mode="r", **kwargs):
    if "a" in mode:
      raise OSError(f"{path}: an object store cannot append")
    return local.open(os.path.join(folder, os.fspath(path).split("://", 1)[1]), mode, **kwargs)

  def replace(_, path, dst, **kwargs):
    del kwargs
    local.replace(os.path.join(folder,
                               os.fspath(path).split("://", 1)[1]),
                  os.path.join(folder,
                               os.fspath(dst).split("://", 1)[1]))

  # With TensorFlow installed, epath sends gs:// to tf.io.gfile whatever is mocked: make it pick the mock.
  with mock.patch.object(epath.gpath, "_is_tf_installed",
                         lambda: False), epath.testing.mock_epath(open=open_no_append, exists=on_disk(local.exists),
                                                                  makedirs=on_disk(local.makedirs),
                                                                  mkdir=on_disk(local.mkdir), replace=replace):
    yield


def test_writer_works_on_a_bucket_that_cannot_append(tmp_path):
  model_dir = "gs://bucket/run"
  with _bucket_in(str(tmp_path)):
    writer = metrics.MetricsWriter(model_dir, tensorboard=False)
    for step in (1, 2, 3):
      writer.write(step, {"loss": 4.0 - step})
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(writer.path)] == [1, 2, 3]
    writer = metrics.MetricsWriter(model_dir, resume_step=2, tensorboard=False)
    writer.write(3, {"loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(writer.path)] == [(1, 3.0), (2, 2.0), (3, 0.5)]
    metrics.plot_loss_curve(writer.path, model_dir + "/loss.png")
  assert (tmp_path / "bucket" / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
  assert sorted(os.listdir(tmp_path / "bucket" / "run")) == ["loss.png", "metrics.jsonl"]


def test_writer_without_tensorflow_still_writes_metrics(tmp_path, monkeypatch):
  # GPU images often have no TensorFlow: the run must go on, without TensorBoard events.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  writer = metrics.MetricsWriter(str(tmp_path), tensorboard=True)
  writer.write(1, {"loss": 2.0})
  writer.close()
  assert metrics.read_metrics(writer.path) == [{"step": 1, "loss": 2.0}]
  assert not (tmp_path / "tensorboard").exists()
