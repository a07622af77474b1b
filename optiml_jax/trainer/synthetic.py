"""A synthetic batch stream with the packed `decoder_*` features: for benchmarks and trainer tests.

Sits where `data.pipeline.BatchStream` sits (a `make_stream` factory for `trainer.loop.run`), with the same
`state()` / `restore()` contract, but needs no catalog, seqio or TensorFlow: batch `p` of the GLOBAL batch is
a pure function of (seed, p), and shard `shard_index` of `shard_count` is its contiguous block of rows (which the
loop puts where the process's devices hold rows: `trainer.runtime.process_row_block`).
So runs on 1 device, 8 devices or 2 processes see exactly the same global batches, which is what the
multi-device and multi-process tests compare, and what tools/benchmarks/train.py feeds. For the same reason a
checkpoint written by N processes resumes exactly with M processes: the state declares
`"sharding": ROW_BLOCKS_OF_GLOBAL_BATCH`, and `trainer.runtime.data_state_of_this_process` then hands each
new process its new shard of global batch `batches_consumed`.

Each row holds two packed examples (segment ids 1 and 2, positions restarting at 0), each a prompt followed
by a target; only target tokens carry loss weight. Token ids are drawn from [3, vocab_size).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, TypedDict

import numpy as np

STATE_KIND = "synthetic"
# A stream state's "sharding": stream shard i of n is row block i of global batch p, itself a pure function of
# the stream's arguments and p (not of n), so the position carries over to any number of processes.
ROW_BLOCKS_OF_GLOBAL_BATCH = "row_blocks_of_global_batch"


class _StreamArgs(TypedDict):
  """A stream's arguments, as its state records them (a plain dict at run time)."""

  kind: str
  batch_size: int
  seq_len: int
  vocab_size: int
  seed: int
  shard_index: int
  shard_count: int
  target_fraction: float


def global_batch(seed: int, position: int, batch_size: int, seq_len: int, vocab_size: int,
                 target_fraction: float = 0.5) -> dict[str, np.ndarray]:
  """Global batch number `position`: int32 [batch_size, seq_len] arrays of the packed feature names."""
  rng = np.random.default_rng([seed, position])
  tokens = rng.integers(3, vocab_size, size=(batch_size, seq_len + 1), dtype=np.int32)
  half = seq_len // 2
  segments = np.where(np.arange(seq_len) < half, 1, 2).astype(np.int32)
  positions = np.where(np.arange(seq_len) < half, np.arange(seq_len), np.arange(seq_len) - half)
  length_of = np.where(segments == 1, half, seq_len - half)
  is_target = positions >= np.floor(length_of * (1.0 - target_fraction))
  return {
      "decoder_input_tokens": tokens[:, :-1],
      "decoder_target_tokens": tokens[:, 1:],
      "decoder_loss_weights": np.broadcast_to(is_target.astype(np.int32), (batch_size, seq_len)).copy(),
      "decoder_segment_ids": np.broadcast_to(segments, (batch_size, seq_len)).copy(),
      "decoder_positions": np.broadcast_to(positions.astype(np.int32), (batch_size, seq_len)).copy(),
  }


class SyntheticStream(Iterator[dict[str, np.ndarray]]):
  """This process's rows of the synthetic global batches (see the module docstring).

  Args:
    batch_size: rows per batch for this process (the global batch has batch_size * shard_count rows).
    seq_len: tokens per row.
    vocab_size: token ids are drawn below it.
    seed: the stream's seed.
    shard_index, shard_count: this process's stream shard (`trainer.runtime.process_row_block`).
    target_fraction: share of each example that is target (carries loss weight).
  """

  def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0, shard_index: int = 0,
               shard_count: int = 1, target_fraction: float = 0.5):
    if batch_size < 1 or seq_len < 2 or vocab_size < 4:
      raise ValueError(f"SyntheticStream: batch_size >= 1, seq_len >= 2 and vocab_size >= 4 expected, got "
                       f"{batch_size}, {seq_len}, {vocab_size}")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"SyntheticStream: shard_index must be in [0, {shard_count}), got {shard_index}")
    self._config = _StreamArgs(kind=STATE_KIND, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                               seed=seed, shard_index=shard_index, shard_count=shard_count,
                               target_fraction=target_fraction)
    self._position = 0

  def __iter__(self) -> SyntheticStream:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    c = self._config
    full = global_batch(c["seed"], self._position, c["batch_size"] * c["shard_count"], c["seq_len"], c["vocab_size"],
                        c["target_fraction"])
    self._position += 1
    rows = slice(c["shard_index"] * c["batch_size"], (c["shard_index"] + 1) * c["batch_size"])
    return {k: v[rows] for k, v in full.items()}

  def state(self) -> dict[str, Any]:
    return {"batches_consumed": self._position, "sharding": ROW_BLOCKS_OF_GLOBAL_BATCH, **self._config}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues after `state["batches_consumed"]` batches; refuses a state of a different stream."""
    differing = sorted((k, v) for k, v in self._config.items() if state.get(k) != v)
    if differing:
      details = ", ".join(f"{k}: saved {state.get(k)!r}, this stream {v!r}" for k, v in differing)
      raise ValueError(f"synthetic stream state is from a different stream ({details})")
    self._position = int(state["batches_consumed"])


def factory(seq_len: int, vocab_size: int, seed: int = 0, target_fraction: float = 0.5):
  """A `make_stream(block_rows, block_index, block_count)` for `trainer.loop.run` (this process's stream shard)."""

  def make_stream(block_rows: int, index: int, count: int) -> SyntheticStream:
    return SyntheticStream(block_rows, seq_len, vocab_size, seed, index, count, target_fraction)

  return make_stream
