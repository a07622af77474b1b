"""Llama-family hyper-parameters: `LlamaConfig` (Llama 2/3, Mistral, Qwen2, SmolLM2), presets and FLOP counts.

Where it sits: beside `opt_config.py`; `models/llama.py` builds the Flax module from a `LlamaConfig`,
`models/registry.py` dispatches Hugging Face `model_type`s "llama", "mistral" and "qwen2" and the presets
below to it, and the checkpoint layout (`checkpoints/layouts/llama.py`) maps its parameters to Hugging Face
names. One config class covers the family: the three architectures differ only in fields read from
config.json (q/k/v biases for Qwen2, a sliding window for Mistral v0.1, rope scaling for Llama 3.x).

Rotary embeddings are read from config.json as transformers 4 writes them (`rope_theta` + `rope_scaling`) and
as transformers 5 does (`rope_parameters`, which holds `rope_theta`); `to_hf` writes the transformers 4 form,
which both versions read.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, cast

from optiml_jax.models import config_checks
from optiml_jax.models import shapes

REMAT_POLICIES = config_checks.REMAT_POLICIES
ATTENTION_IMPLEMENTATIONS = config_checks.ATTENTION_IMPLEMENTATIONS
MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_HF_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How rotary frequencies are rescaled for long contexts (Hugging Face `rope_scaling` / `rope_parameters`).

  Attributes:
    rope_type: "linear" (positions divided by `factor`) or "llama3" (Llama 3.1's frequency-dependent scaling).
    factor: the scaling factor.
    low_freq_factor, high_freq_factor, original_max_position_embeddings: "llama3" only.
  """

  rope_type: str
  factor: float
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  original_max_position_embeddings: int | None = None

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES[1:]:
      raise ValueError(f"rope_scaling.rope_type: expected one of {ROPE_TYPES[1:]}, got {self.rope_type!r}")
    if not isinstance(self.factor, (int, float)) or self.factor <= 0:
      raise ValueError(f"rope_scaling.factor: expected a positive number, got {self.factor!r}")
    if self.rope_type == "llama3":
      for name in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if getattr(self, name) is None:
          raise ValueError(f"rope_scaling.{name}: required for rope_type 'llama3'")

  @classmethod
  def from_hf(cls, values: Mapping[str, Any]) -> RopeScaling | None:
    """A Hugging Face rope dict ("rope_type" or the older "type" key) -> RopeScaling; None for "default"."""
    rope_type = values.get("rope_type", values.get("type", "default"))
    if rope_type == "default":
      return None
    if rope_type not in ROPE_TYPES:
      raise ValueError(f"rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    fields = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name != "rope_type" and f.name in values}
    if "factor" not in fields:
      raise ValueError(f"rope_type {rope_type!r} needs a 'factor'")
    return cls(rope_type=rope_type, **fields)

  def to_hf(self) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


# Published shapes (Hugging Face config.json of each model). "llama-tiny" is for tests and toy runs: it uses
# the OPT tokenizer shipped with the package (vocabulary 50272, </s> = 2 as BOS and EOS, <pad> = 1).
_PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(vocab_size=50272, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=2, eos_token_id=2, pad_token_id=1),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "smollm2-360m": dict(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "smollm2-1.7b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, rope_theta=130000.0, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001),
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192), tie_word_embeddings=True,
                         bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0,
                                                  8192), bos_token_id=128000, eos_token_id=128001),
    "llama-3.1-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                          num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
                          rms_norm_eps=1e-5, rope_theta=500000.0,
                          rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0,
                                                   8192), bos_token_id=128000, eos_token_id=128001),
    # Mistral-7B-v0.3: no sliding window, the extended 32768-token vocabulary.
    "mistral-7b": dict(model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, bos_token_id=1,
                       eos_token_id=2),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=True,
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=True,
                       bos_token_id=151643, eos_token_id=151643),
}
PRESETS = tuple(_PRESETS)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Llama-family hyper-parameters (Hugging Face LlamaConfig names) plus how to compute.

  Attributes:
    model_type: the Hugging Face architecture written back by `to_hf`: "llama", "mistral" or "qwen2".
    vocab_size: rows of the token embedding and of the LM head.
    hidden_size: model width d.
    intermediate_size: width of the SwiGLU feed-forward block.
    num_hidden_layers: decoder layers L.
    num_attention_heads: query heads.
    num_key_value_heads: key/value heads (grouped-query attention); None means num_attention_heads.
    head_dim: width of one head; None means hidden_size // num_attention_heads.
    max_position_embeddings: the longest context the model was trained for (rotary: no table, a limit).
    rms_norm_eps: epsilon of every RMSNorm.
    rope_theta: base of the rotary frequencies.
    rope_scaling: None, or a `RopeScaling` (a Hugging Face dict is accepted and converted).
    attention_bias: biases on the q/k/v projections (Qwen2; Llama's `attention_bias` sets this and the next).
    attention_out_bias: a bias on o_proj.
    mlp_bias: biases on gate/up/down projections.
    tie_word_embeddings: the LM head is the token embedding (SmolLM2, Llama 3.2, Qwen2.5 0.5B).
    sliding_window: each token sees at most this many tokens (itself included); None for full attention.
    bos_token_id, eos_token_id, pad_token_id: the ids config.json carries (eos may be a tuple of ids).
    initializer_range: standard deviation of the normal initializer.
    dropout: on the attention and feed-forward residual branches when enabled (Llama has none; 0 by default).
    attention_dropout: on the attention probabilities when enabled.
    dtype, param_dtype, scan_layers, remat_policy, attention_impl, packed_attention_segments: as `OPTConfig`'s
      (the packed layout is not used with a sliding window).
  """

  family: ClassVar[str] = "llama"

  model_type: str = "llama"
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  attention_bias: bool = False
  attention_out_bias: bool = False
  mlp_bias: bool = False
  tie_word_embeddings: bool = False
  sliding_window: int | None = None
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = None
  initializer_range: float = 0.02
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str | None = None
  packed_attention_segments: int = 0

  def __post_init__(self):
    if self.num_key_value_heads is None:
      object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
    if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if isinstance(self.rope_scaling, Mapping):
      try:
        object.__setattr__(self, "rope_scaling", RopeScaling.from_hf(self.rope_scaling))
      except (TypeError, ValueError) as e:
        raise ValueError(f"LlamaConfig.rope_scaling: {e}") from e
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.model_type not in MODEL_TYPES:
      raise ValueError(f"LlamaConfig.model_type: expected one of {MODEL_TYPES}, got {self.model_type!r}")
    config_checks.check_positive_ints(
        self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings"))
    if self.model_type == "qwen2" and (not self.attention_bias or self.attention_out_bias):
      raise ValueError("LlamaConfig: a qwen2 model has q/k/v biases and no o_proj bias (Hugging Face's Qwen2 has no "
                       "switch for them): set attention_bias=True, attention_out_bias=False, or another model_type; "
                       f"got attention_bias={self.attention_bias}, attention_out_bias={self.attention_out_bias}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"LlamaConfig.num_attention_heads: {self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim: rotary embeddings need an even head_dim, got {self.head_dim}")
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
      raise ValueError(f"LlamaConfig.rope_scaling: expected None, a RopeScaling or a dict, got {self.rope_scaling!r}")
    for name in ("rms_norm_eps", "rope_theta"):
      if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
        raise ValueError(f"LlamaConfig.{name}: expected a positive number, got {getattr(self, name)!r}")
    if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
      raise ValueError(f"LlamaConfig.sliding_window: expected None or a positive int, got {self.sliding_window!r}")
    config_checks.check_shared_fields(self)

  @property
  def head_size(self) -> int:
    """`head_dim` once `__post_init__` has filled it in (typed as an int)."""
    return cast(int, self.head_dim)

  @property
  def kv_heads(self) -> int:
    """`num_key_value_heads` once `__post_init__` has filled it in (typed as an int)."""
    return cast(int, self.num_key_value_heads)

  @property
  def q_width(self) -> int:
    """Columns of q_proj (and rows of o_proj): num_attention_heads * head_dim."""
    return self.num_attention_heads * self.head_size

  @property
  def kv_width(self) -> int:
    """Columns of k_proj and v_proj: num_key_value_heads * head_dim."""
    return self.kv_heads * self.head_size

  @property
  def eos_ids(self) -> tuple[int, ...]:
    """Every id that ends a generation (config.json may list several)."""
    if self.eos_token_id is None:
      return ()
    return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

  @classmethod
  def preset(cls, name: str, **overrides: Any) -> LlamaConfig:
    """A published shape ("smollm2-135m", "llama-3.1-8b", "qwen2.5-7b", ...) with fields replaced by `overrides`."""
    if name not in _PRESETS:
      raise ValueError(f"LlamaConfig.preset: unknown preset {name!r}; expected one of {PRESETS}")
    return cls(**{**_PRESETS[name], **overrides})

  @classmethod
  def from_hf(cls, hf_config: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
    """Reads a Hugging Face Llama, Mistral or Qwen2 config.json dict; `overrides` set the other fields.

    Raises:
      ValueError: naming the key, for another model_type, a missing shape key, an activation other than silu,
        an unsupported rope type, or Qwen2's per-layer sliding windows.
    """
    model_type = hf_config.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
      raise ValueError(f"config.json: model_type is {model_type!r}, expected one of {MODEL_TYPES}")
    missing = [key for key in _HF_REQUIRED if key not in hf_config]
    if missing:
      raise ValueError(f"config.json: missing key(s) {', '.join(missing)} for a {model_type} config")
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"config.json: hidden_act is {act!r}; the Llama family uses 'silu' only")
    if hf_config.get("pretraining_tp", 1) not in (1, None):
      raise ValueError(f"config.json: pretraining_tp is {hf_config['pretraining_tp']!r}; only 1 is supported")
    rope = hf_config.get("rope_parameters")
    if isinstance(rope, Mapping) and "rope_type" not in rope and "rope_theta" not in rope:
      raise ValueError("config.json: rope_parameters per attention type are not supported")
    rope = dict(rope) if isinstance(rope, Mapping) else dict(hf_config.get("rope_scaling") or {})
    rope_theta = rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))
    try:
      rope_scaling = RopeScaling.from_hf(rope)
    except ValueError as e:
      raise ValueError(f"config.json: rope_scaling: {e}") from e
    fields: dict[str, Any] = {key: hf_config[key] for key in _HF_REQUIRED}
    fields.update(model_type=model_type, rope_theta=float(rope_theta), rope_scaling=rope_scaling,
                  num_key_value_heads=hf_config.get("num_key_value_heads"), head_dim=hf_config.get("head_dim"),
                  rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
                  tie_word_embeddings=bool(hf_config.get("tie_word_embeddings",
                                                         False)), bos_token_id=hf_config.get("bos_token_id"),
                  eos_token_id=hf_config.get("eos_token_id"), pad_token_id=hf_config.get("pad_token_id"),
                  initializer_range=hf_config.get("initializer_range", 0.02),
                  attention_dropout=float(hf_config.get("attention_dropout", 0.0)))
    if model_type == "qwen2":  # Qwen2 always has q/k/v biases and no o_proj bias.
      fields.update(attention_bias=True, attention_out_bias=False)
      layer_types = hf_config.get("layer_types") or ()
      if hf_config.get("use_sliding_window") or "sliding_attention" in layer_types:
        raise ValueError("config.json: use_sliding_window / sliding_attention layers (Qwen2's per-layer windows) "
                         "are not supported")
    else:
      bias = bool(hf_config.get("attention_bias", False))
      fields.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=bool(hf_config.get("mlp_bias", False)))
    if model_type == "mistral":
      fields["sliding_window"] = hf_config.get("sliding_window")
    fields.update(overrides)
    return cls(**fields)

  def to_hf(self) -> dict[str, Any]:
    """A config.json dict that transformers' AutoConfig (4.x and 5.x) loads as this `model_type`."""
    hf: dict[str, Any] = {
        "model_type": self.model_type,
        "architectures": [_ARCHITECTURES[self.model_type]],
        **{
            key: getattr(self, key) for key in _HF_REQUIRED
        },
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_theta": self.rope_theta,
        "rope_scaling": None if self.rope_scaling is None else self.rope_scaling.to_hf(),
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "initializer_range": self.initializer_range,
        "attention_dropout": self.attention_dropout,
        "use_cache": True,
    }
    if self.model_type == "qwen2":
      hf.update(use_sliding_window=False, sliding_window=None)
    else:
      if self.attention_bias != self.attention_out_bias:
        raise ValueError(f"LlamaConfig.to_hf: {self.model_type} has one attention_bias for q/k/v and o_proj; "
                         f"got attention_bias={self.attention_bias}, attention_out_bias={self.attention_out_bias}")
      hf["attention_bias"] = self.attention_bias
    if self.model_type == "llama":
      hf["mlp_bias"] = self.mlp_bias
      hf["pretraining_tp"] = 1
    if self.model_type == "mistral":
      hf["sliding_window"] = self.sliding_window
    return hf

  # ------------------------------------------------------------------------------------------------------
  # Sizes.
  # ------------------------------------------------------------------------------------------------------

  def layer_shapes(self) -> shapes.LayerShapes:
    """The widths the planner's memory and FLOP model reads (`planning/analytic.py`)."""
    return shapes.LayerShapes(hidden=self.hidden_size, heads=self.num_attention_heads, q_width=self.q_width,
                              kv_width=self.kv_width, mlp_width=self.intermediate_size, mlp_in_matmuls=2,
                              embed_width=self.hidden_size)

  def layer_matmul_params(self) -> int:
    """Weights of one layer's matmuls: q, k, v, o and the three SwiGLU projections."""
    return self.layer_shapes().matmul_params()

  def num_params(self) -> int:
    """Number of parameters (a tied LM head counted once), computed from the shapes."""
    d = self.hidden_size
    biases = (self.q_width + 2 * self.kv_width if self.attention_bias else 0)
    biases += d if self.attention_out_bias else 0
    biases += 2 * self.intermediate_size + d if self.mlp_bias else 0
    per_layer = self.layer_matmul_params() + biases + 2 * d  # two RMSNorm scales
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + head + d + self.num_hidden_layers * per_layer

  def num_matmul_params(self) -> int:
    """Weights used in matrix multiplies per token: the layers' projections and the LM head."""
    return self.num_hidden_layers * self.layer_matmul_params() + self.vocab_size * self.hidden_size

  def flops_per_token(self, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6 N + 12 L (heads x head_dim) S."""
    return 6 * self.num_matmul_params() + 12 * self.num_hidden_layers * self.q_width * seq_len

  def rope_inv_freq(self) -> tuple[float, ...]:
    """The rotary inverse frequencies (head_dim / 2 of them) after `rope_scaling`, as Hugging Face computes them."""
    half = self.head_size // 2
    inv = [1.0 / (self.rope_theta**(2 * i / self.head_size)) for i in range(half)]
    scaling = self.rope_scaling
    if scaling is None:
      return tuple(inv)
    if scaling.rope_type == "linear":
      return tuple(f / scaling.factor for f in inv)
    assert scaling.low_freq_factor is not None and scaling.high_freq_factor is not None
    assert scaling.original_max_position_embeddings is not None
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    out = []
    for f in inv:
      wavelen = 2 * math.pi / f
      if wavelen > low_wavelen:
        out.append(f / scaling.factor)
      elif wavelen < high_wavelen:
        out.append(f)
      else:
        smooth = (scaling.original_max_position_embeddings / wavelen -
                  scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        out.append((1 - smooth) * f / scaling.factor + smooth * f)
    return tuple(out)
