"""The Llama family's Hugging Face parameter layout (Llama 2/3, Mistral, Qwen2, SmolLM2): Flax path <-> tensor name.

Where it sits: one family of `checkpoints/layouts/` (the package says how a family's tables are used);
`checkpoints/layout.py` reads and writes state dicts through these tables for every `LlamaConfig`.
`LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` share these names:
  embed_tokens/embedding                  model.embed_tokens.weight                [vocab, hidden]
  layers.{i}: input_layernorm/scale       model.layers.{i}.input_layernorm.weight  [hidden]
              self_attn/{q,k,v,o}_proj/kernel (+ bias)   model.layers.{i}.self_attn.{q,k,v,o}_proj.weight (.bias)
              post_attention_layernorm/scale
              mlp/{gate,up,down}_proj/kernel (+ bias)
  norm/scale                              model.norm.weight                        [hidden]
  lm_head/kernel [hidden, vocab]          lm_head.weight [vocab, hidden]  (untied heads only)
A tied head (`tie_word_embeddings`) has no parameter: `lm_head.weight`, where a file has it, is checked against
the embedding on reading and never written. `LlamaModel` state dicts (bare names) read as well. The rotary
embedding's `inv_freq` buffer, which older files carry, is skipped on reading (`IGNORED_BUFFERS`).
"""

from __future__ import annotations

import re

from optiml_jax.models import llama_config

FAMILY = "llama"
PREFIX = "model."
READ_PREFIXES: tuple[str, ...] = ()
# Buffers, not parameters, that older files carry and transformers skips on loading: transformers < 4.31 saved the
# rotary embedding's persistent `inv_freq` in every layer (`model.layers.{i}.self_attn.rotary_emb.inv_freq`);
# `from_pretrained` drops any `rotary_emb.inv_freq` key of a model that has such a buffer, as these models do.
IGNORED_BUFFERS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

Table = dict[tuple[str, ...], tuple[str, tuple[int, ...]]]


def layer_table(config: llama_config.LlamaConfig) -> Table:
  """Parameters of one decoder layer: Flax path -> (HF name inside `layers.{i}.`, Flax shape)."""
  hidden, ffn = config.hidden_size, config.intermediate_size
  table: Table = {}

  def linear(path: tuple[str, ...], d_in: int, d_out: int, bias: bool) -> None:
    table[path + ("kernel",)] = (".".join(path) + ".weight", (d_in, d_out))
    if bias:
      table[path + ("bias",)] = (".".join(path) + ".bias", (d_out,))

  table[("input_layernorm", "scale")] = ("input_layernorm.weight", (hidden,))
  linear(("self_attn", "q_proj"), hidden, config.q_width, config.attention_bias)
  linear(("self_attn", "k_proj"), hidden, config.kv_width, config.attention_bias)
  linear(("self_attn", "v_proj"), hidden, config.kv_width, config.attention_bias)
  linear(("self_attn", "o_proj"), config.q_width, hidden, config.attention_out_bias)
  table[("post_attention_layernorm", "scale")] = ("post_attention_layernorm.weight", (hidden,))
  linear(("mlp", "gate_proj"), hidden, ffn, config.mlp_bias)
  linear(("mlp", "up_proj"), hidden, ffn, config.mlp_bias)
  linear(("mlp", "down_proj"), ffn, hidden, config.mlp_bias)
  return table


def top_table(config: llama_config.LlamaConfig) -> Table:
  """Parameters outside the layers and the head: Flax path -> (HF name after `model.`, Flax shape)."""
  return {
      ("embed_tokens", "embedding"): ("embed_tokens.weight", (config.vocab_size, config.hidden_size)),
      ("norm", "scale"): ("norm.weight", (config.hidden_size,)),
  }


def head_table(config: llama_config.LlamaConfig) -> Table:
  """The untied LM head (full HF name, no prefix); nothing when it is tied to the embedding."""
  if config.tie_word_embeddings:
    return {}
  return {("lm_head", "kernel"): ("lm_head.weight", (config.hidden_size, config.vocab_size))}


def ties_head(config: llama_config.LlamaConfig) -> bool:
  return bool(config.tie_word_embeddings)
