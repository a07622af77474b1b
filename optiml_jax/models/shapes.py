"""The widths of one decoder layer, family-neutral: what the planner's memory and FLOP model reads of a model.

Where it sits: in `optiml_jax.models`, returned by each family's config (`OPTConfig.layer_shapes()`,
`LlamaConfig.layer_shapes()`); `planning/analytic.py` sizes activations, weights and recomputed FLOPs from it
without knowing which family it models.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LayerShapes:
  """Widths of one decoder layer and of the embedding it reads from.

  Attributes:
    hidden: the residual stream's width d.
    heads: query heads.
    q_width: query (and attention output) width, heads x head_dim.
    kv_width: key and value width each, key/value heads x head_dim (smaller than q_width under GQA).
    mlp_width: the feed-forward block's inner width.
    mlp_in_matmuls: matmuls from the normed input to mlp_width: 1 (OPT's fc1) or 2 (SwiGLU's gate and up).
    embed_width: the token embedding's width (OPT-350m's 512; otherwise hidden).
  """

  hidden: int
  heads: int
  q_width: int
  kv_width: int
  mlp_width: int
  mlp_in_matmuls: int
  embed_width: int

  def matmul_params(self) -> int:
    """Weights of the layer's matmuls: q, k, v, the output projection and the feed-forward block."""
    d = self.hidden
    return d * (2 * self.q_width + 2 * self.kv_width) + (self.mlp_in_matmuls + 1) * d * self.mlp_width

  def recomputed_matmul_params(self) -> int:
    """Weights of the matmuls full remat recomputes: all but the last projection (its output feeds only the
    residual sum, which the next layer keeps)."""
    return self.matmul_params() - self.mlp_width * self.hidden
