"""The batch stream: a registered mixture or task -> deterministic, shardable, resumable numpy batches.

Where it sits: the last data stage, between `registry.py` (seqio Tasks and Mixtures) + `packing.py` (the
feature converter) and the trainer, which calls `next()` for every step and stores `state()` in its
checkpoints.

    stream = pipeline.BatchStream("optiml_bench_train", split="train",
                                  feature_lengths={"inputs": 1536, "targets": 512}, batch_size=8, seed=0,
                                  shard_index=jax.process_index(), shard_count=jax.process_count())
    batch = next(stream)   # {"decoder_input_tokens": int32 [8, 2048], ..., "decoder_positions": ...}
    saved = stream.state() # small JSON-able dict, e.g. into the Orbax checkpoint's metadata
    ...
    stream = pipeline.BatchStream(...same arguments...); stream.restore(saved)

How the position is kept: the stream is a pure function of its arguments. Every source of order is seeded
(each Task's shuffle buffer and seqio's sampling between tasks use `seed`; delimiters and demonstrations
use the registry's fixed formatting seed; packing is deterministic; tf.data keeps element order), so a
position is just the number of batches already handed out. `restore` rebuilds the same pipeline and skips
that many batches. tf.data's own iterator checkpoints cannot be used because the Tasks and the packer are
Python generators. The skip re-reads, formats and packs the skipped examples, so resuming takes about as
long as producing those batches did (`tools/benchmarks/data.py` measures the rate); the state also records
the arguments, and `restore` refuses a state taken from a different stream.

Sharding: process `shard_index` of `shard_count` keeps every `shard_count`-th example of each task (seqio's
`ShardInfo`), then packs and batches its share, so each process builds its own per-host batch.
A checkpoint written by N processes and resumed by M != N processes (another slice size) therefore cannot
continue the same example order: `trainer.runtime.data_state_of_this_process` gives each new stream (shard
i of M, same global batch) the saved `batches_consumed` B, so it skips B of its own batches (as many global
batches as were consumed) and logs a warning that the examples differ from an uninterrupted run.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, TypedDict

import numpy as np
import seqio
import tensorflow as tf

from optiml_jax.data import packing
from optiml_jax.data import packing_np

STATE_VERSION = 1


class _StreamArgs(TypedDict):
  """A stream's arguments, as its state records them (a plain, JSON-able dict at run time)."""

  name: str
  split: str
  feature_lengths: dict[str, int]
  batch_size: int
  seed: int
  shard_index: int
  shard_count: int
  pack: bool
  shuffle: bool
  num_epochs: int | None
  drop_remainder: bool
  max_open_rows: int
  window_size: int
  max_segments_per_row: int | None


class BatchStream(Iterator[dict[str, np.ndarray]]):
  """Iterator of numpy batches from a registered seqio mixture or task (see the module docstring).

  Args:
    name: a registered seqio Mixture or Task name.
    split: "train" or "validation".
    feature_lengths: task feature lengths {"inputs": Li, "targets": Lt}; rows hold Li + Lt tokens.
    batch_size: rows per batch (per process).
    seed: shuffling and task-sampling seed.
    shard_index, shard_count: this process's shard (e.g. jax.process_index(), jax.process_count()).
    pack: pack several examples per row (else one example per row, padded).
    shuffle: shuffle each task through its shuffle buffer.
    num_epochs: passes over each task; None repeats forever (training).
    drop_remainder: drop a final partial batch (only reachable with a finite `num_epochs`).
    max_open_rows: the packer's open rows (see `packing.pack_examples`).
    window_size: examples the converter packs per step (see `packing.OptimlFeatureConverter`).
    max_segments_per_row: at most this many examples per packed row (see `packing.OptimlFeatureConverter`);
      None: as many as fit.
    try_in_mem_cache: let seqio keep small tasks in memory (memory grows with the number of tasks).
  """

  def __init__(self, name: str, split: str, feature_lengths: Mapping[str, int], batch_size: int, seed: int,
               shard_index: int = 0, shard_count: int = 1, pack: bool = True, shuffle: bool = True,
               num_epochs: int | None = None, drop_remainder: bool = True, max_open_rows: int = 8,
               window_size: int = 256, try_in_mem_cache: bool = False, max_segments_per_row: int | None = None):
    packing_np.check_stream_args(feature_lengths, batch_size, shard_index, shard_count)
    max_segments_per_row = packing_np.check_max_segments(max_segments_per_row, "max_segments_per_row")
    self._config: _StreamArgs = {
        "name": name,
        "split": split,
        "feature_lengths": {
            k: int(v) for k, v in sorted(feature_lengths.items())
        },
        "batch_size": int(batch_size),
        "seed": int(seed),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        "pack": bool(pack),
        "shuffle": bool(shuffle),
        "num_epochs": num_epochs,
        "drop_remainder": bool(drop_remainder),
        "max_open_rows": int(max_open_rows),
        "window_size": int(window_size),
        "max_segments_per_row": max_segments_per_row,
    }
    self._try_in_mem_cache = try_in_mem_cache
    self._provider = seqio.get_mixture_or_task(name)
    self._batches = 0
    self._iterator: Iterator[dict[str, np.ndarray]] | None = None  # built on the first `next`

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    """The vocabulary of the provider's "targets" (every Task of a mixture shares it: seqio checks)."""
    return self._provider.output_features["targets"].vocabulary

  def dataset(self) -> tf.data.Dataset:
    """The batched tf.data pipeline from the start (what the iterator walks)."""
    c = self._config
    shard_info = seqio.ShardInfo(c["shard_index"], c["shard_count"]) if c["shard_count"] > 1 else None
    ds = self._provider.get_dataset(sequence_length=c["feature_lengths"], split=c["split"], shuffle=c["shuffle"],
                                    seed=c["seed"], shard_info=shard_info, num_epochs=c["num_epochs"],
                                    try_in_mem_cache=self._try_in_mem_cache)
    # BOS and EOS follow the tokenizer the Tasks tokenize with (OPT: </s>; SmolLM2: no BOS, <|im_end|>).
    converter = packing.OptimlFeatureConverter.for_vocabulary(self.vocabulary, pack=c["pack"],
                                                              max_open_rows=c["max_open_rows"],
                                                              window_size=c["window_size"],
                                                              max_segments_per_row=c["max_segments_per_row"])
    ds = converter(ds, c["feature_lengths"])
    return ds.batch(c["batch_size"], drop_remainder=c["drop_remainder"])

  def _make_iterator(self, skip: int) -> Iterator[dict[str, np.ndarray]]:
    ds = self.dataset()
    if skip:
      ds = ds.skip(skip)
    return ds.prefetch(2).as_numpy_iterator()

  def __iter__(self) -> BatchStream:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._iterator is None:
      self._iterator = self._make_iterator(skip=self._batches)
    batch = next(self._iterator)
    self._batches += 1
    return batch

  @property
  def batches_consumed(self) -> int:
    return self._batches

  def state(self) -> dict[str, Any]:
    """The position: batches handed out so far, plus the stream's arguments (JSON-able)."""
    return {"version": STATE_VERSION, "batches_consumed": self._batches, **self._config}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from `state` (from `state()` of a stream with the same arguments).

    Raises:
      ValueError: the state is from another version or another stream (names the differing fields).
    """
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}")
    if "batches_consumed" not in state or int(state["batches_consumed"]) < 0:
      raise ValueError(f"stream state lacks a valid 'batches_consumed': {state.get('batches_consumed')!r}")
    config: Mapping[str, Any] = self._config  # looked up by the names the saved state has
    differing = sorted(k for k, v in config.items() if _normalized(state.get(k)) != _normalized(v))
    if differing:
      details = ", ".join(f"{k}: saved {state.get(k)!r}, this stream {config[k]!r}" for k in differing)
      raise ValueError(f"stream state is from a different stream ({details})")
    self._batches = int(state["batches_consumed"])
    self._iterator = None  # rebuilt, skipping the consumed batches, on the next `next`


def _normalized(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _normalized(v) for k, v in sorted(value.items())}
  return value
