"""Each model family's Hugging Face parameter layout, dispatched by the config's family (`config.family`).

Where it sits: under `checkpoints/layout.py`, which holds the machinery every family shares (flatten,
validation, state dict <-> params) and asks `for_config(config)` for the tables of one family. A family's
module (`opt.py`, `llama.py`) lists its parameters as tables of Flax path -> (Hugging Face name, Flax shape):

  top(config)    parameters outside the layers; names after the family's PREFIX ("model.decoder.", "model.")
  layer(config)  one decoder layer; names after `{PREFIX}layers.{i}.`
  head(config)   the untied LM head, full names ("lm_head.weight"); empty when the head is tied
  ties_head(config)  whether the LM head is the token embedding (then `lm_head.weight` is only checked)

Kernels are [in, out] in the tables (Flax) and [out, in] in Hugging Face's files. Adding a family is one module
here and one entry in `_LAYOUTS`; `models/registry.py` names the same families.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from optiml_jax.checkpoints.layouts import llama
from optiml_jax.checkpoints.layouts import opt

Table = dict[tuple[str, ...], tuple[str, tuple[int, ...]]]


@dataclasses.dataclass(frozen=True)
class FamilyLayout:
  """How one family's parameters are named in Hugging Face checkpoints (module docstring).

  Attributes:
    family: the family's name, as `config.family`.
    prefix: the Hugging Face prefix of every tensor but the head, as `*ForCausalLM` writes it.
    read_prefixes: other prefixes accepted on reading (e.g. OPTModel's "decoder."); bare names always are.
    top, layer, head, ties_head: the family's tables (module docstring).
    ignored_buffers: tensor names (searched) that files may carry and that are no parameter: skipped on reading,
      as transformers skips them (Llama's old per-layer `rotary_emb.inv_freq`); None when there are none.
  """

  family: str
  prefix: str
  read_prefixes: tuple[str, ...]
  top: Callable[[Any], Table]
  layer: Callable[[Any], Table]
  head: Callable[[Any], Table]
  ties_head: Callable[[Any], bool]
  ignored_buffers: re.Pattern[str] | None = None


_LAYOUTS = {
    module.FAMILY: FamilyLayout(module.FAMILY, module.PREFIX, module.READ_PREFIXES, module.top_table,
                                module.layer_table, module.head_table, module.ties_head,
                                module.IGNORED_BUFFERS) for module in (opt, llama)
}
FAMILIES = tuple(_LAYOUTS)


def for_config(config: Any) -> FamilyLayout:
  """The layout of `config`'s family (`config.family`); ValueError naming the known families otherwise."""
  family = getattr(config, "family", None)
  if family not in _LAYOUTS:
    raise ValueError(f"no Hugging Face parameter layout for {type(config).__name__} (family {family!r}); "
                     f"known families: {', '.join(FAMILIES)}")
  return _LAYOUTS[family]
