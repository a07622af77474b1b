"""Shapes, batches and devices for inference: bucketed padding, batch plans, params/batch placement.

Where it sits: under `inference.py` (scoring, seqio adapters) and `decoding.py` (greedy decoding), which
share it; it knows the mesh machinery (`models/partitioning.py`) and nothing of seqio or metrics.

Shapes. Rows are padded on the right to a length bucket (16, 32, 64, ... up to the context) and batches to
a power-of-two number of rows (at most `batch_size`, a multiple of the mesh's data-parallel size), so a whole
evaluation compiles a handful of programs:

  length_buckets(40)              -> (16, 32, 40)
  bucket_for(17, (16, 32, 40))    -> 32
  padded_batch_rows(5, 32)        -> 8;  padded_batch_rows(5, 32, multiple=4) -> 8;  (3, 32, 4) -> 4

Sharding. With a mesh (`partitioning.make_mesh`), params are placed by the rule table, batch rows split
over the data-parallel axes ("batch" -> data, fsdp), the model runs inside `partitioning.mesh_context` and
results come back replicated. Every process passes the whole batch (seqio eval datasets are deterministic,
so every process reads the same examples); each device takes its slice.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Hashable, Sequence, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from optiml_jax.models import partitioning

DEFAULT_BATCH_SIZE = 32  # rows per batch (scoring: prompt + one option; decoding: one prompt)
MIN_BUCKET = 16  # shortest padded row length
PIPELINE_DEPTH = 2  # batches in flight on the device while the host prepares the next one

# The token ids of one prompt or option as callers pass them: a list or a numpy array (read with np.asarray).
TokenIds = np.ndarray | Sequence[int]
BatchT = TypeVar("BatchT")  # what a batch plan lists per batch (`run_batches`)


@dataclasses.dataclass
class InferenceStats:
  """Counters that the scoring and decoding calls add to (pass one in to read them afterwards).

  Attributes:
    examples: examples seen (scoring: prompts with their options; decoding: prompts).
    truncated: of those, examples whose prompt was left-truncated to fit the context.
    rows: model rows run (scoring: one per option; decoding: one per prompt), padding rows excluded.
    tokens: tokens the model read (scoring: row lengths, a prompt shared by its options counted once;
      decoding: prompt + generated tokens).
    generated_tokens: tokens produced by greedy decoding (a final </s> excluded).
    seconds: wall time spent in the calls.
  """

  examples: int = 0
  truncated: int = 0
  rows: int = 0
  tokens: int = 0
  generated_tokens: int = 0
  seconds: float = 0.0

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------
# Shapes and batch plans: small pure functions.
# ----------------------------------------------------------------------------------------------------------


def length_buckets(max_length: int, min_length: int = MIN_BUCKET) -> tuple[int, ...]:
  """Padded row lengths: powers of two from `min_length` below `max_length`, then `max_length` itself."""
  if max_length < 1:
    raise ValueError(f"length_buckets: max_length must be >= 1, got {max_length}")
  buckets, size = [], min_length
  while size < max_length:
    buckets.append(size)
    size *= 2
  return tuple(buckets) + (max_length,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds `length` tokens."""
  for size in buckets:
    if length <= size:
      return size
  raise ValueError(f"bucket_for: {length} tokens exceed the longest bucket {buckets[-1]}")


def padded_batch_rows(num_rows: int, batch_size: int, multiple: int = 1) -> int:
  """Rows of a padded batch: the next power of two >= num_rows, a multiple of `multiple`, <= batch_size."""
  rows = 1 << max(num_rows - 1, 0).bit_length()
  rows = -(-rows // multiple) * multiple
  return min(rows, batch_size)


def round_batch_size(batch_size: int, multiple: int) -> int:
  """`batch_size` rounded up to a multiple of the data-parallel size; raises on a non-positive size."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return -(-batch_size // multiple) * multiple


def plan_batches(lengths: Sequence[int], groups: Sequence[Hashable], batch_size: int) -> list[list[int]]:
  """Row indices per batch: the rows of a group together, groups by decreasing longest row.

  A group never straddles two batches unless it has more than `batch_size` rows; then it fills whole
  batches first and its remainder starts the next one. Longest first: a batch that does not fit in memory
  fails at once, not at the end of a long run.
  """
  members: dict[Hashable, list[int]] = collections.defaultdict(list)
  for i, group in enumerate(groups):
    members[group].append(i)
  ordered = sorted(members.values(), key=lambda rows: -max(lengths[i] for i in rows))
  batches: list[list[int]] = []
  current: list[int] = []
  for rows in ordered:
    if current and len(current) + len(rows) > batch_size:
      batches.append(current)
      current = []
    current = current + rows
    while len(current) >= batch_size:
      batches.append(current[:batch_size])
      current = current[batch_size:]
  if current:
    batches.append(current)
  return batches


def pad_rows(arrays: Sequence[np.ndarray | Sequence[Any]], rows: int, length: int, dtype: Any,
             fill: Any = 0) -> np.ndarray:
  """[rows, length] array: arrays[i] left-aligned in row i, `fill` elsewhere (padding rows included)."""
  out = np.full((rows, length), fill, dtype)
  for i, array in enumerate(arrays):
    out[i, :len(array)] = array
  return out


def context_length(model: nn.Module, max_length: int | None) -> int:
  """`max_length`, checked against the model's context; None means the whole context."""
  context = model.config.max_position_embeddings
  if max_length is None:
    return context
  if not 1 <= max_length <= context:
    raise ValueError(f"max_length must be in [1, {context}] (the model's context), got {max_length}")
  return max_length


def cut_from_left(tokens: np.ndarray, keep: int, bos_id: int | None = None) -> np.ndarray:
  """`tokens` (longer than `keep`) cut to `keep` tokens from the left. A row that starts with `bos_id` keeps it in
  front of its last `keep - 1` tokens, as a training row keeps its BOS when its prompt loses its start
  (`formatting.fit_to_row`); scoring, shared prompts and greedy decoding all cut this way."""
  if bos_id is not None and keep >= 2 and int(tokens[0]) == bos_id:
    return np.concatenate([tokens[:1], tokens[len(tokens) - keep + 1:]])
  return tokens[len(tokens) - keep:]


# ----------------------------------------------------------------------------------------------------------
# Devices: params placement, batch placement, jit with replicated outputs, the batch pipeline.
# ----------------------------------------------------------------------------------------------------------


def data_parallel_size(mesh: jax.sharding.Mesh | None,
                       rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES) -> int:
  """Devices the "batch" axis is split over (1 without a mesh): batches are padded to a multiple of it."""
  if mesh is None:
    return 1
  axes = dict(rules).get("batch")
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes if a in mesh.shape)


@functools.cache
def _param_shardings(model: nn.Module, mesh: jax.sharding.Mesh) -> Any:
  _, axes = partitioning.abstract_variables(model, jnp.ones((1, 2), jnp.int32), enable_dropout=False)
  return partitioning.logical_to_mesh_sharding(axes, mesh)


MATMUL_WEIGHTS = ("kernel", "embedding")  # the leaves models/layers.py casts to the compute dtype before use


def matmul_weights_in_compute_dtype(model: nn.Module, params: Any) -> Any:
  """`params` with the matmul weights (`kernel` and `embedding` leaves) cast to the model's compute dtype when
  that is a 16-bit float and they are wider; the rest (biases, norms) as they are.

  The model casts those weights to its compute dtype before every use (Dense, Embed and the LM head), so the
  outputs are the same bit for bit; what changes is that inference reads half the bytes per weight and keeps
  half of them in device memory (greedy decoding reads every weight once per new token). Training keeps its
  float32 master weights: only the inference paths call this (`place_params`).
  """
  dtype = jnp.dtype(model.config.dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize != 2:
    return params

  def cast(path: Any, leaf: Any) -> Any:
    wider = jnp.issubdtype(leaf.dtype, jnp.floating) and jnp.dtype(leaf.dtype).itemsize > dtype.itemsize
    return leaf.astype(dtype) if wider and getattr(path[-1], "key", None) in MATMUL_WEIGHTS else leaf

  return jax.tree_util.tree_map_with_path(cast, params)


def place_params(model: nn.Module, params: Any, mesh: jax.sharding.Mesh | None = None) -> Any:
  """`params` on the device (host arrays copied once), or laid out on `mesh` by the rule table, with the
  matmul weights in a 16-bit compute dtype (`matmul_weights_in_compute_dtype`: the same outputs, half the bytes).

  Arrays already where they belong (and in that dtype) are not copied, so calling it again is cheap.
  Raises ValueError when the tree does not match `model`'s parameters.
  """
  params = matmul_weights_in_compute_dtype(model, params)
  if mesh is None:
    return jax.device_put(params)
  shardings = _param_shardings(model, mesh)
  try:
    return jax.tree.map(lambda x, s: jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), s), params,
                        shardings)
  except ValueError as e:
    raise ValueError(f"place_params: the params tree does not match the model's parameters ({e})") from e


def to_device(array: np.ndarray, mesh: jax.sharding.Mesh | None) -> jax.Array:
  """A host batch on the device, or split over the mesh's data-parallel axes (leading axis = "batch")."""
  if mesh is None:
    return jnp.asarray(array)
  spec = jax.sharding.PartitionSpec("batch", *([None] * (array.ndim - 1)))
  sharding = partitioning.logical_to_mesh_sharding(spec, mesh)
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def mesh_context(mesh: jax.sharding.Mesh | None) -> contextlib.AbstractContextManager:
  """`partitioning.mesh_context(mesh)`, or nothing without a mesh."""
  return partitioning.mesh_context(mesh) if mesh is not None else contextlib.nullcontext()


def jit(fn: Callable[..., Any], mesh: jax.sharding.Mesh | None, **kwargs: Any) -> Callable[..., Any]:
  """jax.jit; with a mesh, outputs are replicated so that every process can read them."""
  if mesh is not None:
    kwargs["out_shardings"] = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(fn, **kwargs)


def run_batches(plan: Sequence[BatchT], dispatch: Callable[[BatchT], Any], collect: Callable[[BatchT, Any], int],
                progress: tqdm.tqdm) -> None:
  """Dispatches batches ahead of collecting them (PIPELINE_DEPTH in flight), so that the host prepares
  the next batch while the device computes; `collect` returns how far to advance `progress`."""
  pending: collections.deque = collections.deque()
  for batch in plan:
    pending.append((batch, dispatch(batch)))
    if len(pending) > PIPELINE_DEPTH:
      progress.update(collect(*pending.popleft()))
  while pending:
    progress.update(collect(*pending.popleft()))
