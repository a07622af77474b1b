"""Flax OPT (Zhang et al. 2022) with t5x's decoder-only call signature.

Where it sits: the trainer and evaluation call `OPT(config)` (`OPTConfig` lives in models/opt_config.py) on
the packed features that data/packing produces (`decoder_input_tokens`, `decoder_target_tokens`,
`decoder_segment_ids`, `decoder_positions`);
convert.py maps Hugging Face OPT weights onto the parameter tree defined here; models/partitioning.py maps
the logical axis names that every parameter and activation carries onto a device mesh.

Masks and packing, a worked example (t5x convention: token 0 is padding):

  decoder_input_tokens   [[ 2, 11, 12,  2, 21,  0]]
  decoder_target_tokens  [[11, 12,  2, 21,  2,  0]]
  decoder_segment_ids    [[ 1,  1,  1,  2,  2,  0]]
  decoder_positions      [[ 0,  1,  2,  0,  1,  0]]

  Query i attends key j iff j <= i, segment[i] == segment[j] and target[j] != 0 (or j == i, so that no row
  is empty). Positions index OPT's learned table at position + 2 (Hugging Face's offset). Without segment ids
  the row is one sequence; without positions they are 0..L-1 (restarting at each segment when segment ids
  are given). Hugging Face derives positions from the attention mask (cumsum); for unpadded input that is
  the same 0..L-1.

Decoding (t5x contract): `decode=True` on a model without a "cache" collection creates a zero cache of
`max_decode_length` slots (default: the input length) and runs a normal forward pass; `prefill=True` runs a
normal forward pass over a prompt and writes its keys/values into slots 0..T-1, setting each example's cache
index to its `prefill_lengths` entry; every later `decode=True` call feeds one token per example, at position
= slot = that example's cache index, attends to slots <= it, and increments the index. A decode call may also
feed n tokens per example (extending every example by n: slots index .. index + n - 1, each token seeing the
slots up to its own), which is how the options of a prompt are scored on one prefilled prompt. Callers stop
before an index reaches `max_decode_length` (a full cache is not detected inside jit).

`decoder_causal_attention` (t5x's prefix-LM inputs mask) is accepted and ignored by design: OPT and OPT-IML
are purely causal language models.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp

from optiml_jax.models.opt_config import LAYER_NORM_EPS
from optiml_jax.models.opt_config import POSITION_OFFSET
from optiml_jax.models.opt_config import OPTConfig

Array = jax.Array
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


def attention_mask(decoder_target_tokens: Array | None, decoder_segment_ids: Array | None) -> Array | None:
  """The non-causal part of the training mask, [batch, 1, q_len, kv_len] bool, or None when unrestricted.

  A key is visible when it is not padding (target != 0) and in the query's segment; a query always sees
  itself, so no row is empty (padding rows then give finite, ignored values). Causality is applied by
  `jax.nn.dot_product_attention(is_causal=True)`, which lets cuDNN skip the masked half.
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


def decode_mask(cache_index: Array, cache_length: int, num_queries: int = 1) -> Array:
  """[batch, 1, num_queries, cache_length] bool: query q of an example sees slots 0..cache_index + q."""
  last = cache_index[:, None] + jnp.arange(num_queries)[None, :]
  return (jnp.arange(cache_length)[None, None, :] <= last[:, :, None])[:, None, :, :]


def resolve_attention_impl(implementation: str | None, dtype: Any, head_dim: int) -> Literal["xla", "cudnn"]:
  """The kernel `jax.nn.dot_product_attention` should use: `implementation` itself when given, else (None)
  cuDNN flash attention where it runs, XLA elsewhere.

  cuDNN runs on a CUDA GPU of compute capability 8.0 or more (A100, H100, H200) with bf16/fp16 compute and a
  head_dim that is a multiple of 8 up to 128 (every OPT size). XLA's kernel materializes the [batch, heads,
  length, length] scores, which at OPT's 2048 tokens costs gigabytes per layer (on an H100, opt-125m at
  16 x 2048 without remat does not fit), so None never leaves a GPU user on it by accident. Called at trace
  time; the answer follows the default backend's first device.
  """
  if implementation == "xla":
    return "xla"
  if implementation == "cudnn":
    return "cudnn"
  if implementation is not None:
    raise ValueError(f"attention implementation: expected None, 'xla' or 'cudnn', got {implementation!r}")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16) or head_dim % 8 or head_dim > 128:
    return "xla"
  device = jax.devices()[0]
  try:
    capability = float(getattr(device, "compute_capability", "0") or 0)
  except ValueError:
    capability = 0.0
  return "cudnn" if device.platform == "gpu" and capability >= 8.0 else "xla"


def dot_product_attention(query: Array, key: Array, value: Array, mask: Array | None, is_causal: bool,
                          dropout_rate: float = 0.0, dropout_rng: Array | None = None,
                          implementation: Literal["xla", "cudnn"] | None = None) -> Array:
  """Softmax attention over [batch, length, heads, head_dim] inputs, scaled by 1/sqrt(head_dim).

  Without dropout this is `jax.nn.dot_product_attention` (cuDNN flash attention when implementation is
  "cudnn"); it has no attention dropout, so with `dropout_rng` the probabilities are formed explicitly.
  """
  if dropout_rng is None or dropout_rate == 0.0:
    return jax.nn.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                        implementation=implementation)
  logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(query.shape[-1])
  visible = jnp.ones(logits.shape[-2:], dtype=bool)
  if is_causal:
    visible = jnp.tril(visible)
  if mask is not None:
    visible = visible & mask
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
  return jnp.einsum("bnts,bsnh->btnh", probs, value)


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


class LayerNorm(nn.Module):
  """Layer norm over the last axis (eps 1e-5), computed in float32, returned in `dtype`."""

  use_affine: bool
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + LAYER_NORM_EPS)
    if self.use_affine:
      features = (x.shape[-1],)
      scale = param_with_axes("scale", nn.initializers.ones_init(), features, self.param_dtype, axes=("embed",))
      bias = param_with_axes("bias", nn.initializers.zeros_init(), features, self.param_dtype, axes=("embed",))
      y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


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

  def attend(self, x: Array) -> Array:
    """x @ embedding.T (the LM head), computed in `dtype` and returned as float32.

    The matmul's output stays in `dtype` (as under PyTorch autocast) so that its two backward matmuls also run
    in `dtype`; asking for a float32 output instead would push them to float32 inputs, ~30% of opt-125m's
    FLOPs. Softmax and loss then work on the float32 cast.
    """
    return jnp.einsum("...d,vd->...v", x, self.embedding.astype(self.dtype)).astype(jnp.float32)


class Attention(nn.Module):
  """OPT self-attention with fused [hidden, hidden] q/k/v/out projections and a t5x-style KV cache.

  Cache variables ("cache" collection): cached_key and cached_value [batch, cache_length, heads, head_dim].
  The slot index (= position) of the token being decoded comes from the caller (`OPT`'s cache_index).
  """

  config: OPTConfig
  enable_dropout: bool
  decode: bool
  prefill: bool
  max_decode_length: int | None

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, decode_index: Array | None) -> Array:
    cfg = self.config
    dense = functools.partial(Dense, features=cfg.hidden_size, use_bias=cfg.enable_bias, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype, init_std=cfg.init_std)

    def heads(y: Array) -> Array:
      y = y.reshape(y.shape[:2] + (cfg.num_attention_heads, cfg.head_dim))
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    query = heads(dense(kernel_axes=("embed", "joined_kv"), name="q_proj")(x))
    key = heads(dense(kernel_axes=("embed", "joined_kv"), name="k_proj")(x))
    value = heads(dense(kernel_axes=("embed", "joined_kv"), name="v_proj")(x))

    is_causal, implementation = True, resolve_attention_impl(cfg.attention_impl, cfg.dtype, cfg.head_dim)
    if self.decode or self.prefill:
      stepping = self.decode and self.has_variable("cache", "cached_key")
      length = self.max_decode_length or key.shape[1]
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape[:1] + (length,) + key.shape[2:], key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, cached_key.value.shape, value.dtype)
      if stepping:
        if decode_index is None:
          raise ValueError("OPT attention: decoding from a filled cache needs its index (decode_index), got None")
        length = cached_key.value.shape[1]
        if x.shape[1] == 1:
          slot = (jnp.arange(length)[None, :] == decode_index[:, None])[:, :, None, None]
          key = jnp.where(slot, key, cached_key.value)
          value = jnp.where(slot, value, cached_value.value)
        else:  # several tokens per example: slots decode_index .. decode_index + n - 1
          write = jax.vmap(lambda cache, new, start: jax.lax.dynamic_update_slice(cache, new, (start, 0, 0)))
          key = write(cached_key.value, key, decode_index)
          value = write(cached_value.value, value, decode_index)
        cached_key.value, cached_value.value = key, value
        # A few queries per example: nothing for a fused flash kernel to gain.
        mask, is_causal, implementation = decode_mask(decode_index, length, x.shape[1]), False, "xla"
      elif self.prefill:
        if key.shape[1] > cached_key.value.shape[1]:
          raise ValueError(f"OPT prefill: prompt length {key.shape[1]} exceeds the cache length "
                           f"{cached_key.value.shape[1]}")
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, 0, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, (0, 0, 0, 0))

    dropout_rng = None
    if self.enable_dropout and cfg.attention_dropout > 0.0:
      dropout_rng = self.make_rng("dropout")
    out = dot_product_attention(query, key, value, mask, is_causal, cfg.attention_dropout, dropout_rng, implementation)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    out = out.reshape(out.shape[:2] + (cfg.hidden_size,))
    return dense(kernel_axes=("joined_kv", "embed"), name="out_proj")(out)


class DecoderLayer(nn.Module):
  """One OPT block: self-attention and ReLU feed-forward, each a residual branch, pre- or post-LN."""

  config: OPTConfig
  enable_dropout: bool = False
  decode: bool = False
  prefill: bool = False
  max_decode_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, decode_index: Array | None) -> tuple[Array, None]:
    cfg = self.config
    norm = functools.partial(LayerNorm, use_affine=cfg.layer_norm_elementwise_affine, dtype=cfg.dtype,
                             param_dtype=cfg.param_dtype)
    dense = functools.partial(Dense, use_bias=cfg.enable_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              init_std=cfg.init_std)
    dropout = nn.Dropout(rate=cfg.dropout, deterministic=not self.enable_dropout)
    embed_axes = ("batch", "length", "embed")
    pre_ln = cfg.do_layer_norm_before

    residual = x
    h = norm(name="self_attn_layer_norm")(x) if pre_ln else x
    h = Attention(cfg, self.enable_dropout, self.decode, self.prefill, self.max_decode_length,
                  name="self_attn")(h, mask, decode_index)
    x = residual + dropout(h)
    x = x if pre_ln else norm(name="self_attn_layer_norm")(x)
    x = nn.with_logical_constraint(x, embed_axes)

    residual = x
    h = norm(name="final_layer_norm")(x) if pre_ln else x
    h = nn.relu(dense(features=cfg.ffn_dim, kernel_axes=("embed", "mlp"), name="fc1")(h))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = dense(features=cfg.hidden_size, kernel_axes=("mlp", "embed"), name="fc2")(h)
    x = residual + dropout(h)
    x = x if pre_ln else norm(name="final_layer_norm")(x)
    return nn.with_logical_constraint(x, embed_axes), None


def _remat_policy(name: str) -> Any:
  return {
      "full": None,
      "dots": jax.checkpoint_policies.dots_saveable,
      "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  }[name]


class OPT(nn.Module):
  """OPT decoder with the tied LM head; returns float32 logits [batch, length, vocab_size].

  Call signature of t5x's decoder-only models (see the module docstring for masks, packing and decoding).
  """

  config: OPTConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Array | None = None,
               decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
               decoder_causal_attention: Array | None = None, *, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: int | None = None, prefill: bool = False, prefill_lengths: Array | None = None,
               logit_positions: Array | None = None) -> Array:
    """Float32 logits [batch, length, vocab_size]; [batch, k, vocab_size] at `logit_positions` ([batch, k]
    int32 indices along length) when given: the LM head, which dominates small models, then runs only where
    the trainer needs a loss (trainer/step.py)."""
    del decoder_causal_attention  # OPT is purely causal (module docstring).
    cfg = self.config
    if decode and prefill:
      raise ValueError("OPT: decode and prefill cannot both be true; prefill first, then decode")
    batch, length = decoder_input_tokens.shape

    decode_index, mask, stepping = None, None, False
    if decode or prefill:
      stepping = decode and self.has_variable("cache", "cache_index")
      cache_index = self.variable("cache", "cache_index", jnp.zeros, (batch,), jnp.int32)
    if stepping:
      decode_index = cache_index.value
      # Past the position table only the padding of a multi-token call can go (callers keep real tokens
      # inside the context): clamp it there rather than read NaN rows that masked attention would spread.
      positions = jnp.minimum(decode_index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :],
                              cfg.max_position_embeddings - 1)
    else:
      mask = attention_mask(decoder_target_tokens, decoder_segment_ids)
      if decoder_positions is not None:
        positions = decoder_positions
      elif decoder_segment_ids is not None:
        positions = positions_from_segment_ids(decoder_segment_ids)
      else:
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))

    embed_tokens = Embed(cfg.vocab_size, cfg.embed_dim, ("vocab", "proj") if cfg.has_projections else
                         ("vocab", "embed"), cfg.dtype, cfg.param_dtype, cfg.init_std, name="embed_tokens")
    x = embed_tokens(decoder_input_tokens)
    if cfg.has_projections:
      x = Dense(cfg.hidden_size, ("proj", "embed"), False, cfg.dtype, cfg.param_dtype, cfg.init_std,
                name="project_in")(x)
    x = x + Embed(cfg.max_position_embeddings + POSITION_OFFSET, cfg.hidden_size, ("abspos", "embed"), cfg.dtype,
                  cfg.param_dtype, cfg.init_std, name="embed_positions")(positions + POSITION_OFFSET)
    x = nn.Dropout(rate=cfg.dropout, deterministic=not enable_dropout)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))

    layer_cls = DecoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
    layer_args = (cfg, enable_dropout, decode, prefill, max_decode_length)
    if cfg.scan_layers:  # Params and caches stacked on a leading axis, named "layers" in params_axes.
      scanned = nn_partitioning.scan_with_axes(layer_cls, variable_axes={
          "params": 0,
          "cache": 0
      }, split_rngs={
          "params": True,
          "dropout": True
      }, in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers, axis_name="layers")
      x, _ = scanned(*layer_args, name="layers")(x, mask, decode_index)
    else:
      for i in range(cfg.num_hidden_layers):
        x, _ = layer_cls(*layer_args, name=f"layers_{i}")(x, mask, decode_index)

    if cfg.has_final_layer_norm:
      x = LayerNorm(cfg.layer_norm_elementwise_affine, cfg.dtype, cfg.param_dtype, name="final_layer_norm")(x)
    if cfg.has_projections:
      x = Dense(cfg.embed_dim, ("embed", "proj"), False, cfg.dtype, cfg.param_dtype, cfg.init_std,
                name="project_out")(x)
    if logit_positions is not None:
      x = jnp.take_along_axis(x, logit_positions[:, :, None], axis=1)
    logits = embed_tokens.attend(x).astype(jnp.float32)

    if decode_index is not None:  # stepping: the index was read from the cache
      cache_index.value = decode_index + length
    elif prefill:
      lengths = length if prefill_lengths is None else prefill_lengths
      cache_index.value = jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (batch,))
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def init_decode_cache(config: OPTConfig, batch_size: int, max_decode_length: int) -> Any:
  """A zero "cache" collection for `batch_size` examples of up to `max_decode_length` tokens (no params)."""
  tokens = jnp.ones((batch_size, max_decode_length), jnp.int32)
  shapes = jax.eval_shape(lambda: OPT(config).init(jax.random.PRNGKey(0), tokens, enable_dropout=False, decode=True,
                                                   max_decode_length=max_decode_length))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
