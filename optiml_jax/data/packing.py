"""Packing: tokenized (inputs, targets) examples -> fixed-length decoder rows with target-only loss.

Where it sits: `registry.py` Tasks yield examples with int32 `inputs` = BPE(source) and `targets` =
BPE(" " + target) + [EOS]; this module turns them into the t5x/seqio decoder features the trainer consumes.
The core is a pure numpy packer (`pack_examples`); `OptimlFeatureConverter` wraps it as a
`seqio.FeatureConverter` so `seqio.get_dataset(..., feature_converter=...)` and t5x configs can use it.

One example becomes the token sequence [BOS] + inputs + targets; the model reads all but the last token and
predicts all but the first. In OPT, BOS and EOS are both `</s>` = 2:

  inputs = [7, 8], targets = [3, 2]     ->  decoder_input_tokens  [2, 7, 8, 3]
                                            decoder_target_tokens [7, 8, 3, 2]
                                            decoder_loss_weights  [0, 0, 1, 1]   (target and its </s> only)

Whole examples are packed greedily (first fit over a few open rows), never split across rows; each keeps its
own segment id and positions restart at 0, so with a block-diagonal causal mask no example sees another.
Packing the example above with an `lm` example (inputs = [], targets = [5, 6, 2]: loss on every token)
into length 8 gives

  decoder_input_tokens  [2, 7, 8, 3, 2, 5, 6, 0]
  decoder_target_tokens [7, 8, 3, 2, 5, 6, 2, 0]
  decoder_loss_weights  [0, 0, 1, 1, 1, 1, 1, 0]
  decoder_segment_ids   [1, 1, 1, 1, 2, 2, 2, 0]
  decoder_positions     [0, 1, 2, 3, 0, 1, 2, 0]

The BOS is the tokenizer's own, and only when it adds one (`vocab.HFVocabulary.bos_id`; Llama 3:
`<|begin_of_text|>`). `bos_id=None` (SmolLM2, Qwen2: no BOS) makes the sequence inputs + targets: the first input
token is read first and never predicted, and an example takes one position less. With the first example above
(EOS 2 for the illustration):

  inputs = [7, 8], targets = [3, 2], bos_id None  ->  decoder_input_tokens  [7, 8, 3]
                                                      decoder_target_tokens [8, 3, 2]
                                                      decoder_loss_weights  [0, 1, 1]

An `lm` example then cannot predict its first token (nothing precedes it), and an example of a single token has
nothing to predict at all: the packer drops it (its row would carry no loss).

Padding is 0 everywhere (seqio's convention) with loss weight 0 and segment id 0. Id 0 may be a real token
(Llama 3's "!"; OPT's <s> = 0 never occurs in BPE output), so padding is told by segment ids, loss weights or
lengths, never by `token == 0`. Without packing each row holds one example, padded, and only the first three
features are produced (seqio's contract).

Lengths: task feature lengths {"inputs": Li, "targets": Lt} (seqio's and t5x's TASK_FEATURE_LENGTHS) give rows
of L = Li + Lt positions, and only the sum counts: {"inputs": 1536, "targets": 512} and {"inputs": 2000,
"targets": 48} both mean OPT-IML's 2048. An example fits when its positions (above: len(inputs) + len(targets),
one less without a BOS) are at most L, whatever its inputs / targets split: the Task has already cut its prompt
from the left so that the whole target fits (`registry.truncate`, `formatting.fit_to_row`; `lm` text is split
into row-sized chunks there). The converter's own length check is that joint one, and it fits every example
again the same way (a no-op for the registry's Tasks), so a Task of someone else's reaches the packer fitted.
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from optiml_jax.data import formatting
from optiml_jax.data import special_tokens

OPT_BOS_ID = special_tokens.OPT_BOS_ID  # OPT's </s> (2): both BOS and EOS, from the shipped tokenizer.
OPT_EOS_ID = special_tokens.OPT_EOS_ID
NO_BOS = -1  # how `bos_id=None` travels through tf.numpy_function (an int argument)

MODEL_FEATURE_NAMES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
PACKING_FEATURE_NAMES = ("decoder_segment_ids", "decoder_positions")
TASK_FEATURES_NAMES = ("inputs", "targets")


def example_features(inputs: np.ndarray, targets: np.ndarray, bos_id: int | None = OPT_BOS_ID) -> dict[str, np.ndarray]:
  """Unpadded decoder features of one example: length len(inputs) + len(targets), one less without a BOS.

  Args:
    inputs, targets: the example's token ids (targets end with the EOS).
    bos_id: the token fed before the example (OPT: 2), or None when the tokenizer adds none.

  Raises:
    ValueError: `targets` is empty (every example ends with the EOS, so its target has at least one token).
  """
  inputs = np.asarray(inputs, dtype=np.int32).reshape(-1)
  targets = np.asarray(targets, dtype=np.int32).reshape(-1)
  if targets.size == 0:
    raise ValueError("example has empty 'targets'; expected at least the final EOS")
  prefix = np.asarray([] if bos_id is None else [bos_id], np.int32)
  tokens = np.concatenate([prefix, inputs, targets])
  n = tokens.size - 1
  weights = np.zeros(n, np.int32)
  weights[max(prefix.size + inputs.size - 1, 0):] = 1  # position t predicts tokens[t + 1]: a target token
  return {
      "decoder_input_tokens": tokens[:-1],
      "decoder_target_tokens": tokens[1:],
      "decoder_loss_weights": weights,
      "decoder_positions": np.arange(n, dtype=np.int32),
  }


FEATURE_ORDER = MODEL_FEATURE_NAMES + PACKING_FEATURE_NAMES  # the rows of a packed row's [5, length] array
_INDEX = {name: i for i, name in enumerate(FEATURE_ORDER)}


def first_fit(used: Sequence[int], positions: int, length: int, max_open_rows: int) -> tuple[int | None, bool]:
  """The packing rule on lengths alone: where an example of `positions` goes among open rows holding `used`.

  Returns (slot, evict_oldest): the index of the oldest row with room, or None for a new row, and whether the oldest
  open row must be emitted first to make room for that new one (`max_open_rows` are open). `Packer` places tokens
  with it; `cached_stream` plans global batches with it from lengths only.
  """
  slot = next((i for i, u in enumerate(used) if u + positions <= length), None)
  return slot, slot is None and len(used) == max_open_rows


class Packer:
  """The streaming state of `pack_examples`: its open rows, oldest first, as dense arrays.

  `add` places one example and returns the rows it completed; `flush` returns the open rows. The state can
  be exported to and rebuilt from plain arrays (`state` / `from_state`), which is how the feature converter
  carries it through `tf.data.Dataset.scan`.
  """

  def __init__(self, length: int, bos_id: int | None = OPT_BOS_ID, max_open_rows: int = 8):
    if length < 1:
      raise ValueError(f"packing: length must be >= 1, got {length}")
    if max_open_rows < 1:
      raise ValueError(f"packing: max_open_rows must be >= 1, got {max_open_rows}")
    self.length, self.bos_id, self.max_open_rows = length, bos_id, max_open_rows
    self._rows: list[np.ndarray] = []  # each [len(FEATURE_ORDER), length] int32
    self._used: list[int] = []
    self._segments: list[int] = []
    self._count = 0  # examples added so far (for error messages)

  def add(self, inputs: np.ndarray, targets: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Places one example (first fit); returns the rows this completed (0, 1 or 2).

    An example with nothing to predict (no BOS and a single token) is dropped.
    """
    features = _checked_features(inputs, targets, self.length, self.bos_id, self._count)
    self._count += 1
    n = features["decoder_target_tokens"].size
    if n == 0:
      return []
    done = []
    slot, evict = first_fit(self._used, n, self.length, self.max_open_rows)
    if evict:
      done.append(self._pop(0))
    if slot is None:
      self._rows.append(np.zeros((len(FEATURE_ORDER), self.length), np.int32))
      self._used.append(0)
      self._segments.append(0)
      slot = len(self._rows) - 1
    row, start = self._rows[slot], self._used[slot]
    self._segments[slot] += 1
    for name in MODEL_FEATURE_NAMES + ("decoder_positions",):
      row[_INDEX[name], start:start + n] = features[name]
    row[_INDEX["decoder_segment_ids"], start:start + n] = self._segments[slot]
    self._used[slot] += n
    if self._used[slot] == self.length:
      done.append(self._pop(slot))
    return done

  def flush(self) -> list[dict[str, np.ndarray]]:
    """Emits every open row, oldest first, and empties the state."""
    return [self._pop(0) for _ in range(len(self._rows))]

  def _pop(self, slot: int) -> dict[str, np.ndarray]:
    row = self._rows.pop(slot)
    self._used.pop(slot)
    self._segments.pop(slot)
    return {name: row[i] for i, name in enumerate(FEATURE_ORDER)}

  def state(self) -> tuple[np.ndarray, np.ndarray]:
    """(rows [max_open_rows, 5, length], meta [max_open_rows, 3] = (open, used, segments)) int32 arrays."""
    rows = np.zeros((self.max_open_rows, len(FEATURE_ORDER), self.length), np.int32)
    meta = np.zeros((self.max_open_rows, 3), np.int32)
    for i, row in enumerate(self._rows):
      rows[i] = row
      meta[i] = (1, self._used[i], self._segments[i])
    return rows, meta

  @classmethod
  def from_state(cls, rows: np.ndarray, meta: np.ndarray, bos_id: int | None = OPT_BOS_ID) -> Packer:
    """Rebuilds a packer from `state()` arrays."""
    packer = cls(rows.shape[2], bos_id, rows.shape[0])
    for i in range(rows.shape[0]):
      if meta[i, 0]:
        packer._rows.append(np.array(rows[i], np.int32))
        packer._used.append(int(meta[i, 1]))
        packer._segments.append(int(meta[i, 2]))
    return packer


def _checked_features(inputs: np.ndarray, targets: np.ndarray, length: int, bos_id: int | None,
                      index: int) -> dict[str, np.ndarray]:
  features = example_features(inputs, targets, bos_id)
  n = features["decoder_target_tokens"].size
  if n > length:
    raise ValueError(f"example {index} needs {n} positions (inputs {np.size(inputs)} + targets "
                     f"{np.size(targets)}) but rows hold {length}; fit it first (formatting.fit_to_row)")
  return features


def pack_examples(examples: Iterable[tuple[np.ndarray, np.ndarray]], length: int, bos_id: int | None = OPT_BOS_ID,
                  max_open_rows: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Packs whole (inputs, targets) examples greedily into rows of `length` positions.

  First fit: an example goes into the oldest open row with room for it; when none has room, a new row is
  opened, and if `max_open_rows` rows are already open the oldest is emitted first. A row is emitted as soon
  as it is exactly full, and the remaining open rows, oldest first, when the input ends. Deterministic: the
  same examples in the same order give the same rows.

  Args:
    examples: (inputs, targets) int arrays per example; targets end with the EOS.
    length: positions per row; an example takes len(inputs) + len(targets) (one less without a BOS).
    bos_id: the token fed before each example's first token (OPT: 2); None: none (the tokenizer adds none).
    max_open_rows: rows kept open for later, shorter examples (1 = next fit).

  Yields:
    dicts of int32 arrays of shape [length]: decoder_input_tokens, decoder_target_tokens,
    decoder_loss_weights, decoder_segment_ids (1, 2, ... per example, 0 = padding), decoder_positions.

  Raises:
    ValueError: an example does not fit in one row, or bad `length` / `max_open_rows`.
  """
  packer = Packer(length, bos_id, max_open_rows)
  for inputs, targets in examples:
    yield from packer.add(inputs, targets)
  yield from packer.flush()


def pad_examples(examples: Iterable[tuple[np.ndarray, np.ndarray]], length: int,
                 bos_id: int | None = OPT_BOS_ID) -> Iterator[dict[str, np.ndarray]]:
  """One example per row, padded to `length`: decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights only (seqio's unpacked contract); an example with nothing to predict gives an all-padding
  row. Raises ValueError if an example does not fit."""
  for index, (inputs, targets) in enumerate(examples):
    features = _checked_features(inputs, targets, length, bos_id, index)
    n = features["decoder_target_tokens"].size
    yield {name: np.pad(features[name], (0, length - n)) for name in MODEL_FEATURE_NAMES}


def _pack_window(rows: np.ndarray, meta: np.ndarray, inputs: np.ndarray, inputs_length: np.ndarray, targets: np.ndarray,
                 targets_length: np.ndarray, flush: np.ndarray,
                 bos_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One `scan` step of the converter: adds a padded window of examples to the packer state."""
  packer = Packer.from_state(rows, meta, None if int(bos_id) == NO_BOS else int(bos_id))
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


def row_length(sequence_length: Mapping[str, Any] | None) -> int | None:
  """Positions per row for seqio's `sequence_length`: "inputs" + "targets" (a missing or None one counts 0);
  None when neither is given (no truncation)."""
  lengths = [sequence_length.get(name) for name in TASK_FEATURES_NAMES] if sequence_length else []
  if all(n is None for n in lengths):
    return None
  return sum(int(n) for n in lengths if n is not None)


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
               apply_length_check: bool = True, eos_id: int = OPT_EOS_ID):
    if max_open_rows < 1 or window_size < 1:
      raise ValueError(f"max_open_rows and window_size must be >= 1, got {max_open_rows}, {window_size}")
    if bos_id is not None and bos_id < 0:
      raise ValueError(f"bos_id must be a token id >= 0 or None (no BOS), got {bos_id}")
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

    def step(state, element):
      window, flush = element
      rows, meta, out = tf.numpy_function(_pack_window, [
          state[0], state[1], window["inputs"], window["inputs_length"], window["targets"], window["targets_length"],
          flush, bos_id
      ], [tf.int32, tf.int32, tf.int32], stateful=False)
      rows = tf.ensure_shape(rows, [k, features, length])
      meta = tf.ensure_shape(meta, [k, 3])
      out = tf.ensure_shape(out, [None, features, length])
      return (rows, meta), out

    initial = (tf.zeros([k, features, length], tf.int32), tf.zeros([k, 3], tf.int32))
    rows = windows.scan(initial, step).unbatch()
    return rows.map(lambda r: {name: r[i] for i, name in enumerate(FEATURE_ORDER)}, num_parallel_calls=tf.data.AUTOTUNE)
