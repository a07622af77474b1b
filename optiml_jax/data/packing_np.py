"""The numpy packer: tokenized (inputs, targets) examples -> fixed-length decoder rows with target-only loss.

Where it sits: after the Tasks (`registry.py`: int32 `inputs` = BPE(source), `targets` = BPE(" " + target) +
[EOS]) and before the trainer, which consumes the t5x/seqio decoder features made here. `packing.py` runs this
packer inside tf.data as a `seqio.FeatureConverter`; `cached_stream.py` plans rows with `first_fit` and builds
them with `Packer` straight from the bench cache. numpy only (no TensorFlow, no seqio: a test imports it in a
fresh interpreter), so training from the cache runs on images without either.

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

A cap on segments per row (`max_segments`, M): a row is emitted as soon as it holds M examples, even with room
left, so no row ever holds more than M segments. An attention kernel that takes each packed row as a static
list of at most M segments (cuDNN's packed "THD" layout) needs that bound; it costs fill only where short
examples would have packed more than M to a row. `count_segments` counts the segments of rows already built
(what the trainer checks a batch with). None (the default) is no cap.

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

from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from optiml_jax.data import special_tokens

OPT_BOS_ID = special_tokens.OPT_BOS_ID  # OPT's </s> (2): both BOS and EOS, from the shipped tokenizer.
OPT_EOS_ID = special_tokens.OPT_EOS_ID

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


def check_max_segments(value: Any, name: str = "max_segments") -> int | None:
  """`value` as a cap on segments per row: an int >= 1, or None (no cap).

  Raises:
    ValueError: naming `name` (the argument as its caller calls it) and what was expected.
  """
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"packing: {name} must be an integer >= 1 or None (no cap), got {value!r}")
  return int(value)


def count_segments(segment_ids: np.ndarray) -> np.ndarray:
  """Segments (packed examples) per row: the maximal runs of equal nonzero ids along the last axis.

  0 is padding, not a segment; a row of padding only counts 0. For [batch, length] ids the result is [batch]
  (int64), e.g. [[1, 1, 2, 2, 0], [1, 2, 3, 0, 0], [0, 0, 0, 0, 0]] -> [2, 3, 0]. Pure numpy: the trainer checks
  a batch against the attention kernel's static bound on segments per row with it.

  Raises:
    ValueError: `segment_ids` is a scalar.
  """
  ids = np.asarray(segment_ids)
  if ids.ndim < 1:
    raise ValueError(f"count_segments: expected segment ids of shape [..., length], got a scalar {ids!r}")
  starts = ids != 0
  starts[..., 1:] &= ids[..., 1:] != ids[..., :-1]
  return np.asarray(np.sum(starts, axis=-1, dtype=np.int64))


class Packer:
  """The streaming state of `pack_examples`: its open rows, oldest first, as dense arrays.

  `add` places one example and returns the rows it completed; `flush` returns the open rows. The state can
  be exported to and rebuilt from plain arrays (`state` / `from_state`), which is how the feature converter
  carries it through `tf.data.Dataset.scan`. With `max_segments`, a row is completed when it holds that many
  examples, so an open row always holds fewer.
  """

  def __init__(self, length: int, bos_id: int | None = OPT_BOS_ID, max_open_rows: int = 8,
               max_segments: int | None = None):
    if length < 1:
      raise ValueError(f"packing: length must be >= 1, got {length}")
    if max_open_rows < 1:
      raise ValueError(f"packing: max_open_rows must be >= 1, got {max_open_rows}")
    self.length, self.bos_id, self.max_open_rows = length, bos_id, max_open_rows
    self.max_segments = check_max_segments(max_segments)
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
    if self._used[slot] == self.length or self._segments[slot] == self.max_segments:  # full, or at the cap
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
  def from_state(cls, rows: np.ndarray, meta: np.ndarray, bos_id: int | None = OPT_BOS_ID,
                 max_segments: int | None = None) -> Packer:
    """Rebuilds a packer from `state()` arrays; `bos_id` and `max_segments` as the packer's that wrote them.

    Raises:
      ValueError: an open row already holds `max_segments` segments or more (a state of a packer without that cap).
    """
    packer = cls(rows.shape[2], bos_id, rows.shape[0], max_segments)
    for i in range(rows.shape[0]):
      if meta[i, 0]:
        if packer.max_segments is not None and meta[i, 2] >= packer.max_segments:
          raise ValueError(f"packing: the state's open row {i} holds {int(meta[i, 2])} segments, not fewer than "
                           f"max_segments={packer.max_segments}: a state of a packer with another cap")
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
                  max_open_rows: int = 8, max_segments: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Packs whole (inputs, targets) examples greedily into rows of `length` positions.

  First fit: an example goes into the oldest open row with room for it; when none has room, a new row is
  opened, and if `max_open_rows` rows are already open the oldest is emitted first. A row is emitted as soon
  as it is exactly full or holds `max_segments` examples, and the remaining open rows, oldest first, when the
  input ends. Deterministic: the same examples in the same order give the same rows.

  Args:
    examples: (inputs, targets) int arrays per example; targets end with the EOS.
    length: positions per row; an example takes len(inputs) + len(targets) (one less without a BOS).
    bos_id: the token fed before each example's first token (OPT: 2); None: none (the tokenizer adds none).
    max_open_rows: rows kept open for later, shorter examples (1 = next fit).
    max_segments: at most this many examples per row (a row reaching it is emitted at once, padded if need
      be); None: as many as fit.

  Yields:
    dicts of int32 arrays of shape [length]: decoder_input_tokens, decoder_target_tokens,
    decoder_loss_weights, decoder_segment_ids (1, 2, ... per example, 0 = padding), decoder_positions.

  Raises:
    ValueError: an example does not fit in one row, or bad `length` / `max_open_rows` / `max_segments`.
  """
  packer = Packer(length, bos_id, max_open_rows, max_segments)
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


def row_length(sequence_length: Mapping[str, Any] | None) -> int | None:
  """Positions per row for seqio's `sequence_length`: "inputs" + "targets" (a missing or None one counts 0);
  None when neither is given (no truncation)."""
  lengths = [sequence_length.get(name) for name in TASK_FEATURES_NAMES] if sequence_length else []
  if all(n is None for n in lengths):
    return None
  return sum(int(n) for n in lengths if n is not None)


def check_stream_args(feature_lengths: Mapping[str, int], batch_size: int, shard_index: int, shard_count: int) -> None:
  """The checks every batch stream makes of its shape arguments (`pipeline.BatchStream`'s and `cached_stream`'s).

  Raises:
    ValueError: naming the argument and what was expected.
  """
  if set(feature_lengths) != set(TASK_FEATURES_NAMES):
    raise ValueError(f"feature_lengths must have exactly 'inputs' and 'targets', got {dict(feature_lengths)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
