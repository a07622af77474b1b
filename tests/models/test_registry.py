"""Tests of models/registry.py: Hugging Face model_type and preset names dispatch to the right family, config and
module; unsupported names are errors that list the supported ones; decode caches of either family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from optiml_jax import models
from optiml_jax.models import llama
from optiml_jax.models import llama_config
from optiml_jax.models import opt
from optiml_jax.models import opt_config
from optiml_jax.models import registry

OPT_SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                 max_position_embeddings=40)
LLAMA_SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=40)


def test_families_names_and_presets_are_unique():
  assert [f.name for f in registry.FAMILIES] == ["opt", "llama"]
  assert len(set(registry.MODEL_TYPES)) == len(registry.MODEL_TYPES)
  assert set(registry.MODEL_TYPES) == {"opt", "llama", "mistral", "qwen2"}
  assert len(set(registry.PRESETS)) == len(registry.PRESETS)
  assert set(registry.PRESETS) == set(opt_config.PRESETS) | set(llama_config.PRESETS)
  for family in registry.FAMILIES:
    assert family.config_cls.family == family.name
    assert registry.family_named(family.name) is family


@pytest.mark.parametrize("model_type,family", [("opt", "opt"), ("llama", "llama"), ("mistral", "llama"),
                                               ("qwen2", "llama")])
def test_model_type_dispatches_to_its_family(model_type, family):
  assert registry.family_for_model_type(model_type).name == family


def test_unsupported_model_type_names_the_supported_ones():
  with pytest.raises(ValueError, match="gpt2") as e:
    registry.family_for_model_type("gpt2")
  for model_type in ("opt", "llama", "mistral", "qwen2"):
    assert model_type in str(e.value)
  with pytest.raises(ValueError, match="opt, llama, mistral, qwen2"):
    registry.config_from_hf({"model_type": "gemma", "hidden_size": 8})
  with pytest.raises(ValueError, match="opt, llama"):
    registry.family_named("gemma")


@pytest.mark.parametrize("config", [
    opt_config.OPTConfig(**OPT_SMALL),
    llama_config.LlamaConfig(**LLAMA_SMALL),
    llama_config.LlamaConfig(**LLAMA_SMALL, model_type="mistral", sliding_window=8),
    llama_config.LlamaConfig(**LLAMA_SMALL, model_type="qwen2", attention_bias=True)
], ids=["opt", "llama", "mistral", "qwen2"])
def test_config_from_hf_reads_what_to_hf_writes(config):
  assert registry.config_from_hf(config.to_hf()) == config
  assert registry.family_of(config).name == config.family


def test_config_without_model_type_is_opt():
  hf = opt_config.OPTConfig(**OPT_SMALL).to_hf()
  del hf["model_type"]
  assert isinstance(registry.config_from_hf(hf), opt_config.OPTConfig)


def test_config_from_hf_passes_overrides():
  config = registry.config_from_hf(llama_config.LlamaConfig(**LLAMA_SMALL).to_hf(), scan_layers=False, dtype="bfloat16")
  assert (config.scan_layers, config.dtype) == (False, "bfloat16")


@pytest.mark.parametrize("name", registry.PRESETS)
def test_preset_names_build_their_family(name):
  config = registry.preset(name, scan_layers=False)
  family = "llama" if name in llama_config.PRESETS else "opt"
  assert config.family == family and not config.scan_layers
  assert config == registry.family_named(family).config_cls.preset(name, scan_layers=False)


def test_unknown_preset_names_the_presets():
  with pytest.raises(ValueError, match="smollm2-135m") as e:
    registry.preset("llama-7b")
  assert "opt-125m" in str(e.value) and "llama-7b" in str(e.value)


def test_a_field_of_another_family_is_named_with_the_fields_there_are():
  with pytest.raises(ValueError, match=r"^ffn_dim: LlamaConfig \(preset 'smollm2-135m'\) has no such field.*"
                     "intermediate_size"):
    registry.preset("smollm2-135m", ffn_dim=128)
  assert registry.preset("opt-125m", ffn_dim=128).ffn_dim == 128


def test_make_model_returns_the_family_module():
  opt_model = registry.make_model(opt_config.OPTConfig(**OPT_SMALL))
  llama_model = registry.make_model(llama_config.LlamaConfig(**LLAMA_SMALL))
  assert type(opt_model) is opt.OPT and type(llama_model) is llama.Llama
  assert llama_model.config == llama_config.LlamaConfig(**LLAMA_SMALL)
  assert type(models.make_model(llama_config.LlamaConfig(**LLAMA_SMALL))) is llama.Llama  # the package exports it
  with pytest.raises(ValueError, match="OPTConfig, LlamaConfig"):
    registry.make_model({"model_type": "llama"})


@pytest.mark.parametrize("config,heads", [(opt_config.OPTConfig(**OPT_SMALL), 4),
                                          (llama_config.LlamaConfig(**LLAMA_SMALL, scan_layers=False), 2)],
                         ids=["opt", "llama"])
def test_init_decode_cache_is_the_model_cache_zeroed(config, heads):
  cache = registry.init_decode_cache(config, batch_size=3, max_decode_length=10)
  created = registry.make_model(config).init(jax.random.PRNGKey(0), jnp.ones((3, 10), jnp.int32), enable_dropout=False,
                                             decode=True, max_decode_length=10)["cache"]
  assert jax.tree.structure(cache) == jax.tree.structure(created)
  for got, want in zip(jax.tree.leaves(cache), jax.tree.leaves(created)):
    assert got.shape == want.shape and got.dtype == want.dtype and not got.any()
  attention = cache["layers"] if config.scan_layers else cache["layers_0"]
  assert attention["self_attn"]["cached_key"].shape[-3:] == (10, heads, 8)
  assert cache["cache_index"].shape == (3,)
