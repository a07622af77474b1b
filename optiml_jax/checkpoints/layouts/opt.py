"""OPT's Hugging Face parameter layout: which Flax path of `OPT(config)` is which `OPTForCausalLM` tensor.

Where it sits: one family of `checkpoints/layouts/` (the package says how a family's tables are used);
`checkpoints/layout.py` reads and writes state dicts through these tables for every `OPTConfig`.

Names follow Hugging Face's OPT with `model.decoder.` stripped and `.weight` -> kernel/embedding/scale:
  embed_tokens/embedding       model.decoder.embed_tokens.weight      [vocab, word_embed_proj_dim]
  embed_positions/embedding    model.decoder.embed_positions.weight   [max_position_embeddings + 2, hidden]
  project_in/kernel, project_out/kernel (only when word_embed_proj_dim != hidden_size, opt-350m)
  final_layer_norm/{scale,bias} (pre-LN models with affine layer norms)
  layers.{i}: self_attn/{q,k,v,out}_proj/{kernel,bias}, fc1, fc2, self_attn_layer_norm, final_layer_norm
The LM head is always tied to `embed_tokens/embedding`: `lm_head.weight` is checked on reading, never written.
`OPTModel` state dicts (`decoder.` prefix) and bare names read as well.
"""

from __future__ import annotations

from optiml_jax.models import opt_config

FAMILY = "opt"
PREFIX = "model.decoder."  # OPTForCausalLM
READ_PREFIXES = ("decoder.",)  # OPTModel
IGNORED_BUFFERS = None  # OPT's files hold parameters only (transformers ignores no key of OPTForCausalLM)

Table = dict[tuple[str, ...], tuple[str, tuple[int, ...]]]


def layer_table(config: opt_config.OPTConfig) -> Table:
  """Parameters of one decoder layer: Flax path -> (HF name inside `layers.{i}.`, Flax shape)."""
  hidden, ffn = config.hidden_size, config.ffn_dim
  table: Table = {}

  def linear(path: tuple[str, ...], d_in: int, d_out: int) -> None:
    table[path + ("kernel",)] = (".".join(path) + ".weight", (d_in, d_out))
    if config.enable_bias:
      table[path + ("bias",)] = (".".join(path) + ".bias", (d_out,))

  for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
    linear(("self_attn", name), hidden, hidden)
  linear(("fc1",), hidden, ffn)
  linear(("fc2",), ffn, hidden)
  if config.layer_norm_elementwise_affine:
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
      table[(norm, "scale")] = (f"{norm}.weight", (hidden,))
      table[(norm, "bias")] = (f"{norm}.bias", (hidden,))
  return table


def top_table(config: opt_config.OPTConfig) -> Table:
  """Parameters outside the layers: Flax path -> (HF name after `model.decoder.`, Flax shape)."""
  hidden, proj = config.hidden_size, config.embed_dim
  table: Table = {
      ("embed_tokens", "embedding"): ("embed_tokens.weight", (config.vocab_size, proj)),
      ("embed_positions", "embedding"): ("embed_positions.weight", (config.max_position_embeddings + 2, hidden)),
  }
  if proj != hidden:
    table[("project_in", "kernel")] = ("project_in.weight", (proj, hidden))
    table[("project_out", "kernel")] = ("project_out.weight", (hidden, proj))
  if config.do_layer_norm_before and config.layer_norm_elementwise_affine:
    table[("final_layer_norm", "scale")] = ("final_layer_norm.weight", (hidden,))
    table[("final_layer_norm", "bias")] = ("final_layer_norm.bias", (hidden,))
  return table


def head_table(config: opt_config.OPTConfig) -> Table:
  """OPT has no LM head of its own: it is the token embedding."""
  del config
  return {}


def ties_head(config: opt_config.OPTConfig) -> bool:
  del config
  return True
