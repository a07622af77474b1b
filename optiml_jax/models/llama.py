"""Flax Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) with t5x's decoder-only call signature.

Where it sits: beside models/opt.py, built from the same pieces (models/layers.py) and called the same way:
the trainer and evaluation get `Llama(config)` from `models/registry.make_model` (`LlamaConfig` lives in
models/llama_config.py) and feed it the packed features of data/packing; checkpoints/layouts/llama.py maps
Hugging Face weights onto the parameter tree defined here; models/partitioning.py maps the logical axis names
of every parameter and activation onto a device mesh.

The architecture, as transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM compute it:
token embedding; per layer x += o_proj(attention(rope(q), rope(k), v)) on RMSNorm(x), then
x += down_proj(silu(gate_proj(h)) * up_proj(h)) on h = RMSNorm(x); a final RMSNorm; the LM head (the
embedding, when `tie_word_embeddings`, else `lm_head`). RMSNorm runs in float32 (eps `rms_norm_eps`); rotary
embeddings rotate the two halves of each query and key head (Hugging Face's `rotate_half`) by position x
`config.rope_inv_freq()` (float32; rope_scaling none, linear or llama3 already applied), before keys are
cached. Grouped-query attention: `num_key_value_heads` key/value heads, each read by heads / kv_heads query
heads. Mistral's `sliding_window`: each token sees at most that many tokens, itself included.

Masks and packing (token id 0 is a real token in these vocabularies: Llama 3's "!", SmolLM2's
<|endoftext|>, so nothing here infers padding from a token id):

  decoder_input_tokens   [[ 1, 11, 12,  1, 21,  0]]
  decoder_segment_ids    [[ 1,  1,  1,  2,  2,  0]]
  decoder_positions      [[ 0,  1,  2,  0,  1,  0]]

  Query i attends key j iff j <= i and segment[i] == segment[j] (and i - j < sliding_window when set).
  `decoder_target_tokens` is accepted and not used for the mask (OPT reads target == 0 as padding; here 0 may
  be a real target). Without segment ids the row is one causal sequence: trailing padding then sits after the
  real tokens and, under a causal mask, never changes their logits (its own logits are garbage the loss
  weights away). Positions: `decoder_positions` when given, else restarting at each segment when segment ids
  are given, else 0..L-1.

Decoding: the t5x contract of models/opt.py (prefill with `prefill_lengths` for ragged prompts, one or n
tokens per decode call, `logit_positions`), with positions = the example's cache index + offset in a decode
call. The cache holds rotated keys: cached_key / cached_value [batch, cache_length, kv_heads, head_dim] per
layer, cache_index [batch] at the top. `decoder_causal_attention` (t5x's prefix-LM mask) is accepted and
ignored: these are causal language models.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optiml_jax.models import layers
from optiml_jax.models.llama_config import LlamaConfig

Array = jax.Array
param_with_axes = layers.param_with_axes

HEAD_AXES = ("batch", "length", "heads", "kv")
KV_HEAD_AXES = ("batch", "length", "kv_heads", "kv")
EMBED_AXES = ("batch", "length", "embed")


def rotary_tables(positions: Array, inv_freq: Any) -> tuple[Array, Array]:
  """(cos, sin) [batch, length, head_dim // 2] float32 of positions x inverse frequencies."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
  """Rotates [batch, length, heads, head_dim] x by the tables: the first half of each head pairs with the
  second (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32, returned in x's dtype."""
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., :half], x32[..., half:]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis, computed in float32, returned in `dtype`."""

  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    scale = param_with_axes("scale", nn.initializers.ones_init(), (x.shape[-1],), self.param_dtype, axes=("embed",))
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary q/k, optional biases and a t5x-style KV cache of kv_heads heads.

  The slot index (= position) of the tokens being decoded comes from the caller (`Llama`'s cache_index).
  """

  config: LlamaConfig
  enable_dropout: bool
  decode: bool
  prefill: bool
  max_decode_length: int | None

  @nn.compact
  def __call__(self, x: Array, mask: Array | layers.SegmentLayout | None, decode_index: Array | None, cos: Array,
               sin: Array) -> Array:
    cfg = self.config
    assert cfg.head_dim is not None and cfg.num_key_value_heads is not None  # set by LlamaConfig.__post_init__
    dense = functools.partial(layers.Dense, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              init_std=cfg.initializer_range)
    batch, length = x.shape[:2]

    query = dense(cfg.q_width, ("embed", "joined_kv"), cfg.attention_bias, name="q_proj")(x)
    key = dense(cfg.kv_width, ("embed", "joined_kv"), cfg.attention_bias, name="k_proj")(x)
    value = dense(cfg.kv_width, ("embed", "joined_kv"), cfg.attention_bias, name="v_proj")(x)
    query = query.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim)
    key = key.reshape(batch, length, cfg.num_key_value_heads, cfg.head_dim)
    value = value.reshape(batch, length, cfg.num_key_value_heads, cfg.head_dim)
    query = nn.with_logical_constraint(apply_rotary(query, cos, sin), HEAD_AXES)
    key = nn.with_logical_constraint(apply_rotary(key, cos, sin), KV_HEAD_AXES)
    value = nn.with_logical_constraint(value, KV_HEAD_AXES)

    window = cfg.sliding_window
    is_causal, implementation = True, layers.resolve_attention_impl(cfg.attention_impl, cfg.dtype, cfg.head_dim)
    key, value, step_mask = layers.update_kv_cache(self, key, value, decode=self.decode, prefill=self.prefill,
                                                   decode_index=decode_index, max_decode_length=self.max_decode_length,
                                                   window=window, axes=KV_HEAD_AXES, who="Llama")
    if step_mask is not None:  # the window is in the decode mask; a few queries: no fused kernel to gain
      mask, is_causal, implementation, window = step_mask, False, "xla", None
    elif window is not None and window >= length:
      window = None  # wider than the input: nothing to cut

    dropout_rng = None
    if self.enable_dropout and cfg.attention_dropout > 0.0:
      dropout_rng = self.make_rng("dropout")
    out = layers.dot_product_attention(query, key, value, mask, is_causal, cfg.attention_dropout, dropout_rng,
                                       implementation, window)
    out = nn.with_logical_constraint(out, HEAD_AXES)
    out = out.reshape(batch, length, cfg.q_width)
    return dense(cfg.hidden_size, ("joined_kv", "embed"), cfg.attention_out_bias, name="o_proj")(out)


class MLP(nn.Module):
  """SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x))."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dense = functools.partial(layers.Dense, use_bias=cfg.mlp_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              init_std=cfg.initializer_range)
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj")(x)
    h = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj")(h)


class DecoderLayer(nn.Module):
  """One pre-norm block: x + attention(RMSNorm(x)), then + MLP(RMSNorm(.)); dropout on the branches when
  enabled and `config.dropout` > 0 (Llama has none)."""

  config: LlamaConfig
  enable_dropout: bool = False
  decode: bool = False
  prefill: bool = False
  max_decode_length: int | None = None

  @nn.compact
  def __call__(self, x: Array, mask: Array | layers.SegmentLayout | None, decode_index: Array | None, cos: Array,
               sin: Array) -> tuple[Array, None]:
    cfg = self.config
    norm = functools.partial(RMSNorm, cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype)
    dropout = nn.Dropout(rate=cfg.dropout, deterministic=not self.enable_dropout)

    h = Attention(cfg, self.enable_dropout, self.decode, self.prefill, self.max_decode_length,
                  name="self_attn")(norm(name="input_layernorm")(x), mask, decode_index, cos, sin)
    x = nn.with_logical_constraint(x + dropout(h), EMBED_AXES)
    h = MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
    return nn.with_logical_constraint(x + dropout(h), EMBED_AXES), None


class Llama(nn.Module):
  """Llama-family decoder; returns float32 logits [batch, length, vocab_size].

  Call signature of t5x's decoder-only models (see the module docstring for masks, packing and decoding).
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, decoder_input_tokens: Array, decoder_target_tokens: Array | None = None,
               decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
               decoder_causal_attention: Array | None = None, *, enable_dropout: bool = True, decode: bool = False,
               max_decode_length: int | None = None, prefill: bool = False, prefill_lengths: Array | None = None,
               logit_positions: Array | None = None, return_hidden: bool = False, float32_logits: bool = False) -> Any:
    """Float32 logits [batch, length, vocab_size]; [batch, k, vocab_size] at `logit_positions` ([batch, k]
    int32 indices along length) when given (the LM head then runs only there). `return_hidden=True`: (the
    final hidden states, the LM head's matrix [vocab_size, hidden_size]) instead, as models/opt.py does.
    `float32_logits`: the LM head returns float32 sums, not logits rounded to the compute dtype (inference; as
    models/opt.py)."""
    del decoder_target_tokens  # Not a padding signal: token 0 is real here (module docstring).
    del decoder_causal_attention  # Causal language models (module docstring).
    cfg = self.config
    if decode and prefill:
      raise ValueError("Llama: decode and prefill cannot both be true; prefill first, then decode")
    batch, length = decoder_input_tokens.shape

    cache_index, decode_index = layers.read_cache_index(self, decode, prefill, batch)
    mask = None
    if decode_index is not None:
      positions = decode_index[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    else:
      mask = layers.training_mask(cfg, None, decoder_segment_ids, enable_dropout, cfg.sliding_window)
      positions = layers.default_positions(batch, length, decoder_positions, decoder_segment_ids)
    cos, sin = rotary_tables(positions, np.asarray(cfg.rope_inv_freq(), np.float32))

    embed_tokens = layers.Embed(cfg.vocab_size, cfg.hidden_size, ("vocab", "embed"), cfg.dtype, cfg.param_dtype,
                                cfg.initializer_range, name="embed_tokens")
    x = nn.with_logical_constraint(embed_tokens(decoder_input_tokens), EMBED_AXES)

    x = layers.run_layers(DecoderLayer, (cfg, enable_dropout, decode, prefill, max_decode_length), x, mask,
                          decode_index, cos, sin, num_layers=cfg.num_hidden_layers, scan_layers=cfg.scan_layers,
                          remat=cfg.remat_policy)

    x = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name="norm")(x)
    if logit_positions is not None:
      x = jnp.take_along_axis(x, logit_positions[:, :, None], axis=1)
    if cfg.tie_word_embeddings:
      if return_hidden:
        return x, embed_tokens.embedding
      logits = embed_tokens.attend(x, float32_logits)
    else:
      lm_head = layers.OutputLayer(cfg.vocab_size, cfg.hidden_size, cfg.dtype, cfg.param_dtype, cfg.initializer_range,
                                   name="lm_head")
      if return_hidden:
        return x, lm_head.kernel.T
      logits = lm_head(x, float32_logits)

    layers.write_cache_index(cache_index, decode_index, prefill, prefill_lengths, length, batch)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
