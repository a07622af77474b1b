"""Flax OPT (Zhang et al. 2022) with t5x's decoder-only call signature.

Where it sits: the trainer and evaluation call `OPT(config)` (`OPTConfig` lives in models/opt_config.py) on
the packed features that data/packing produces (`decoder_input_tokens`, `decoder_target_tokens`,
`decoder_segment_ids`, `decoder_positions`);
checkpoints/layouts/opt.py maps Hugging Face OPT weights onto the parameter tree defined here; models/partitioning.py
maps the logical axis names that every parameter and activation carries onto a device mesh. The pieces OPT shares
with the Llama family (masks, attention, Dense/Embed, the layer stack, the key/value cache) live in
models/layers.py and are re-exported here under their old names.

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
from typing import Any

import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp

from optiml_jax.models import layers
from optiml_jax.models.opt_config import LAYER_NORM_EPS
from optiml_jax.models.opt_config import POSITION_OFFSET
from optiml_jax.models.opt_config import OPTConfig

Array = jax.Array
param_with_axes = nn_partitioning.param_with_axes

# Shared with the Llama family (models/layers.py); re-exported here, where tests and older callers find them.
positions_from_segment_ids = layers.positions_from_segment_ids
attention_mask = layers.attention_mask
decode_mask = layers.decode_mask
resolve_attention_impl = layers.resolve_attention_impl
dot_product_attention = layers.dot_product_attention
Dense = layers.Dense
Embed = layers.Embed

# ----------------------------------------------------------------------------------------------------------
# Layers.
# ----------------------------------------------------------------------------------------------------------


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
  def __call__(self, x: Array, mask: Array | layers.SegmentLayout | None, decode_index: Array | None) -> Array:
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
    key, value, step_mask = layers.update_kv_cache(self, key, value, decode=self.decode, prefill=self.prefill,
                                                   decode_index=decode_index, max_decode_length=self.max_decode_length,
                                                   who="OPT")
    if step_mask is not None:  # a few queries per example: nothing for a fused flash kernel to gain
      mask, is_causal, implementation = step_mask, False, "xla"

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
  def __call__(self, x: Array, mask: Array | layers.SegmentLayout | None,
               decode_index: Array | None) -> tuple[Array, None]:
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
               logit_positions: Array | None = None, return_hidden: bool = False, float32_logits: bool = False) -> Any:
    """Float32 logits [batch, length, vocab_size]; [batch, k, vocab_size] at `logit_positions` ([batch, k]
    int32 indices along length) when given: the LM head, which dominates small models, then runs only where
    the trainer needs a loss (trainer/step.py). `return_hidden=True`: (the final hidden states [batch, length
    or k, width] in the compute dtype, the LM head's matrix [vocab_size, width]) instead of logits, for a loss
    that runs the head itself (trainer/chunked_loss.py). `float32_logits`: the LM head's matmul returns its float32
    sums rather than logits rounded to the compute dtype (`layers.Embed.attend`): for inference, whose greedy
    argmax and log-probabilities a bfloat16 rounding changes; training leaves it off (its backward stays in the
    compute dtype)."""
    del decoder_causal_attention  # OPT is purely causal (module docstring).
    cfg = self.config
    if decode and prefill:
      raise ValueError("OPT: decode and prefill cannot both be true; prefill first, then decode")
    batch, length = decoder_input_tokens.shape

    cache_index, decode_index = layers.read_cache_index(self, decode, prefill, batch)
    mask = None
    if decode_index is not None:
      # Past the position table only the padding of a multi-token call can go (callers keep real tokens
      # inside the context): clamp it there rather than read NaN rows that masked attention would spread.
      positions = jnp.minimum(decode_index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :],
                              cfg.max_position_embeddings - 1)
    else:
      mask = layers.training_mask(cfg, decoder_target_tokens, decoder_segment_ids, enable_dropout)
      positions = layers.default_positions(batch, length, decoder_positions, decoder_segment_ids)

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

    x = layers.run_layers(DecoderLayer, (cfg, enable_dropout, decode, prefill, max_decode_length), x, mask,
                          decode_index, num_layers=cfg.num_hidden_layers, scan_layers=cfg.scan_layers,
                          remat=cfg.remat_policy)

    if cfg.has_final_layer_norm:
      x = LayerNorm(cfg.layer_norm_elementwise_affine, cfg.dtype, cfg.param_dtype, name="final_layer_norm")(x)
    if cfg.has_projections:
      x = Dense(cfg.embed_dim, ("embed", "proj"), False, cfg.dtype, cfg.param_dtype, cfg.init_std,
                name="project_out")(x)
    if logit_positions is not None:
      x = jnp.take_along_axis(x, logit_positions[:, :, None], axis=1)
    if return_hidden:
      return x, embed_tokens.embedding
    logits = embed_tokens.attend(x, float32_logits)

    layers.write_cache_index(cache_index, decode_index, prefill, prefill_lengths, length, batch)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def init_decode_cache(config: OPTConfig, batch_size: int, max_decode_length: int) -> Any:
  """A zero "cache" collection for `batch_size` examples of up to `max_decode_length` tokens (no params)."""
  tokens = jnp.ones((batch_size, max_decode_length), jnp.int32)
  shapes = jax.eval_shape(lambda: OPT(config).init(jax.random.PRNGKey(0), tokens, enable_dropout=False, decode=True,
                                                   max_decode_length=max_decode_length))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
