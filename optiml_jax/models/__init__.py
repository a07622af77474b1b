"""Models: the model families behind one seam (`registry`), their Flax modules and the rule table.

Where it sits: between the packed data (data/packing) and the trainer / evaluation, which ask
`registry.make_model(config)` (also `optiml_jax.models.make_model`) for the Flax module of any family and
shard its parameters with `partitioning`; the checkpoint side (checkpoints/layouts/) maps Hugging Face weights
onto the parameter trees defined here.

  registry.py      model_type / preset name -> config -> Flax module; decode-cache init
  opt_config.py    OPTConfig             opt.py     OPT (learned positions, LayerNorm, ReLU)
  llama_config.py  LlamaConfig           llama.py   Llama (Llama 2/3, Mistral, Qwen2, SmolLM2: RoPE, RMSNorm,
                                                    SwiGLU, grouped-query attention)
  layers.py        what both families share: masks and positions, attention, Dense/Embed, the layer stack
                   (scan, remat), the key/value cache
  partitioning.py  logical axis names -> device mesh (the one rule table)
  shapes.py        the layer widths the planner reads
"""

from __future__ import annotations

from typing import Any


def make_model(config: Any) -> Any:
  """The Flax module of a model config of any family: `registry.make_model`, imported on the first call so that
  importing a config module (opt_config, llama_config) does not load every family's module."""
  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.make_model(config)
