"""Building blocks every model family shares: masks and positions, attention, Dense/Embed, the layer stack, the
key/value cache.

Where it sits: under the family modules (`models/opt.py`, `models/llama.py`), which build their blocks from
these pieces and keep only what is theirs (OPT's LayerNorm and learned positions, Llama's RMSNorm and rotary
embeddings). Nothing here names a family. Every parameter is created with logical axis names (the t5x-style
"params_axes" collection), which `models/partitioning.py` maps onto a device mesh.

The decoding contract the family modules implement with `read_cache_index`, `update_kv_cache` and
`write_cache_index` (t5x's): `decode=True` on a model without a "cache" collection creates a zero cache of
`max_decode_length` slots and runs a normal forward pass; `prefill=True` runs a normal forward pass over a
prompt and writes its keys/values into slots 0..T-1, setting each example's cache index to its
`prefill_lengths` entry; every later `decode=True` call feeds n >= 1 tokens per example at slots (= positions)
index .. index + n - 1, each seeing the slots up to its own, and advances the index by n.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from optiml_jax.models import packed_attention

Array = jax.Array
SegmentLayout = packed_attention.SegmentLayout
param_with_axes = nn_partitioning.param_with_axes

# ----------------------------------------------------------------------------------------------------------
# Masks and positions: small pure functions.
# ----------------------------------------------------------------------------------------------------------


def positions_from_segment_ids(segment_ids: Array) -> Array:
  """0, 1, 2, ... restarting wherever the segment id changes: [batch, length] int32."""
  length = segment_ids.shape[-1]
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)
  starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
                           axis=1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def default_positions(batch: int, length: int, decoder_positions: Array | None,
                      decoder_segment_ids: Array | None) -> Array:
  """The positions of a forward pass: `decoder_positions` when given, else restarting at each segment when
  segment ids are given, else 0..L-1 in every row."""
  if decoder_positions is not None:
    return decoder_positions
  if decoder_segment_ids is not None:
    return positions_from_segment_ids(decoder_segment_ids)
  return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


def attention_mask(decoder_target_tokens: Array | None, decoder_segment_ids: Array | None) -> Array | None:
  """The non-causal part of the training mask, [batch, 1, q_len, kv_len] bool, or None when unrestricted.

  A key is visible when it is in the query's segment and, when `decoder_target_tokens` is given, not padding
  (target != 0: the OPT convention; the Llama family passes None, as token 0 is a real token there). A
  query always sees itself, so no row is empty (padding rows then give finite, ignored values). Causality is
  applied by `jax.nn.dot_product_attention(is_causal=True)`, which lets cuDNN skip the masked half.
  """
  mask = None
  if decoder_target_tokens is not None:
    batch, length = decoder_target_tokens.shape
    mask = jnp.broadcast_to((decoder_target_tokens > 0)[:, None, None, :], (batch, 1, length, length))
  if decoder_segment_ids is not None:
    same = decoder_segment_ids[:, None, :, None] == decoder_segment_ids[:, None, None, :]
    mask = same if mask is None else mask & same
  if mask is None:
    return None
  return mask | jnp.eye(mask.shape[-1], dtype=bool)


def training_mask(config: Any, decoder_target_tokens: Array | None, decoder_segment_ids: Array | None,
                  enable_dropout: bool, window: int | None = None) -> Array | SegmentLayout | None:
  """What a forward pass over whole rows hands its attention layers: cuDNN's packed layout of the segments when
  `config.packed_attention_segments` is set and the kernel can take it (`packed_attention.training_layout`),
  else `attention_mask(decoder_target_tokens, decoder_segment_ids)`. `config` is a family's config (its
  `attention_impl`, `dtype`, `head_dim`, `attention_dropout` and `packed_attention_segments` are read)."""
  implementation = resolve_attention_impl(config.attention_impl, config.dtype, config.head_dim)
  dropout = enable_dropout and config.attention_dropout > 0.0
  layout = packed_attention.training_layout(decoder_segment_ids, config.packed_attention_segments, implementation,
                                            window, dropout)
  return layout if layout is not None else attention_mask(decoder_target_tokens, decoder_segment_ids)


def decode_mask(cache_index: Array, cache_length: int, num_queries: int = 1, window: int | None = None) -> Array:
  """[batch, 1, num_queries, cache_length] bool: query q of an example sees slots 0..cache_index + q, and with a
  `window` only the last `window` of them (its own slot included)."""
  last = (cache_index[:, None] + jnp.arange(num_queries)[None, :])[:, :, None]
  slots = jnp.arange(cache_length)[None, None, :]
  visible = slots <= last
  if window is not None:
    visible = visible & (slots > last - window)
  return visible[:, None, :, :]


# ----------------------------------------------------------------------------------------------------------
# Attention.
# ----------------------------------------------------------------------------------------------------------


def resolve_attention_impl(implementation: str | None, dtype: Any, head_dim: int) -> Literal["xla", "cudnn"]:
  """The kernel `jax.nn.dot_product_attention` should use: `implementation` itself when given, else (None)
  cuDNN flash attention where it runs, XLA elsewhere.

  cuDNN runs on a CUDA GPU of compute capability 8.0 or more (A100, H100, H200) with bf16/fp16 compute and a
  head_dim that is a multiple of 8 up to 128 (every OPT size and the Llama-family presets). XLA's kernel
  materializes the [batch, heads, length, length] scores, which at 2048 tokens costs gigabytes per layer (on an
  H100, opt-125m at 16 x 2048 without remat does not fit), so None never leaves a GPU user on it by accident.
  Called at trace time; the answer follows the default backend's first device.
  """
  if implementation == "xla":
    return "xla"
  if implementation == "cudnn":
    return "cudnn"
  if implementation is not None:
    raise ValueError(f"attention implementation: expected None, 'xla' or 'cudnn', got {implementation!r}")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16) or head_dim % 8 or head_dim > 128:
    return "xla"
  return "cudnn" if packed_attention.gpu_compute_capability() >= 8.0 else "xla"


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array | SegmentLayout | None, is_causal: bool,
                          dropout_rate: float = 0.0, dropout_rng: Array | None = None,
                          implementation: Literal["xla", "cudnn"] | None = None, window: int | None = None) -> Array:
  """Softmax attention, scaled by 1/sqrt(head_dim): query [batch, q_len, heads, head_dim], key and value
  [batch, kv_len, kv_heads, head_dim] where kv_heads divides heads (grouped-query attention: query head n
  reads key/value head n // (heads / kv_heads), as Hugging Face's `repeat_kv` does).

  `window` (with `is_causal`): each query sees at most that many keys, its own included (Mistral's sliding
  window). Without dropout this is `jax.nn.dot_product_attention` (cuDNN flash attention when implementation
  is "cudnn"); it has no attention dropout, so with `dropout_rng` the probabilities are formed explicitly.
  A `SegmentLayout` for `mask` (packed rows, `packed_attention.training_layout`) runs cuDNN's packed layout:
  causal within each segment, whatever `is_causal` and `implementation` say.
  """
  if isinstance(mask, packed_attention.SegmentLayout):
    return packed_attention.attention(query, key, value, mask)
  local_window = None if window is None else (window - 1, 0)
  if dropout_rng is None or dropout_rate == 0.0:
    out = jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                       local_window_size=local_window, implementation=implementation)
    # cuDNN's forward primitive is itself saveable (`remat_policy`); naming its output too would save it twice.
    return out if implementation == "cudnn" else checkpoint_name(out, ATTENTION_OUTPUT)
  groups = query.shape[2] // key.shape[2]
  if groups > 1:
    key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(query.shape[-1])
  q_index = jnp.arange(logits.shape[-2])[:, None]
  kv_index = jnp.arange(logits.shape[-1])[None, :]
  visible = jnp.ones(logits.shape[-2:], dtype=bool)
  if is_causal:
    visible = kv_index <= q_index
  if window is not None:
    visible = visible & (kv_index > q_index - window)
  if mask is not None:
    visible = visible & mask
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
  return checkpoint_name(jnp.einsum("bnts,bsnh->btnh", probs, value), ATTENTION_OUTPUT)


# ----------------------------------------------------------------------------------------------------------
# The key/value cache (t5x style; the module docstring has the contract).
# ----------------------------------------------------------------------------------------------------------


def read_cache_index(module: nn.Module, decode: bool, prefill: bool, batch: int) -> tuple[Any | None, Array | None]:
  """(the "cache_index" variable of `module`, the index to decode from) for a model-level call.

  The variable is None outside decode/prefill; the index is None unless this call steps from a filled cache
  (decode=True on a model that has one), and then it is each example's next slot, [batch] int32.
  """
  if not (decode or prefill):
    return None, None
  stepping = decode and module.has_variable("cache", "cache_index")
  cache_index = module.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
  return cache_index, (cache_index.value if stepping else None)


def write_cache_index(cache_index: Any | None, decode_index: Array | None, prefill: bool, prefill_lengths: Array | None,
                      length: int, batch: int) -> None:
  """Advances the cache index after a call: by `length` after a decode step, to `prefill_lengths` (default:
  the prompt length) after a prefill; nothing otherwise."""
  if cache_index is None:
    return
  if decode_index is not None:
    cache_index.value = decode_index + length
  elif prefill:
    lengths = length if prefill_lengths is None else prefill_lengths
    cache_index.value = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (batch,))


def update_kv_cache(module: nn.Module, key: Array, value: Array, *, decode: bool, prefill: bool,
                    decode_index: Array | None, max_decode_length: int | None, window: int | None = None,
                    axes: tuple[str, ...] | None = None, who: str = "attention") -> tuple[Array, Array, Array | None]:
  """Keeps `module`'s "cached_key"/"cached_value" ([batch, cache_length, kv_heads, head_dim]) and returns the
  (key, value, mask) that attention should use.

  Outside decode/prefill the inputs come back with mask None. `decode=True` without a cache creates a zero
  cache of `max_decode_length` slots (default: the input length) and leaves the inputs as they are; a prefill
  writes them into slots 0..T-1. A decode step from a filled cache writes the n new keys/values into slots
  decode_index .. decode_index + n - 1 of each example and returns the whole cache with the decode mask (slots
  up to each query's own, within `window` when given); the caller then attends without causality. `axes`
  names the logical axes of the returned whole cache; `who` prefixes the errors.
  """
  if not (decode or prefill):
    return key, value, None
  stepping = decode and module.has_variable("cache", "cached_key")
  length = max_decode_length or key.shape[1]
  cached_key = module.variable("cache", "cached_key", jnp.zeros, key.shape[:1] + (length,) + key.shape[2:], key.dtype)
  cached_value = module.variable("cache", "cached_value", jnp.zeros, cached_key.value.shape, value.dtype)
  if stepping:
    if decode_index is None:
      raise ValueError(f"{who}: decoding from a filled cache needs its index (decode_index), got None")
    length, num_new = cached_key.value.shape[1], key.shape[1]
    if num_new == 1:
      slot = (jnp.arange(length)[None, :] == decode_index[:, None])[:, :, None, None]
      key = jnp.where(slot, key, cached_key.value)
      value = jnp.where(slot, value, cached_value.value)
    else:  # several tokens per example: slots decode_index .. decode_index + n - 1
      write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice(cache, new, (start, 0, 0)))
      key = write(cached_key.value, key, decode_index)
      value = write(cached_value.value, value, decode_index)
    if axes is not None:
      key, value = nn.with_logical_constraint(key, axes), nn.with_logical_constraint(value, axes)
    cached_key.value, cached_value.value = key, value
    return key, value, decode_mask(decode_index, length, num_new, window)
  if prefill:
    if key.shape[1] > cached_key.value.shape[1]:
      raise ValueError(f"{who} prefill: prompt length {key.shape[1]} exceeds the cache length "
                       f"{cached_key.value.shape[1]}")
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, 0, 0))
  return key, value, None


# ----------------------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------------------


class Dense(nn.Module):
  """x @ kernel (+ bias), kernel [in, out] with logical axes `kernel_axes`; computes in `dtype`."""

  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool
  dtype: Any
  param_dtype: Any
  init_std: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = param_with_axes("kernel", nn.initializers.normal(self.init_std), (x.shape[-1], self.features),
                             self.param_dtype, axes=self.kernel_axes)
    y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = param_with_axes("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype,
                             axes=self.kernel_axes[1:])
      y = y + bias.astype(self.dtype)
    return y


class Embed(nn.Module):
  """An embedding table [num_embeddings, features] with logical axes; `attend` is the tied output layer."""

  num_embeddings: int
  features: int
  axes: tuple[str, str]
  dtype: Any
  param_dtype: Any
  init_std: float

  def setup(self):
    self.embedding = param_with_axes("embedding", nn.initializers.normal(self.init_std),
                                     (self.num_embeddings, self.features), self.param_dtype, axes=self.axes,
                                     module=self)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array, float32_output: bool = False) -> Array:
    """x @ embedding.T (the LM head), computed in `dtype` and returned as float32.

    Training (the default): the matmul's output stays in `dtype` (as under PyTorch autocast) so that its two
    backward matmuls also run in `dtype`; asking for a float32 output instead would push them to float32 inputs,
    ~30% of opt-125m's FLOPs. Softmax and loss then work on the float32 cast.

    `float32_output` (inference, which has no backward pass): the same `dtype` inputs, but the matmul sums its
    products in float32 and returns them without rounding to `dtype` first (preferred_element_type; the same as
    the default for a float32 model). In bfloat16 a logit between 16 and 32 moves in steps of 0.125, so greedy
    decoding met exact ties for the top token (5% of SmolLM2's positions on SNI text), broken by the lowest id,
    and log-probabilities were off by up to 0.17 nats.
    """
    embedding = self.embedding.astype(self.dtype)
    if float32_output:
      return jnp.einsum("...d,vd->...v", x, embedding, preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", x, embedding).astype(jnp.float32)


class OutputLayer(nn.Module):
  """An untied LM head: kernel [width, vocab] (logical axes "embed", "vocab"; the parameter path of a Dense
  named like it), float32 logits computed in `dtype` as `Embed.attend` does (`float32_output` too). The kernel is
  an attribute (`setup`), so a loss that runs the head itself can take it without a call."""

  vocab_size: int
  width: int
  dtype: Any
  param_dtype: Any
  init_std: float

  def setup(self):
    self.kernel = param_with_axes("kernel", nn.initializers.normal(self.init_std), (self.width, self.vocab_size),
                                  self.param_dtype, axes=("embed", "vocab"), module=self)

  def __call__(self, x: Array, float32_output: bool = False) -> Array:
    x, kernel = x.astype(self.dtype), self.kernel.astype(self.dtype)
    if float32_output:
      return jnp.matmul(x, kernel, preferred_element_type=jnp.float32)
    return jnp.matmul(x, kernel).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# The layer stack: scan or a loop, with rematerialization.
# ----------------------------------------------------------------------------------------------------------

ATTENTION_OUTPUT = "attention_output"  # the checkpoint_name of attention's output (XLA's path)
CUDNN_ATTENTION_FORWARD = "dot_product_attention_fwd"  # the prefix of jax's cuDNN forward primitive's name


def save_weight_dots_and_attention(prim: Any, *avals: Any, **params: Any) -> bool:
  """A `jax.checkpoint` policy: the weight matmuls' outputs (as "dots_with_no_batch_dims") and attention's.

  Attention's outputs are the cuDNN forward primitive's (its output and the softmax statistics its backward
  kernel reads), so the backward pass runs no attention forward at all; on XLA's path, the output named
  ATTENTION_OUTPUT, so the output projection's gradient needs no recomputed attention (the backward still
  recomputes the probabilities). Costs one [batch, length, heads * head_dim] tensor per layer (and the
  statistics, [batch, heads, length] float32).
  """
  if getattr(prim, "name", "").startswith(CUDNN_ATTENTION_FORWARD):
    return True
  if jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *avals, **params):
    return True
  return bool(_SAVE_ATTENTION_OUTPUT(prim, *avals, **params))


_SAVE_ATTENTION_OUTPUT = jax.checkpoint_policies.save_only_these_names(ATTENTION_OUTPUT)

REMAT_POLICIES: dict[str, Any] = {
    "full": None,  # save nothing: recompute the whole layer
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_with_no_batch_dims_and_attention": save_weight_dots_and_attention,
}


def remat_policy(name: str) -> Any:
  """The `jax.checkpoint` policy of a config's `remat_policy` (`REMAT_POLICIES`' keys)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat_policy: expected one of {('none', *REMAT_POLICIES)}, got {name!r}")
  return REMAT_POLICIES[name]


def run_layers(layer_cls: Callable[..., nn.Module], layer_args: Sequence[Any], x: Array, *inputs: Any, num_layers: int,
               scan_layers: bool, remat: str) -> Array:
  """Runs `num_layers` blocks `layer_cls(*layer_args)` over x: each is called as `(x, *inputs)` and returns
  (x, None); `inputs` (masks, indices, rotary tables) are the same for every layer.

  Called inside a compact method: scanned, the blocks' params and caches stack on a leading axis named
  "layers" (in params_axes) under the submodule "layers"; unscanned, they are "layers_0", "layers_1", ....
  `remat` other than "none" rematerializes each block in the backward pass with that policy.
  """
  if remat != "none":
    layer_cls = nn.remat(layer_cls, policy=remat_policy(remat), prevent_cse=not scan_layers)
  if scan_layers:
    scanned = nn_partitioning.scan_with_axes(layer_cls, variable_axes={
        "params": 0,
        "cache": 0
    }, split_rngs={
        "params": True,
        "dropout": True
    }, in_axes=(nn.broadcast,) * len(inputs), length=num_layers, axis_name="layers")
    x, _ = scanned(*layer_args, name="layers")(x, *inputs)
    return x
  for i in range(num_layers):
    x, _ = layer_cls(*layer_args, name=f"layers_{i}")(x, *inputs)
  return x
