"""OPT hyper-parameters: `OPTConfig`, the published presets and FLOP counts.

Where it sits: `models/opt.py` builds the Flax module from an `OPTConfig`; `convert.py` reads and writes it
as a Hugging Face config.json (`from_hf` / `to_hf`); the trainer's gin entry point picks a preset and
overrides fields; MFU figures use `flops_per_token`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from optiml_jax.data import special_tokens
from optiml_jax.models import config_checks
from optiml_jax.models import shapes

LAYER_NORM_EPS = 1e-5  # Hugging Face / metaseq OPT.
POSITION_OFFSET = 2  # OPT's learned position table is indexed at position + 2.
REMAT_POLICIES = config_checks.REMAT_POLICIES
ATTENTION_IMPLEMENTATIONS = config_checks.ATTENTION_IMPLEMENTATIONS

# Keys a Hugging Face config.json must have; the others fall back to Hugging Face's OPTConfig defaults.
_HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                "max_position_embeddings")
_HF_DEFAULTS = {
    "word_embed_proj_dim": None,
    "do_layer_norm_before": True,
    "enable_bias": True,
    "layer_norm_elementwise_affine": True,
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "activation_function": "relu",
    "init_std": 0.02
}

# Published OPT sizes (Hugging Face facebook/opt-*): all use vocab 50272 and 2048 positions.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
    "opt-350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                     word_embed_proj_dim=512, do_layer_norm_before=False),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192),
    "opt-2.7b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240),
    "opt-6.7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384),
    "opt-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480),
    "opt-30b": dict(hidden_size=7168, num_hidden_layers=48, num_attention_heads=56, ffn_dim=28672),
    "opt-66b": dict(hidden_size=9216, num_hidden_layers=64, num_attention_heads=72, ffn_dim=36864),
    "opt-175b": dict(hidden_size=12288, num_hidden_layers=96, num_attention_heads=96, ffn_dim=49152),
}
PRESETS = tuple(_PRESETS)


@dataclasses.dataclass(frozen=True)
class OPTConfig:
  """OPT hyper-parameters (Hugging Face OPTConfig names) plus how to compute.

  Attributes:
    vocab_size: rows of the token embedding (and the tied LM head); OPT pads its 50265 BPE ids to 50272.
    hidden_size: model width d.
    num_hidden_layers: decoder layers L.
    num_attention_heads: attention heads; hidden_size must be a multiple.
    ffn_dim: width of the feed-forward block.
    max_position_embeddings: longest sequence; the position table has this + 2 rows.
    word_embed_proj_dim: token-embedding width; None means hidden_size. When it differs (opt-350m),
      `project_in`/`project_out` map between it and hidden_size.
    do_layer_norm_before: pre-LN (True, every OPT but 350m) or post-LN (350m). Pre-LN also has a final norm.
    enable_bias: biases on the q/k/v/out projections and fc1/fc2.
    layer_norm_elementwise_affine: layer norms have scale and bias parameters.
    dropout: on the embeddings and on the attention and feed-forward residual branches (when enabled);
      the embeddings as metaseq and OPT-IML do (transformers' OPT leaves them out).
    attention_dropout: on the attention probabilities (when enabled).
    activation_function: feed-forward activation; OPT uses "relu" only.
    init_std: standard deviation of the normal initializer of kernels and embeddings.
    dtype: compute dtype ("float32", "bfloat16", ...); logits are always returned as float32.
    param_dtype: dtype of created parameters.
    scan_layers: stack the layers on a leading "layers" axis and run them with nn.scan (fast compiles).
    remat_policy: rematerialization of each layer in the backward pass: "none", "full" (save nothing),
      "dots" (save matmul outputs), "dots_with_no_batch_dims" (save matmuls without batch dimensions),
      "dots_with_no_batch_dims_and_attention" (those and attention's outputs: no attention forward in the backward
      pass with cuDNN; `layers.save_weight_dots_and_attention`).
    attention_impl: `implementation` of jax.nn.dot_product_attention: None (cuDNN flash attention on a CUDA
      GPU with bf16/fp16 compute, XLA elsewhere: `opt.resolve_attention_impl`), "xla", or "cudnn" (fused
      flash attention on NVIDIA GPUs, bf16/fp16 only).
    packed_attention_segments: 0 (default): packed rows' segments reach attention as a dense mask; M > 0:
      with cuDNN on a Hopper GPU or newer, as each row's first M segments' lengths and offsets in cuDNN's packed
      layout, which computes only the tiles inside segments (`models/packed_attention.py`; rows must hold at most
      M segments: `DataArgs.max_segments_per_row`). Elsewhere the dense mask stays.
  """

  family: ClassVar[str] = "opt"

  vocab_size: int = 50272
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  ffn_dim: int = 3072
  max_position_embeddings: int = 2048
  word_embed_proj_dim: int | None = None
  do_layer_norm_before: bool = True
  enable_bias: bool = True
  layer_norm_elementwise_affine: bool = True
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_function: str = "relu"
  init_std: float = 0.02
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str | None = None
  packed_attention_segments: int = 0

  def __post_init__(self):
    if self.word_embed_proj_dim is None:
      object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
    if self.activation_function != "relu":
      raise ValueError(f"OPTConfig.activation_function: OPT uses 'relu' only, got {self.activation_function!r}")
    config_checks.check_positive_ints(self, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "ffn_dim", "max_position_embeddings", "word_embed_proj_dim"))
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"OPTConfig.hidden_size: {self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")
    config_checks.check_shared_fields(self)

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """The ids that end a generation: OPT's `</s>` (`data/special_tokens.py`)."""
    return (special_tokens.OPT_EOS_ID,)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def embed_dim(self) -> int:
    """Token-embedding width: word_embed_proj_dim, which None leaves at hidden_size (as `__post_init__` sets it)."""
    return self.hidden_size if self.word_embed_proj_dim is None else self.word_embed_proj_dim

  @property
  def has_projections(self) -> bool:
    """Whether the model has project_in / project_out (token embeddings narrower than the model)."""
    return self.word_embed_proj_dim != self.hidden_size

  @property
  def has_final_layer_norm(self) -> bool:
    """Pre-LN models normalize the last hidden state (it has parameters only when elementwise-affine)."""
    return self.do_layer_norm_before

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> OPTConfig:
    """A published OPT size ("opt-125m" ... "opt-175b") or "tiny", with fields replaced by `overrides`."""
    if name not in _PRESETS:
      raise ValueError(f"OPTConfig.preset: unknown preset {name!r}; expected one of {PRESETS}")
    return cls(**{**_PRESETS[name], **overrides})

  @classmethod
  def from_hf(cls, hf_config: Mapping[str, Any], **overrides: Any) -> OPTConfig:
    """Reads a Hugging Face OPT config.json dict; `overrides` set the other fields (dtype, scan_layers...).

    Raises:
      ValueError: naming the key, for a missing shape key, another model_type, an activation other than
        relu, a non-zero layerdrop, or `_remove_final_layer_norm` (pre-v4.20 fine-tunes; unsupported).
    """
    if hf_config.get("model_type", "opt") != "opt":
      raise ValueError(f"config.json: model_type is {hf_config['model_type']!r}, expected 'opt'")
    missing = [key for key in _HF_REQUIRED if key not in hf_config]
    if missing:
      raise ValueError(f"config.json: missing key(s) {', '.join(missing)} for an OPT config")
    if hf_config.get("activation_function", "relu") != "relu":
      raise ValueError(f"config.json: activation_function is {hf_config['activation_function']!r}; "
                       "OPT uses 'relu' only")
    if hf_config.get("layerdrop", 0.0):
      raise ValueError(f"config.json: layerdrop is {hf_config['layerdrop']!r}; only 0 is supported")
    if hf_config.get("_remove_final_layer_norm", False):
      raise ValueError("config.json: _remove_final_layer_norm is true (checkpoints fine-tuned before "
                       "transformers 4.20); unsupported")
    fields = {key: hf_config[key] for key in _HF_REQUIRED}
    fields.update({key: hf_config.get(key, default) for key, default in _HF_DEFAULTS.items()})
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """A config.json dict (model_type "opt") that transformers' OPTConfig / AutoConfig loads.

    Its bos/eos/pad token ids are the shipped OPT tokenizer's (`data/special_tokens.py`, a standard-library
    module: models/ imports nothing else of the data side).
    """
    fields = {key: getattr(self, key) for key in _HF_REQUIRED + tuple(_HF_DEFAULTS)}
    return {
        "model_type": "opt",
        "architectures": ["OPTForCausalLM"],
        **fields, "_remove_final_layer_norm": False,
        "layerdrop": 0.0,
        **special_tokens.OPT.hf_config_ids(), "tie_word_embeddings": True,
        "use_cache": True
    }

  def layer_shapes(self) -> shapes.LayerShapes:
    """The widths the planner's memory and FLOP model reads (`planning/analytic.py`)."""
    d = self.hidden_size
    return shapes.LayerShapes(hidden=d, heads=self.num_attention_heads, q_width=d, kv_width=d, mlp_width=self.ffn_dim,
                              mlp_in_matmuls=1, embed_width=self.embed_dim)

  def num_params(self) -> int:
    """Number of parameters (the tied LM head counted once), computed from the shapes."""
    d, f, p = self.hidden_size, self.ffn_dim, self.embed_dim
    affine = self.layer_norm_elementwise_affine
    per_layer = 4 * d * d + 2 * d * f + (5 * d + f if self.enable_bias else 0) + (4 * d if affine else 0)
    total = self.vocab_size * p + (self.max_position_embeddings + POSITION_OFFSET) * d
    total += 2 * p * d if self.has_projections else 0
    total += 2 * d if self.has_final_layer_norm and affine else 0
    return total + self.num_hidden_layers * per_layer

  def num_matmul_params(self) -> int:
    """Weights used in matrix multiplies per token: layer kernels, projections and the tied LM head."""
    d, p = self.hidden_size, self.embed_dim
    layers = self.num_hidden_layers * (4 * d * d + 2 * d * self.ffn_dim)
    return layers + self.vocab_size * p + (2 * p * d if self.has_projections else 0)

  def flops_per_token(self, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6 N + 12 L d S."""
    return 6 * self.num_matmul_params() + 12 * self.num_hidden_layers * self.hidden_size * seq_len
