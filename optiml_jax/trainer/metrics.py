"""What the user sees of a training run: metrics.jsonl, TensorBoard events, MFU and a loss-curve PNG.

The loop hands each logged step's scalars to `MetricsWriter.write(step, scalars)`; at the end
`plot_loss_curve` reads `metrics.jsonl` back and draws the PNG. `model_flops_utilization` turns tokens/s into
MFU from the model's FLOPs per token and the accelerator's peak.

Files go through `etils.epath` (as Orbax's do), so MODEL_DIR may be local or a bucket (`gs://...`). Object
stores cannot append: there metrics.jsonl is rewritten whole at each logged step (it stays small: one line per
log). TensorFlow is imported only to write TensorBoard events; without it the run logs that and goes on, so the
training step itself (and `tools/benchmarks/train.py`) needs no TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from typing import Mapping

from etils import epath
import jax

# Dense bf16 peak FLOP/s per chip, by `device_kind` prefix (vendor figures). CPU has no meaningful peak.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak, or None when unknown (CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if kind.startswith(prefix):
      return flops
  return None


def model_flops_utilization(tokens_per_second: float, flops_per_token: float, num_devices: int,
                            peak_per_device: float | None) -> float | None:
  """Model FLOPs per second over the devices' total peak (None when the peak is unknown)."""
  if not peak_per_device:
    return None
  return tokens_per_second * flops_per_token / (num_devices * peak_per_device)


class MetricsWriter:
  """Appends one JSON object per logged step to `<model_dir>/metrics.jsonl` and mirrors it to TensorBoard.

  Only process 0 writes. Lines are flushed as written, so a killed run keeps what it logged; on resume,
  lines for steps after the restored step are dropped so the file reads as one run.
  """

  def __init__(self, model_dir: str, *, resume_step: int = 0, tensorboard: bool = True):
    self.path = os.path.join(model_dir, "metrics.jsonl")
    self._active = jax.process_index() == 0
    self._tb = None
    self._file = None
    if not self._active:
      return
    epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
    self._records = _truncate_after(self.path, resume_step)
    if not _is_remote(self.path):
      # Open for the writer's lifetime; close() closes it.
      self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
    if tensorboard:
      self._tb = _tensorboard_writer(os.path.join(model_dir, "tensorboard", "train"))

  def write(self, step: int, scalars: Mapping[str, float | None]) -> None:
    if not self._active:
      return
    record: dict[str, float | None] = {"step": int(step)}
    record.update({k: (None if v is None else float(v)) for k, v in scalars.items()})
    if self._file is not None:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    else:
      self._records.append(record)
      _write_records(self.path, self._records)
    if self._tb is not None:
      tf = self._tb.tf
      with self._tb.writer.as_default(step=int(step)):
        for key, value in scalars.items():
          if value is not None and math.isfinite(float(value)):
            tf.summary.scalar(key, float(value))
      self._tb.writer.flush()

  def close(self) -> None:
    if self._active:
      if self._file is not None:
        self._file.close()
      if self._tb is not None:
        self._tb.writer.close()


class _TensorBoard:
  """A `tf.summary` file writer and the TensorFlow module that made it."""

  def __init__(self, tf, logdir: str):
    self.tf = tf
    self.writer = tf.summary.create_file_writer(logdir)


def _tensorboard_writer(logdir: str) -> _TensorBoard | None:
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("TensorFlow is not installed: no TensorBoard events in %s (metrics.jsonl is written)", logdir)
    return None
  return _TensorBoard(tf, logdir)


def _is_remote(path: str) -> bool:
  return "://" in path


def _write_records(path: str, records: list[dict]) -> None:
  """Replaces `path` with `records`, one JSON line each (written beside it, then renamed)."""
  tmp = epath.Path(path + ".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  tmp.replace(path)


def read_metrics(path: str) -> list[dict]:
  text = epath.Path(path).read_text(encoding="utf-8")
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _truncate_after(path: str, step: int) -> list[dict]:
  """Drops the lines logged after `step` (by a run killed after its last checkpoint); returns the rest."""
  if not epath.Path(path).exists():
    return []
  kept = [r for r in read_metrics(path) if r["step"] <= step]
  _write_records(path, kept)
  return kept


def plot_loss_curve(metrics_path: str, out_png: str, title: str = "training loss") -> str:
  """Draws loss (and learning rate on a second axis) against step from metrics.jsonl into `out_png`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  records = [r for r in read_metrics(metrics_path) if r.get("loss") is not None]
  if not records:
    raise ValueError(f"{metrics_path}: no logged loss to plot")
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="tab:blue", label="loss")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (per target token)")
  if any(r.get("learning_rate") is not None for r in records):
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in records], [r.get("learning_rate") or 0.0 for r in records], color="tab:orange",
             alpha=0.6, label="learning rate")
    ax2.set_ylabel("learning rate")
  ax.set_title(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  epath.Path(out_png).write_bytes(buffer.getvalue())
  return out_png
