"""Packed rows through cuDNN's packed ("THD") attention: segments as lengths and offsets, not a dense mask.

Where it sits: under `models/layers.py`, which calls `attention` here when a family module hands it a
`SegmentLayout` instead of a mask. The family modules (`models/opt.py`, `models/llama.py`) build that layout with
`training_layout` when their config's `packed_attention_segments` is set and the kernel can take it; otherwise
they keep the dense [batch, 1, length, length] segment mask of `layers.attention_mask`.

Why: with a dense mask cuDNN reads a [length, length] bias per head and still computes every causal tile; given
each segment's start and length it computes only the tiles inside segments (a row of 8 equal segments does an
eighth of the attention work) and reads no mask. The kernel takes at most `max_segments` segments per row, a
static bound (its softmax statistics are [batch * max_segments, heads, length] float32), so the packer caps
segments per row at the same number (`DataArgs.max_segments_per_row`; the trainer checks every batch).

A segment is a maximal run of equal non-zero segment ids; id 0 is padding and belongs to none. A row's runs
past `max_segments` are left out like padding (the trainer never feeds such rows). What the kernel writes at
positions outside every segment is not defined, so the output there is set to 0 and no gradient flows from
there into the queries, keys and values. Unlike the dense mask, `decoder_target_tokens` play no part: padding is
where the segment id is 0, as the packer writes it. cuDNN's packed layout needs a Hopper GPU or newer (compute
capability 9.0); `supported()` says whether the first device has one, and the family modules fall back to the
dense mask elsewhere.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

MIN_COMPUTE_CAPABILITY = 9.0  # cuDNN's packed layout: Hopper or newer


class SegmentLayout(NamedTuple):
  """Packed rows as cuDNN's packed attention reads them (a pytree: it travels through scan and remat).

  Attributes:
    valid: [batch, length] bool, the token is in one of the listed segments.
    lengths: [batch, max_segments] int32, each segment's token count, -1 past the row's last segment.
    offsets: [batch, max_segments + 1] int32, each segment's first index in its row, -1 past the last.
  """

  valid: Array
  lengths: Array
  offsets: Array


def segment_layout(segment_ids: Array, max_segments: int) -> SegmentLayout:
  """The `SegmentLayout` of [batch, length] int segment ids: a segment per maximal run of equal non-zero ids,
  the first `max_segments` of each row listed (jax's cuDNN API: lengths [batch, M] and offsets [batch, M + 1],
  -1 where a row has fewer)."""
  if max_segments < 1:
    raise ValueError(f"packed attention: max_segments must be >= 1, got {max_segments}")
  batch, length = segment_ids.shape
  previous = jnp.concatenate([jnp.zeros_like(segment_ids[:, :1]), segment_ids[:, :-1]], axis=1)
  in_segment = segment_ids != 0
  starts = in_segment & (segment_ids != previous)
  run = jnp.cumsum(starts, axis=1, dtype=jnp.int32) - 1  # which run each token is in (counting from 0)
  valid = in_segment & (run < max_segments)
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, length))
  out_of_bounds = max_segments + 1  # indices the scatters below drop
  counts = jnp.zeros((batch, max_segments), jnp.int32).at[rows,
                                                          jnp.where(valid, run, out_of_bounds)].add(1, mode="drop")
  lengths = jnp.where(counts > 0, counts, -1)
  first = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :], (batch, length))
  offsets = jnp.full((batch, max_segments + 1), -1,
                     jnp.int32).at[rows, jnp.where(starts & valid, run, out_of_bounds)].set(first, mode="drop")
  return SegmentLayout(valid=valid, lengths=lengths, offsets=offsets)


def gpu_compute_capability() -> float:
  """The default backend's first device's CUDA compute capability (9.0 for an H100), 0.0 off CUDA GPUs."""
  device = jax.devices()[0]
  if device.platform != "gpu":
    return 0.0
  try:
    return float(getattr(device, "compute_capability", "0") or 0)
  except ValueError:
    return 0.0


def supported() -> bool:
  """Whether the default backend's first device can run cuDNN's packed layout (a CUDA GPU, Hopper or newer)."""
  return gpu_compute_capability() >= MIN_COMPUTE_CAPABILITY


def training_layout(segment_ids: Array | None, max_segments: int, implementation: str, window: int | None,
                    dropout: bool) -> SegmentLayout | None:
  """The layout a family module passes to its layers instead of a dense mask, or None where the dense mask
  stays: no segment ids, `max_segments` 0 (the config's `packed_attention_segments` unset), a kernel other than
  cuDNN, a sliding window, attention dropout (formed with explicit probabilities), or a GPU before Hopper."""
  if segment_ids is None or max_segments <= 0 or implementation != "cudnn" or window is not None or dropout:
    return None
  if not supported():
    return None
  return segment_layout(segment_ids, max_segments)


def _cudnn_packed(query: Array, key: Array, value: Array, lengths: Array, offsets: Array, scale: float) -> Array:
  """jax's cuDNN attention with the packed layout, causal within each segment. The layout is not in
  `jax.nn.dot_product_attention`'s public signature (it takes lengths only), so this reaches jax's cuDNN module."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=g-import-not-at-top
  out: Any = cudnn.dot_product_attention(query, key, value, None, None, lengths, lengths, offsets, offsets, scale=scale,
                                         mask_type=cudnn.MaskType.PADDING_CAUSAL, qkv_layout="BTNH")
  return out


def attention(query: Array, key: Array, value: Array, layout: SegmentLayout) -> Array:
  """Causal softmax attention within each segment of `layout`, scaled by 1/sqrt(head_dim); shapes as
  `layers.dot_product_attention`'s. 0 (and no gradient) at positions outside every segment."""
  valid = layout.valid[:, :, None, None]
  query, key, value = (jnp.where(valid, x, jnp.zeros_like(x)) for x in (query, key, value))
  out = _cudnn_packed(query, key, value, layout.lengths, layout.offsets, 1.0 / math.sqrt(query.shape[-1]))
  return jnp.where(valid, out, jnp.zeros_like(out))
