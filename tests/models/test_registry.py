"""Tests of models/registry.py: Hugging Face model_type and preset names dispatch to the right family, config and
module; unsupported names are errors that list the supported ones; decode caches of either family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import models
from optiml_jax.models import llama
from optiml_jax.models import llama_config
from optiml_jax.models import opt
from optiml_jax.models import opt_config
from optiml_jax.models import registry
from optiml_jax.trainer import step as step_lib

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


# bfloat16 models of each LM head: OPT's tied embedding (`Embed.attend`), Llama's untied `OutputLayer` and its tied
# one. Weights large enough that the logits' bfloat16 rounding shows.
BFLOAT16_HEADS = [
    opt_config.OPTConfig(**OPT_SMALL, init_std=0.3, dropout=0.0, dtype="bfloat16"),
    llama_config.LlamaConfig(**LLAMA_SMALL, initializer_range=0.3, tie_word_embeddings=False, dtype="bfloat16"),
    llama_config.LlamaConfig(**LLAMA_SMALL, initializer_range=0.3, tie_word_embeddings=True, dtype="bfloat16"),
]
HEAD_IDS = ["opt", "llama_untied", "llama_tied"]


def _tokens_and_params(config):
  model = registry.make_model(config)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, config.vocab_size, size=(2, 10)), jnp.int32)
  return model, tokens, model.init(jax.random.PRNGKey(1), tokens, enable_dropout=False)["params"]


@pytest.mark.parametrize("config", BFLOAT16_HEADS, ids=HEAD_IDS)
def test_bfloat16_inference_logits_are_the_float32_sums_of_the_bfloat16_lm_head(config):
  # Rounded to bfloat16 first, the top logits of SmolLM2 tied exactly at 5% of positions (greedy took the lowest id).
  model, tokens, params = _tokens_and_params(config)
  hidden, head = model.apply({"params": params}, tokens, enable_dropout=False, return_hidden=True)
  assert hidden.dtype == jnp.bfloat16
  sums = jnp.einsum("bld,vd->blv", hidden.astype(jnp.float32),
                    head.astype(jnp.bfloat16).astype(jnp.float32), precision="highest")  # each product exact
  inference = model.apply({"params": params}, tokens, enable_dropout=False, float32_logits=True)
  assert inference.dtype == jnp.float32
  np.testing.assert_allclose(inference, sums, rtol=1e-6, atol=1e-6)
  rounded = np.asarray(inference.astype(jnp.bfloat16).astype(jnp.float32))
  assert (np.asarray(inference) != rounded).mean() > 0.5  # not bfloat16 values: the comparison can fail
  # Training (the default) keeps the head's output in bfloat16, cast afterwards.
  training = np.asarray(model.apply({"params": params}, tokens, enable_dropout=False))
  np.testing.assert_array_equal(training, training.astype(jnp.bfloat16).astype(np.float32))
  np.testing.assert_allclose(training, sums, rtol=2**-8, atol=1e-6)


def _head_dots(jaxpr, vocab_size):
  """(operand dtypes, output dtype) of every dot_general with an axis of `vocab_size`, in `jaxpr` and inside it."""
  found = []
  for eqn in jaxpr.eqns:
    avals = [v.aval for v in (*eqn.invars, *eqn.outvars)]
    if eqn.primitive.name == "dot_general" and any(vocab_size in a.shape for a in avals):
      found.append((tuple(str(v.aval.dtype) for v in eqn.invars), str(eqn.outvars[0].aval.dtype)))
    for value in eqn.params.values():
      for inner in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          found += _head_dots(inner, vocab_size)
  return found


@pytest.mark.parametrize("config", BFLOAT16_HEADS, ids=HEAD_IDS)
def test_the_training_step_keeps_the_lm_head_and_its_gradients_in_bfloat16(config):
  # A float32 head output would push the head's two backward matmuls to float32 inputs (~30% of opt-125m's FLOPs).
  model, tokens, params = _tokens_and_params(config)
  batch = {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": jnp.roll(tokens, -1, axis=1),
      "decoder_loss_weights": jnp.ones(tokens.shape, jnp.float32)
  }
  grads = jax.make_jaxpr(jax.grad(lambda p: step_lib.loss_sums(p, batch, model, None, False)[0]))(params)
  training = _head_dots(grads.jaxpr, config.vocab_size)
  assert len(training) == 3  # the forward matmul and its two gradients
  assert all(out == "bfloat16" and set(ins) == {"bfloat16"} for ins, out in training), training
  inference = jax.make_jaxpr(lambda p: model.apply({"params": p}, tokens, enable_dropout=False, float32_logits=True))(
      params)
  assert _head_dots(inference.jaxpr, config.vocab_size) == [(("bfloat16", "bfloat16"), "float32")]
