"""Packing in tf.data: the numpy packer (`packing_np.py`) as a seqio feature converter; TF twins of row fitting.

Where it sits: `registry.py` Tasks yield examples with int32 `inputs` = BPE(source) and `targets` =
BPE(" " + target) + [EOS]; the converter here turns them into the t5x/seqio decoder features the trainer consumes.
The row layout (worked examples: BOS, target-only loss, segments, positions, padding, lengths, the cap on
segments per row) and the pure numpy packer (`pack_examples`, `Packer`, `first_fit`, `pad_examples`,
`count_segments`) live in `packing_np.py`, which imports neither TensorFlow nor seqio; their names are re-exported
here. `OptimlFeatureConverter` wraps that packer as a `seqio.FeatureConverter` so `seqio.get_dataset(...,
feature_converter=...)` and t5x configs can use it; the `*_tf` functions are the tf.data twins of `formatting`'s
row fitting (`registry.truncate`, `eval_tasks`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import seqio
import tensorflow as tf

from optiml_jax.data import formatting
from optiml_jax.data import packing_np

# The numpy packer and row layout, under the names this module has always offered.
OPT_BOS_ID = packing_np.OPT_BOS_ID
OPT_EOS_ID = packing_np.OPT_EOS_ID
MODEL_FEATURE_NAMES = packing_np.MODEL_FEATURE_NAMES
PACKING_FEATURE_NAMES = packing_np.PACKING_FEATURE_NAMES
TASK_FEATURES_NAMES = packing_np.TASK_FEATURES_NAMES
FEATURE_ORDER = packing_np.FEATURE_ORDER
example_features = packing_np.example_features
first_fit = packing_np.first_fit
row_length = packing_np.row_length
Packer = packing_np.Packer
pack_examples = packing_np.pack_examples
pad_examples = packing_np.pad_examples
count_segments = packing_np.count_segments
NO_BOS = -1  # how `bos_id=None` travels through tf.numpy_function (an int argument)
NO_SEGMENT_CAP = 0  # how `max_segments_per_row=None` (no cap) travels through tf.numpy_function


def _pack_window(rows: np.ndarray, meta: np.ndarray, inputs: np.ndarray, inputs_length: np.ndarray, targets: np.ndarray,
                 targets_length: np.ndarray, flush: np.ndarray, bos_id: np.ndarray,
                 max_segments: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One `scan` step of the converter: adds a padded window of examples to the packer state."""
  packer = Packer.from_state(rows, meta, None if int(bos_id) == NO_BOS else int(bos_id),
                             None if int(max_segments) == NO_SEGMENT_CAP else int(max_segments))
  done = []
  for i in range(inputs.shape[0]):
    done += packer.add(inputs[i, :inputs_length[i]], targets[i, :targets_length[i]])
  if flush:
    done += packer.flush()
  out = np.zeros((len(done), len(FEATURE_ORDER), packer.length), np.int32)
  for j, row in enumerate(done):
    out[j] = np.stack([row[name] for name in FEATURE_ORDER])
  new_rows, new_meta = packer.state()
  return new_rows, new_meta, out


def fit_to_row_tf(ex: Mapping[str, tf.Tensor], length: int, eos_id: int, with_bos: bool = True) -> dict[str, tf.Tensor]:
  """TF twin of `formatting.fit_to_row` on an example's "inputs" / "targets" (other keys kept)."""
  budget = formatting.row_token_budget(length, with_bos)
  ex = dict(ex)
  inputs, targets = ex["inputs"], ex["targets"]
  too_long = tf.size(targets) > budget
  ex["targets"] = tf.cond(
      too_long, lambda: tf.concat([targets[:budget - 1], tf.constant([eos_id], targets.dtype)], 0), lambda: targets)
  keep = budget - tf.size(ex["targets"])  # 0 when the target alone filled the row
  ex["inputs"] = inputs[tf.maximum(tf.size(inputs) - keep, 0):]
  return ex


def row_examples_tf(ex: Mapping[str, tf.Tensor], length: int, eos_id: int, with_bos: bool = True) -> tf.data.Dataset:
  """TF twin of `formatting.row_examples`, for `Dataset.flat_map`: pre-training text (empty "inputs") as one
  example per row-sized chunk of its "targets", any other example fitted to the row (other keys repeated)."""
  budget = formatting.row_token_budget(length, with_bos)
  overlap = budget - length
  fitted = fit_to_row_tf(ex, length, eos_id, with_bos)
  # Text keeps all of its tokens for the chunks; a fitted target is at most `budget` long, so one chunk.
  targets = tf.cond(tf.size(ex["inputs"]) > 0, lambda: fitted["targets"], lambda: ex["targets"])
  starts = tf.range(0, tf.maximum(tf.size(targets) - overlap, 1), length)
  return tf.data.Dataset.from_tensor_slices(starts).map(lambda start: {
      **fitted, "targets": targets[start:start + budget]
  })


def truncate_tf(ex: Mapping[str, tf.Tensor], inputs_length: int | None, targets_length: int | None,
                eos_id: int) -> dict[str, tf.Tensor]:
  """TF twin of `formatting.truncate_tokens` (two budgets: decoding) on an example's "inputs" / "targets"
  (other keys kept)."""
  ex = dict(ex)
  if inputs_length is not None:
    ex["inputs"] = ex["inputs"][tf.maximum(tf.size(ex["inputs"]) - inputs_length, 0):]
  if targets_length is not None:
    if targets_length < 1:
      raise ValueError(f"targets length must be >= 1 to hold the EOS, got {targets_length}")
    t = ex["targets"]
    ex["targets"] = tf.cond(
        tf.size(t) > targets_length,
        lambda: tf.concat([t[:targets_length - 1], tf.constant([eos_id], t.dtype)], 0), lambda: t)
  return ex


def pad_example_tf(inputs: tf.Tensor, targets: tf.Tensor, length: int, bos_id: int | None) -> dict[str, tf.Tensor]:
  """TF twin of `pad_examples` for one example (the unpacked converter)."""
  prefix = tf.constant([] if bos_id is None else [bos_id], tf.int32)
  tokens = tf.concat([prefix, inputs, targets], 0)
  n = tf.size(tokens) - 1
  first_target = tf.size(prefix) + tf.size(inputs) - 1  # the position that predicts the first target token
  weights = tf.cast(tf.range(n) >= first_target, tf.int32)
  with tf.control_dependencies(
      [tf.debugging.assert_less_equal(n, length, message=f"an example does not fit in {length} positions")]):
    pad = [[0, length - n]]
  out = {
      "decoder_input_tokens": tf.pad(tokens[:-1], pad),
      "decoder_target_tokens": tf.pad(tokens[1:], pad),
      "decoder_loss_weights": tf.pad(weights, pad),
  }
  return {k: tf.ensure_shape(v, [length]) for k, v in out.items()}


class OptimlFeatureConverter(seqio.FeatureConverter):
  """seqio FeatureConverter for OPT-IML: decoder rows ([BOS] + inputs + targets), target-only loss, packing.

  Task features: "inputs" and "targets" (int32, rank 1; `lm` tasks have empty inputs). Model features:
  decoder_input_tokens, decoder_target_tokens, decoder_loss_weights, plus decoder_segment_ids and
  decoder_positions when packing. Row length L = task_feature_lengths["inputs"] + ["targets"]; an example
  must fit L as a whole, its inputs may be longer than "inputs" (see the module docstring). With
  `apply_length_check`, an example that does not fit is an error (the Task should have fitted it); without,
  the converter fits it (`fit_to_row_tf`: prompt cut from the left).

  Packing is `pack_examples` itself, run inside the tf.data graph: examples are gathered in windows of
  `window_size`, and `tf.data.Dataset.scan` carries the packer's open rows from one window to the next (a
  `tf.numpy_function` per window), so the rows equal `pack_examples` over the whole stream and the pipeline
  stays a single tf.data graph (no Python generator reading another dataset).

  Args:
    pack: pack whole examples (training) or one example per row (evaluation).
    bos_id: the token fed before each example (OPT: 2), None when the tokenizer adds none (SmolLM2, Qwen2);
      `for_vocabulary` reads it from a vocabulary.
    max_open_rows, window_size: the packer's open rows, and examples per `scan` step.
    max_segments_per_row: at most this many examples per packed row (`pack_examples`' `max_segments`: a row
      is emitted once it holds them), the static bound a packed-layout attention kernel needs; None: no cap.
    apply_length_check: seqio's check of the task features against their lengths.
    eos_id: the token that ends every target, kept when the converter cuts a target to the row (OPT: 2).
  """

  TASK_FEATURES: ClassVar[dict[str, seqio.FeatureConverter.FeatureSpec]] = {
      "inputs": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  # Not a ClassVar: the t5x adapter's unpacked converter (interop/t5x_model.py) sets its own per instance.
  MODEL_FEATURES: Mapping[str, seqio.FeatureConverter.FeatureSpec] = {
      name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for name in MODEL_FEATURE_NAMES
  }
  PACKING_FEATURE_DTYPES: ClassVar[dict[str, tf.DType]] = {name: tf.int32 for name in PACKING_FEATURE_NAMES}

  def __init__(self, pack: bool = True, bos_id: int | None = OPT_BOS_ID, max_open_rows: int = 8, window_size: int = 256,
               apply_length_check: bool = True, eos_id: int = OPT_EOS_ID, max_segments_per_row: int | None = None):
    if max_open_rows < 1 or window_size < 1:
      raise ValueError(f"max_open_rows and window_size must be >= 1, got {max_open_rows}, {window_size}")
    if bos_id is not None and bos_id < 0:
      raise ValueError(f"bos_id must be a token id >= 0 or None (no BOS), got {bos_id}")
    self._max_segments = packing_np.check_max_segments(max_segments_per_row, "max_segments_per_row")
    self._max_open_rows = max_open_rows
    self._window_size = window_size
    self._eos_id = eos_id
    self._bos = bos_id
    super().__init__(pack=pack, use_custom_packing_ops=False, apply_length_check=apply_length_check,
                     bos_id=NO_BOS if bos_id is None else bos_id)

  @classmethod
  def for_vocabulary(cls, vocabulary: seqio.Vocabulary, **kwargs: Any) -> OptimlFeatureConverter:
    """The converter that follows a vocabulary's BOS policy and EOS (`vocab.HFVocabulary`: `bos_id` is the BOS
    the tokenizer adds, or None); other arguments as the constructor's."""
    return cls(bos_id=vocabulary.bos_id, eos_id=vocabulary.eos_id, **kwargs)

  @property
  def bos_id(self) -> int | None:  # seqio's is an int; None here means no BOS
    """The token fed before each example, or None."""
    return self._bos

  @property
  def eos_id(self) -> int:
    """The token that ends every target."""
    return self._eos_id

  @property
  def max_segments_per_row(self) -> int | None:
    """The most examples a packed row holds, or None (no cap)."""
    return self._max_segments

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    """Every model feature has length inputs + targets (a row without a BOS has one position to spare)."""
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    names = MODEL_FEATURE_NAMES + (PACKING_FEATURE_NAMES if self.pack else ())
    return {name: length for name in names}

  def _validate_dataset(self, ds: tf.data.Dataset, expected_features: Mapping[str, seqio.FeatureConverter.FeatureSpec],
                        expected_lengths: Mapping[str, int], strict: bool, error_label: str) -> tf.data.Dataset:
    """seqio's checks, but the input check is on the whole example: inputs + targets fit a row of L positions
    (each feature alone may be longer than its task feature length)."""
    if error_label != "input_validation" or not set(TASK_FEATURES_NAMES) <= set(expected_lengths):
      return super()._validate_dataset(ds, expected_features, expected_lengths, strict, error_label)
    length = sum(expected_lengths[name] for name in TASK_FEATURES_NAMES)
    budget = formatting.row_token_budget(length, self.bos_id is not None)
    joint = {**expected_lengths, **{name: budget for name in TASK_FEATURES_NAMES}}
    ds = super()._validate_dataset(ds, expected_features, joint, strict, error_label)
    if not self._apply_length_check:
      return ds
    message = (f"an example has more tokens (inputs + targets) than a row of {length} positions holds ({budget}); "
               "fit it first (registry.truncate, formatting.fit_to_row)")

    def check(ex):
      with tf.control_dependencies(
          [tf.debugging.assert_less_equal(tf.size(ex["inputs"]) + tf.size(ex["targets"]), budget, message=message)]):
        return {**ex, "inputs": tf.identity(ex["inputs"])}

    return ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    bos_id, eos_id = self.bos_id, self.eos_id
    ds = ds.map(
        lambda ex: fit_to_row_tf({
            "inputs": ex["inputs"],
            "targets": ex["targets"]
        }, length, eos_id, bos_id is not None), num_parallel_calls=tf.data.AUTOTUNE)
    if not self.pack:
      return ds.map(lambda ex: pad_example_tf(ex["inputs"], ex["targets"], length, bos_id),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return self._pack_rows(ds, length)

  def _pack_rows(self, ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    k, features = self._max_open_rows, len(FEATURE_ORDER)
    ds = ds.map(lambda ex: {**ex, "inputs_length": tf.size(ex["inputs"]), "targets_length": tf.size(ex["targets"])})
    windows = ds.padded_batch(self._window_size).map(lambda w: (w, False))
    last = {
        "inputs": tf.zeros([0, 0], tf.int32),
        "targets": tf.zeros([0, 0], tf.int32),
        "inputs_length": tf.zeros([0], tf.int32),
        "targets_length": tf.zeros([0], tf.int32)
    }
    windows = windows.concatenate(tf.data.Dataset.from_tensors((last, True)))  # flushes a finite stream
    bos_id = NO_BOS if self.bos_id is None else self.bos_id
    max_segments = NO_SEGMENT_CAP if self._max_segments is None else self._max_segments

    def step(state, element):
      window, flush = element
      rows, meta, out = tf.numpy_function(_pack_window, [
          state[0], state[1], window["inputs"], window["inputs_length"], window["targets"], window["targets_length"],
          flush, bos_id, max_segments
      ], [tf.int32, tf.int32, tf.int32], stateful=False)
      rows = tf.ensure_shape(rows, [k, features, length])
      meta = tf.ensure_shape(meta, [k, 3])
      out = tf.ensure_shape(out, [None, features, length])
      return (rows, meta), out

    initial = (tf.zeros([k, features, length], tf.int32), tf.zeros([k, 3], tf.int32))
    rows = windows.scan(initial, step).unbatch()
    return rows.map(lambda r: {name: r[i] for i, name in enumerate(FEATURE_ORDER)}, num_parallel_calls=tf.data.AUTOTUNE)
