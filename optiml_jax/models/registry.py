"""Model families behind one seam: a config -> its Flax module, a Hugging Face config -> a config, presets.

Where it sits: at the top of `optiml_jax.models`, the one place that names the families. The trainer, the
evaluator, the converter, the planner, the t5x adapter and the benchmarks ask it for a model and never name a
family themselves; the Hugging Face parameter layout of each family lives on the checkpoint side
(`checkpoints/layouts/`), keyed by the family's name (`config.family`).

  config.json {"model_type": "qwen2", ...} --config_from_hf--> LlamaConfig --make_model--> Llama (flax.linen)
  "smollm2-135m" --preset--> LlamaConfig;  "opt-1.3b" --preset--> OPTConfig

| family | Hugging Face model_type | config | module |
|---|---|---|---|
| opt | opt | `opt_config.OPTConfig` | `opt.OPT` |
| llama | llama, mistral, qwen2 | `llama_config.LlamaConfig` | `llama.Llama` |

Every module takes t5x's decoder-only call signature (`decoder_input_tokens, decoder_target_tokens=None,
decoder_segment_ids=None, decoder_positions=None, decoder_causal_attention=None, *, enable_dropout, decode,
max_decode_length, prefill, prefill_lengths, logit_positions`) and returns float32 logits.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from optiml_jax.models import llama
from optiml_jax.models import llama_config
from optiml_jax.models import opt
from optiml_jax.models import opt_config

ModelConfig = Any  # an OPTConfig or a LlamaConfig: frozen dataclasses with the fields the trainer reads


@dataclasses.dataclass(frozen=True)
class Family:
  """One architecture family: what builds its configs and its module.

  Attributes:
    name: the family's name, also `config.family` ("opt", "llama").
    model_types: Hugging Face `model_type`s it reads.
    config_cls: its config class (`preset`, `from_hf`, `to_hf`).
    module: config -> flax.linen.Module.
    presets: the preset names `config_cls.preset` takes.
  """

  name: str
  model_types: tuple[str, ...]
  config_cls: Any  # a config class: `preset`, `from_hf`, `to_hf` (typed Any for the classmethods)
  module: Callable[[Any], nn.Module]
  presets: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    Family("opt", ("opt",), opt_config.OPTConfig, opt.OPT, opt_config.PRESETS),
    Family("llama", llama_config.MODEL_TYPES, llama_config.LlamaConfig, llama.Llama, llama_config.PRESETS),
)
MODEL_TYPES = tuple(t for family in FAMILIES for t in family.model_types)
PRESETS = tuple(p for family in FAMILIES for p in family.presets)


def family_of(config: Any) -> Family:
  """The family of a config instance; ValueError naming the supported config classes otherwise."""
  for family in FAMILIES:
    if isinstance(config, family.config_cls):
      return family
  names = ", ".join(f.config_cls.__name__ for f in FAMILIES)
  raise ValueError(f"not a model config: {type(config).__name__} (expected one of {names})")


def family_named(name: str) -> Family:
  """The family called `name` ("opt", "llama")."""
  for family in FAMILIES:
    if family.name == name:
      return family
  raise ValueError(f"unknown model family {name!r}; expected one of {', '.join(f.name for f in FAMILIES)}")


def family_for_model_type(model_type: str) -> Family:
  """The family that reads Hugging Face `model_type`; ValueError naming the supported ones otherwise."""
  for family in FAMILIES:
    if model_type in family.model_types:
      return family
  raise ValueError(f"model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")


def config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
  """The config of a Hugging Face config.json dict, dispatched on its `model_type` (OPT when absent)."""
  model_type = hf_config.get("model_type", "opt")
  return family_for_model_type(str(model_type)).config_cls.from_hf(hf_config, **overrides)


def preset(name: str, **overrides: Any) -> ModelConfig:
  """A preset of any family ("opt-125m", "smollm2-135m", "llama-3.1-8b", ...) with fields replaced.

  Raises:
    ValueError: an unknown preset (naming the known ones), or a field the preset's config class does not have
      (naming the class and its fields: `ffn_dim` is OPT's, `intermediate_size` Llama's).
  """
  family = next((f for f in FAMILIES if name in f.presets), None)
  if family is None:
    raise ValueError(f"preset: unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
  fields = sorted(f.name for f in dataclasses.fields(family.config_cls))
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"{unknown[0]}: {family.config_cls.__name__} (preset {name!r}) has no such field; its fields: "
                     f"{', '.join(fields)}")
  return family.config_cls.preset(name, **overrides)


def make_model(config: ModelConfig) -> nn.Module:
  """The Flax module of `config`, with t5x's decoder-only call signature (module docstring)."""
  return family_of(config).module(config)


def init_decode_cache(config: ModelConfig, batch_size: int, max_decode_length: int) -> Any:
  """A zero "cache" collection for `batch_size` examples of up to `max_decode_length` tokens (no params)."""
  model = make_model(config)
  tokens = jnp.ones((batch_size, max_decode_length), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, enable_dropout=False, decode=True,
                                             max_decode_length=max_decode_length))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
