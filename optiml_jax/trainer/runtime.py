"""Run-time helpers of the loop: per-step bookkeeping, preemption, progress bar, multi-process data states.

Sits beside `trainer.loop`, which owns the order of a run; everything here is one small job:
  StepTracker     fetches each step's metrics one step late, applies the NaN policy, writes metrics.jsonl
                  lines (via `trainer.metrics.MetricsWriter`) and drives the progress bar;
  Preemption      turns SIGTERM (and a first Ctrl-C) into a flag that every process agrees on;
  gather_json     collects one JSON-able value per process (the data positions a checkpoint records);
  process_row_block
                  the rows of the global batch a process feeds, and the stream shard that feeds them;
  data_state_of_this_process
                  picks this process's data position from a checkpoint, resharding the positions when
                  the run has another number of processes than the one that wrote it;
  write_model_config (config.json and the tokenizer files), count_tokens, progress_bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Mapping, Sequence

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.data import packing_np
from optiml_jax.data import special_tokens
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import metrics as metrics_lib
from optiml_jax.trainer import synthetic


class NonFiniteLossError(RuntimeError):
  """Training stopped on a non-finite loss or gradient (nan_policy="stop"); the message names the step."""


def count_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Non-padding tokens of a batch: positions of a segment (`decoder_segment_ids` > 0) where the batch has segment
  ids, else non-zero targets (t5x's convention). A Llama-family vocabulary's id 0 is a real token (SmolLM2's
  `<|endoftext|>`), so in packed rows the segment ids tell padding, not the token."""
  if "decoder_segment_ids" in batch:
    return int(np.count_nonzero(np.asarray(batch["decoder_segment_ids"])))
  return int(np.count_nonzero(np.asarray(batch["decoder_target_tokens"])))


def check_segment_bound(batch: Mapping[str, np.ndarray], bound: int, step: int) -> None:
  """Raises ConfigError naming the step when a packed row of `batch` holds more than `bound` segments, the most
  the model's packed attention takes (`packed_attention_segments`; 0: no bound). The packer caps rows at
  `DataArgs.max_segments_per_row`, which TrainConfig checks against the bound, so this guards streams from
  elsewhere; a row over the bound would otherwise lose its last segments' attention without a word."""
  if not bound or "decoder_segment_ids" not in batch:
    return
  most = int(packing_np.count_segments(np.asarray(batch["decoder_segment_ids"])).max(initial=0))
  if most > bound:
    raise config_lib.ConfigError(
        f"decoder_segment_ids: a row of the batch for step {step + 1} holds {most} segments, but the model's "
        f"packed attention takes at most packed_attention_segments={bound}; cap the packer at it "
        f"(DataArgs.max_segments_per_row)")


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm.tqdm:
  """The run's tqdm bar (process 0 only): step n/total, elapsed<ETA, and loss / lr / tokens/s as postfix."""
  return tqdm.tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not enabled or jax.process_index() != 0)


class StepTracker:
  """Bookkeeping for every step, one step late (see `trainer.loop`'s docstring for why that is safe).

  `push(step, metrics, tokens)` hands over the device metrics of a just-queued step and processes the
  previous one; `flush()` processes the last pushed step (before a checkpoint and at the end). A step's
  metrics.jsonl line is written every `log_every` steps, at `last_step`, and for every non-finite step.
  """

  def __init__(self, *, writer: metrics_lib.MetricsWriter, log_every: int, last_step: int, nan_policy: str,
               flops_per_token: float, positions_per_step: int, num_devices: int, peak_flops: float | None,
               progress: tqdm.tqdm):
    self._writer, self._log_every, self._last_step = writer, max(1, log_every), last_step
    self._nan_policy = nan_policy
    self._flops_per_token, self._positions_per_step = flops_per_token, positions_per_step
    self._num_devices, self._peak_flops = num_devices, peak_flops
    self._bar = progress
    self._pending: tuple[int, Any, int] | None = None
    self._window_tokens, self._window_steps, self._window_start = 0, 0, time.time()
    self.skipped: list[int] = []
    self.losses: list[float] = []
    self.total_tokens = 0

  def push(self, step: int, metrics: Any, tokens: int) -> None:
    previous, self._pending = self._pending, (step, metrics, tokens)
    if previous is not None:
      self._process(*previous)

  def flush(self) -> None:
    previous, self._pending = self._pending, None
    if previous is not None:
      self._process(*previous)

  def _process(self, step: int, metrics: Any, tokens: int) -> None:
    values = jax.device_get(metrics)
    self.total_tokens += tokens
    self._window_tokens += tokens
    self._window_steps += 1
    finite = bool(int(values["finite"]))
    if not finite:
      message = (f"step {step}: non-finite loss ({float(values['loss'])}) or gradient norm "
                 f"({float(values['grad_norm'])})")
      if self._nan_policy == "stop":
        raise NonFiniteLossError(message + "; stopping (nan_policy='stop'); this step is not checkpointed")
      logging.warning("%s; update skipped (nan_policy='skip')", message)
      self.skipped.append(step)
    if finite and step % self._log_every and step != self._last_step:
      self._bar.update(1)
      return
    elapsed = max(time.time() - self._window_start, 1e-9)
    tokens_per_second = self._window_tokens / elapsed
    positions_per_second = self._window_steps * self._positions_per_step / elapsed
    record = {
        "loss": _finite_or_none(values["loss"]),
        "learning_rate": _finite_or_none(values.get("learning_rate")),
        "grad_norm": _finite_or_none(values["grad_norm"]),
        "tokens_per_second": tokens_per_second,
        "mfu": metrics_lib.model_flops_utilization(positions_per_second, self._flops_per_token, self._num_devices,
                                                   self._peak_flops),
        "target_tokens": float(values["target_tokens"]),
    }
    if not finite:
      record["skipped"] = 1.0
    self._writer.write(step, record)
    if finite:
      self.losses.append(float(values["loss"]))  # finite: the step checked its loss and gradient norm
      postfix = dict(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_second:,.0f}")
      if record["learning_rate"] is not None:
        postfix["lr"] = f"{record['learning_rate']:.2e}"
      if record["mfu"] is not None:
        postfix["mfu"] = f"{record['mfu']:.1%}"
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(1)
    self._window_tokens, self._window_steps, self._window_start = 0, 0, time.time()

  def close(self) -> None:
    self._bar.close()


def _finite_or_none(value: Any) -> float | None:
  if value is None:
    return None
  value = float(value)
  return value if math.isfinite(value) else None


class Preemption:
  """Turns SIGTERM (preemption) and a first SIGINT (Ctrl-C) into a flag the loop polls after each step, so the run
  checkpoints at that step and stops (installed only in the main thread). After the first Ctrl-C the previous SIGINT
  handler is back: a second one stops at once, without a checkpoint."""

  def __init__(self) -> None:
    self.requested = False
    self.interrupted = False  # the request came from SIGINT: the command exits 130 once checkpointed
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))
      logging.warning("Ctrl-C (SIGINT): saving a checkpoint after the current step, then exiting; Ctrl-C again "
                      "stops at once, without one")
      self.interrupted = True
    else:
      logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.requested = True

  def __exit__(self, *exc) -> None:
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)
    self._previous = {}

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective: every process must call it each step)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.any(flags))


def gather_json(value: Any) -> list[Any]:
  """[value of process 0, value of process 1, ...]: every process must call it with a JSON-able value."""
  if jax.process_count() == 1:
    return [value]
  data = np.frombuffer(json.dumps(value, sort_keys=True).encode("utf-8"), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.asarray(len(data), np.int32))).reshape(-1)
  padded = np.zeros((int(lengths.max()),), np.uint8)
  padded[:len(data)] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(bytes(gathered[i, :lengths[i]]).decode("utf-8")) for i in range(len(lengths))]


@dataclasses.dataclass(frozen=True)
class RowBlock:
  """The rows of the global batch one process feeds.

  Attributes:
    rows: how many rows it feeds (the local batch of `jax.make_array_from_process_local_data`).
    index, count: its stream shard: shard `index` of the `count` distinct row sets of the processes (ranked by
      first row; processes that hold the same rows share an index and feed the same data).
    ranges: where those rows sit in the global batch, as ascending (start, stop) row ranges; the local batch
      fills them in that order.
  """

  rows: int
  index: int
  count: int
  ranges: tuple[tuple[int, int], ...] = ()


def process_row_block(batch_sharding: jax.sharding.Sharding, batch_size: int, seq_len: int,
                      process_of: Mapping[jax.Device, int] | None = None, process: int | None = None) -> RowBlock:
  """The rows of the global batch that process `process` (this one when None) feeds under `batch_sharding`,
  with the processes of `process_of` (each device's `process_index` when None; the planner passes hypothetical
  hosts of simulated devices).

  A process must feed exactly the rows its devices hold, in ascending order: for the devices of one process,
  `jax.make_array_from_process_local_data` maps the distinct row slices they hold, sorted by start, onto
  consecutive slices of the local batch. Those rows need not be one contiguous block: on a TPU slice
  `jax.make_mesh` orders the chips by physical topology, so a host's chips hold rows such as 0-15 and 64-79 of
  a 256-row batch. Where a mesh axis that does not shard the batch spans processes (tensor = 8 over hosts of
  4 chips, or fewer data x fsdp shards than processes), several processes hold the same rows: they get the same
  stream shard `index`, so their deterministic streams feed the same data; feeding different data there would
  give the devices of one tensor group different inputs, which trains on nonsense without an error.

  The stream shard of a process is the rank of its row set among the distinct row sets of all processes, ranked
  by first row, and `count` is their number. So shard i of a stream that splits each global batch into `count`
  blocks (`trainer.synthetic`, `data.cached_stream`) lands on the rows of the i-th set: the global batch on the
  devices holds each shard's rows exactly once (in the order of the stream's global batch where every set is one
  contiguous block, as with CPU and GPU device order).

  Raises:
    ConfigError: the distinct row sets of the processes overlap, differ in size or leave rows of the batch to no
      process (a device order that no stream sharding can feed), or the sharding strides the rows.
  """
  if process_of is None:  # (jaxlib's Device stub lacks the attribute every device has)
    process_of = {d: d.process_index for d in batch_sharding.device_set}  # type: ignore[attr-defined]
  process = jax.process_index() if process is None else process
  rows_of: dict[int, np.ndarray] = {}
  for device, index in batch_sharding.devices_indices_map((batch_size, seq_len)).items():
    rows = index[0] if index else slice(None)
    start, stop, step = rows.indices(batch_size)
    if step != 1:
      raise config_lib.ConfigError(f"the batch sharding {batch_sharding} strides the batch rows ({rows})")
    held = rows_of.setdefault(process_of[device], np.zeros((batch_size,), bool))
    held[start:stop] = True
  if process not in rows_of:
    raise config_lib.ConfigError(f"process {process} holds no device of the batch sharding {batch_sharding}")
  sets = sorted({_ranges(held) for held in rows_of.values()})
  sizes = sorted({sum(stop - start for start, stop in s) for s in sets})
  covered = np.zeros((batch_size,), int)
  for s in sets:
    for start, stop in s:
      covered[start:stop] += 1
  if len(sizes) != 1 or not (covered == 1).all():
    held_by = {p: list(_ranges(held)) for p, held in sorted(rows_of.items())}
    raise config_lib.ConfigError(
        f"the processes hold row sets {held_by} of the {batch_size}-row batch, which "
        f"{'differ in size' if len(sizes) != 1 else 'overlap or leave rows out'}: no sharding of the data streams "
        "feeds that; each process must hold rows that no other process holds, or exactly the rows of the "
        "processes it shares them with, and as many as every other process (choose PartitioningArgs.mesh_shape "
        "so that the processes split the batch axes, data x fsdp, evenly)")
  mine = _ranges(rows_of[process])
  return RowBlock(rows=sizes[0], index=sets.index(mine), count=len(sets), ranges=mine)


def _ranges(held: np.ndarray) -> tuple[tuple[int, int], ...]:
  """The (start, stop) ranges of the True entries of a boolean row mask, ascending."""
  edges = np.flatnonzero(np.diff(np.concatenate([[0], held.astype(np.int8), [0]])))
  return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]))


class ResumeError(ValueError):
  """A checkpoint in MODEL_DIR cannot be resumed by this run (the message says why and what to do)."""


# Data-state fields that describe how the global batch is split over processes; the others name the stream.
SHARDING_FIELDS = ("batches_consumed", "batch_size", "shard_index", "shard_count")
# Fields of a row-block stream's state that hold its global position beyond the batch count (the cached stream's
# packing plan, `data.cached_stream`): the same on every process, so carried over as saved when resharding.
GLOBAL_POSITION_FIELDS = ("position",)


def data_state_of_this_process(meta: Mapping[str, Any], model_dir: str,
                               fresh_state: Mapping[str, Any] | None = None) -> Any:
  """This process's stream state from a checkpoint's metadata (one state per process, see `gather_json`).

  Same number of processes as the checkpoint, each on the same stream shard (`process_row_block`) as when it
  saved: the state this process saved (the stream's `restore` then checks that its arguments did not change).
  Nothing here depends on where a shard's rows sit in the global batch (one block, or the scattered rows a
  TPU slice's device order gives a host): a state records the shard, and the mesh puts its rows in place.

  Another number of processes (another slice size), or another stream shard for this process (another mesh): the
  states are resharded, which needs `fresh_state`, the `state()` of this process's newly built stream, and
  states that record `batches_consumed`, `batch_size`, `shard_index` and `shard_count`
  (`data.pipeline.BatchStream` and `trainer.synthetic` do). The saved states must cover shards 0..n-1 of n
  (processes that held the same rows fed the same shard and saved equal states), every saved process must
  have consumed the same number B of batches (they step together), the global batch (batch_size *
  shard_count) must not change, and every other field (name, seed, lengths, ...) must be equal. The result
  is `fresh_state` with `batches_consumed = B`: each new process continues its own shard after B of its
  batches, i.e. at global batch B.
    * A stream whose state says `"sharding": "row_blocks_of_global_batch"` (`trainer.synthetic`: global
      batch p is a pure function of the seed and p, stream shard i is its row block i; `data.cached_stream`:
      its global position, GLOBAL_POSITION_FIELDS, is carried over as saved) continues exactly: the batches, and
      so the losses, are those of an uninterrupted run (the rows may sit in another order on the devices when
      the new mesh orders the processes otherwise, which changes the losses only by rounding, and dropout masks).
    * Any other stream (`BatchStream` shards examples per process, so another process count is another
      set of streams) skips B batches of each new per-process stream: as many global batches as were
      consumed, but not the same examples; a warning says the example order differs from an uninterrupted
      run (some examples of the current epoch may be seen twice and others not at all).

  Raises:
    ResumeError: the checkpoint cannot be continued by this run; the message says why and what to do.
  """
  states = meta.get("data")
  where = f"checkpoint {model_dir}/{meta.get('step')}"
  if isinstance(states, list) and len(states) == jax.process_count():
    mine = states[jax.process_index()]
    if fresh_state is None or not _is_other_block(mine, fresh_state):
      return mine
  count = len(states) if isinstance(states, list) and states else "an unknown number of"
  restart = ("resume with the same number of processes, or start a new MODEL_DIR from it with "
             "INITIAL_CHECKPOINT_PATH (the data then restarts from the beginning)")
  head = (f"{where}: its data positions come from {count} process(es), this run has "
          f"{jax.process_count()}")
  if not isinstance(states, list) or not states or fresh_state is None:  # the count is unknown, or no fresh state
    raise ResumeError(f"{head}; {restart}")
  saved = states[0]
  missing = [
      f for f in SHARDING_FIELDS
      if not all(isinstance(s, Mapping) and isinstance(s.get(f), int) for s in states + [fresh_state])
  ]
  if missing:
    raise ResumeError(f"{head}, and the stream states lack the integer field(s) {missing} needed to "
                      f"reshard them; {restart}")
  consumed = sorted({s["batches_consumed"] for s in states})
  if len(consumed) != 1:
    raise ResumeError(f"{head}, and its processes consumed different numbers of batches {consumed} "
                      f"(a damaged checkpoint?); {restart}")
  blocks = saved["shard_count"]
  by_block: dict[int, list[Mapping[str, Any]]] = {}
  for s in states:
    by_block.setdefault(s["shard_index"], []).append(s)
  if any(s["shard_count"] != blocks for s in states) or sorted(by_block) != list(range(blocks)):
    raise ResumeError(f"{head}, but its states {[(s['shard_index'], s['shard_count']) for s in states]} (shard, of) "
                      f"are not each of shards 0..{blocks - 1} of {blocks}; {restart}")
  if any(s != group[0] for group in by_block.values() for s in group):
    raise ResumeError(f"{head}, and processes that fed the same rows saved different positions (a damaged "
                      f"checkpoint?); {restart}")
  saved_rows = saved["batch_size"] * saved["shard_count"]
  rows = fresh_state["batch_size"] * fresh_state["shard_count"]
  if saved_rows != rows:
    raise ResumeError(f"{where}: its global batch has {saved_rows} rows, this run's has {rows}; resume "
                      f"with batch_size={saved_rows}, or {restart}")
  fields = (set(saved) | set(fresh_state)) - set(SHARDING_FIELDS) - set(GLOBAL_POSITION_FIELDS)
  differing = sorted(f for f in fields if saved.get(f) != fresh_state.get(f))
  if differing:
    details = ", ".join(f"{f}: saved {saved.get(f)!r}, now {fresh_state.get(f)!r}" for f in differing)
    raise ResumeError(f"{where}: its data stream differs from this run's ({details}); resume with the "
                      "same data arguments, or start a new MODEL_DIR from it with INITIAL_CHECKPOINT_PATH")
  if fresh_state.get("sharding") != synthetic.ROW_BLOCKS_OF_GLOBAL_BATCH and jax.process_index() == 0:
    logging.warning(
        "%s was written by %d processes feeding %d block(s) of rows, and this run has %d feeding %d: each "
        "process continues its new shard of the data after skipping %d of its batches (as many global batches "
        "as were consumed), but the examples and their order differ from an uninterrupted run", where, len(states),
        blocks, jax.process_count(), fresh_state["shard_count"], consumed[0])
  carried = {}
  if fresh_state.get("sharding") == synthetic.ROW_BLOCKS_OF_GLOBAL_BATCH:
    carried = {f: saved[f] for f in GLOBAL_POSITION_FIELDS if f in saved}
  return dict(fresh_state, batches_consumed=consumed[0], **carried)


def _is_other_block(saved: Any, fresh: Mapping[str, Any]) -> bool:
  """Whether a saved stream state is of another stream shard (or shard size) than this run's fresh one: the mesh put
  this process on other rows (states without the sharding fields are never)."""
  if not isinstance(saved, Mapping) or not all(f in saved and f in fresh for f in SHARDING_FIELDS[1:]):
    return False
  return any(saved[f] != fresh[f] for f in SHARDING_FIELDS[1:])


def replicated_scalar(value: int, sharding: jax.sharding.Sharding) -> jax.Array:
  """An int32 scalar on every device of `sharding` (also when they span several processes)."""
  return jax.make_array_from_callback((), sharding, lambda _: np.asarray(value, np.int32))


def apply_xla_flags(flags: Sequence[str]) -> None:
  """Adds `flags` (`RunArgs.xla_flags`) to the XLA_FLAGS environment variable, which XLA reads once, when JAX
  starts its backend. Nothing to do when XLA_FLAGS has them already.

  Raises:
    ConfigError: naming the flags, when the backend has started without them (they would be ignored silently).
  """
  current = os.environ.get("XLA_FLAGS", "").split()
  missing = [flag for flag in flags if flag not in current]
  if not missing:
    return
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (no public "has JAX started?")
  if xla_bridge.backends_are_initialized():
    raise config_lib.ConfigError(
        f"RunArgs.xla_flags: JAX's backend started before {' '.join(missing)} could reach XLA; set them before "
        "anything touches a device (python -m optiml_jax.train does), or put them in XLA_FLAGS yourself")
  os.environ["XLA_FLAGS"] = " ".join(current + missing)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """`jax.distributed.initialize`, with CPU collectives over gloo (they have no other implementation here;
  the setting does nothing on GPU and TPU). Call before anything else touches JAX devices."""
  with contextlib.suppress(AttributeError, KeyError, ValueError):  # a JAX without the option: nothing to choose
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def write_model_config(model_dir: str, config: config_lib.ModelConfig, tokenizer_dir: str | None = None) -> None:
  """MODEL_DIR/config.json (the model's Hugging Face config) and the tokenizer files the run tokenized with
  (`checkpoints.hf.TOKENIZER_FILES` of `tokenizer_dir`; None: OPT's, shipped in the package): evaluation and
  conversion then need neither a model gin file nor the tokenizer's path. Each file is written whole under a
  temporary name, then renamed into place."""
  tokenizer_dir = tokenizer_dir or str(special_tokens.OPT_TOKENIZER_DIR)
  if jax.process_index() != 0:
    return
  epath.Path(model_dir).mkdir(parents=True, exist_ok=True)  # epath: MODEL_DIR may be a bucket
  files = {"config.json": (json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n").encode("utf-8")}
  for name in hf_lib.TOKENIZER_FILES:
    source = epath.Path(tokenizer_dir) / name
    if source.exists():
      files[name] = source.read_bytes()
  for name, data in files.items():
    tmp = epath.Path(os.path.join(model_dir, name + ".tmp"))
    tmp.write_bytes(data)
    tmp.replace(os.path.join(model_dir, name))
