"""metrics.jsonl, TensorBoard events, MFU and the loss plot."""

import json
import os

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
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 3]
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


def test_writer_works_on_a_filesystem_that_cannot_append():
  # TensorFlow's in-memory filesystem stands in for a bucket (gs://): MODEL_DIR need not be local.
  model_dir = "ram://optiml_metrics_test/run"
  writer = metrics.MetricsWriter(model_dir, tensorboard=False)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 4.0 - step})
  writer.close()
  assert [r["step"] for r in metrics.read_metrics(writer.path)] == [1, 2, 3]
  writer = metrics.MetricsWriter(model_dir, resume_step=2, tensorboard=False)
  writer.write(3, {"loss": 0.5})
  writer.close()
  assert [(r["step"], r["loss"]) for r in metrics.read_metrics(writer.path)] == [(1, 3.0), (2, 2.0), (3, 0.5)]
  png = metrics.plot_loss_curve(writer.path, model_dir + "/loss.png")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(png, "rb") as f:
    assert f.read(4) == b"\x89PNG"
