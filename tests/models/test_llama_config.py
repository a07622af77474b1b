"""Tests of models/llama_config.py: `LlamaConfig.from_hf` reads config.json as transformers 4 and 5 write it
(Llama, Mistral, Qwen2), `to_hf` round-trips every preset and loads in transformers, the rotary frequencies and
parameter counts equal transformers', the derived widths, and validation errors that name the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from optiml_jax.models import llama_config
from optiml_jax.models.llama_config import LlamaConfig
from optiml_jax.models.llama_config import RopeScaling

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# config.json fields of a small Llama, as every transformers version writes them (no rope keys).
SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
             tie_word_embeddings=False)
LINEAR = {"rope_type": "linear", "factor": 4.0}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256
}
# The config.json of Qwen2.5-0.5B as published (transformers 4 form): no attention_bias key, a sliding_window
# that use_sliding_window=false switches off.
QWEN25_05B_JSON = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936
}


def _hf_config(config: LlamaConfig):
  """transformers' config object for `config`, loaded from `to_hf()`."""
  return transformers.AutoConfig.for_model(**config.to_hf())


# ----------------------------------------------------------------------------------------------------------
# from_hf: transformers 4 and 5 forms, and transformers' own configs.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope", [None, LINEAR, LLAMA3], ids=["default", "linear", "llama3"])
def test_from_hf_reads_transformers_4_and_5_rope_forms_alike(rope):
  v4 = {**SHAPE, "model_type": "llama", "rope_theta": 50000.0, "rope_scaling": rope}
  v5 = {
      **SHAPE, "model_type": "llama",
      "rope_parameters": {
          "rope_theta": 50000.0,
          "rope_type": "default",
          **(rope or {})
      }
  }
  from_v4 = LlamaConfig.from_hf(v4)
  assert from_v4 == LlamaConfig.from_hf(v5)
  assert from_v4.rope_theta == 50000.0
  assert from_v4.rope_scaling == (None if rope is None else RopeScaling(**rope))
  # transformers 5 rewrites the transformers 4 form as rope_parameters: that reads the same too. (It edits the
  # rope dict it is given, hence the copy.)
  written = transformers.LlamaConfig(**{**v4, "rope_scaling": rope and dict(rope)}).to_dict()
  assert "rope_parameters" in written and "rope_scaling" not in written
  assert LlamaConfig.from_hf(written) == from_v4


@pytest.mark.parametrize("rope", [LINEAR, LLAMA3], ids=["linear", "llama3"])
def test_from_hf_reads_the_older_type_key_of_rope_scaling(rope):
  params = {k: v for k, v in rope.items() if k != "rope_type"}
  only_type = {**params, "type": rope["rope_type"]}  # the key Llama 2-era config.json files use
  both = {**rope, "type": rope["rope_type"]}  # transformers 4 adds rope_type beside a given type and saves both
  for rope_scaling in (only_type, both):
    config = LlamaConfig.from_hf({**SHAPE, "rope_theta": 10000.0, "rope_scaling": rope_scaling})
    assert config.rope_scaling == RopeScaling(**rope)


def test_from_hf_of_transformers_llama_config_keeps_the_fields_set():
  hf = transformers.LlamaConfig(vocab_size=100, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                                num_attention_heads=6, num_key_value_heads=3, head_dim=32, max_position_embeddings=1024,
                                rms_norm_eps=1e-5, rope_theta=20000.0, rope_scaling=dict(LLAMA3),
                                tie_word_embeddings=True, bos_token_id=5, eos_token_id=[6, 7], pad_token_id=0,
                                attention_bias=True, mlp_bias=True, initializer_range=0.01, attention_dropout=0.1)
  config = LlamaConfig.from_hf(hf.to_dict())
  assert config == LlamaConfig(vocab_size=100, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                               num_attention_heads=6, num_key_value_heads=3, head_dim=32, max_position_embeddings=1024,
                               rms_norm_eps=1e-5, rope_theta=20000.0, rope_scaling=RopeScaling(**LLAMA3),
                               tie_word_embeddings=True, bos_token_id=5, eos_token_id=(6, 7), pad_token_id=0,
                               attention_bias=True, attention_out_bias=True, mlp_bias=True, initializer_range=0.01,
                               attention_dropout=0.1)


def test_from_hf_of_transformers_mistral_config_keeps_the_sliding_window():
  hf = transformers.MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                                  sliding_window=100, rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=True)
  config = LlamaConfig.from_hf(hf.to_dict())
  assert (config.model_type, config.sliding_window, config.kv_heads, config.rope_theta) == ("mistral", 100, 1, 1e6)
  assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (100, 64, 128)
  assert (config.tie_word_embeddings, config.rms_norm_eps, config.max_position_embeddings) == (True, 1e-5, 512)
  assert (config.attention_bias, config.attention_out_bias, config.rope_scaling) == (False, False, None)
  no_window = transformers.MistralConfig(**{**SHAPE, "sliding_window": None}).to_dict()
  assert LlamaConfig.from_hf(no_window).sliding_window is None


def test_from_hf_of_transformers_qwen2_config_sets_its_biases():
  hf = transformers.Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=3,
                                eos_token_id=4)
  config = LlamaConfig.from_hf(hf.to_dict())
  assert config == LlamaConfig(model_type="qwen2", vocab_size=100, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                               bos_token_id=3, eos_token_id=4, attention_bias=True)


def test_from_hf_of_published_qwen2_json_has_qkv_biases_and_no_window():
  config = LlamaConfig.from_hf(QWEN25_05B_JSON)
  assert (config.attention_bias, config.attention_out_bias, config.mlp_bias) == (True, False, False)
  assert config.sliding_window is None
  assert config == LlamaConfig.preset("qwen2.5-0.5b")


@pytest.mark.parametrize("hf", [
    {
        **QWEN25_05B_JSON, "use_sliding_window": True
    },
    transformers.Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=64, max_window_layers=1).to_dict(),
], ids=["config.json", "transformers"])
def test_from_hf_refuses_qwen2_sliding_windows(hf):
  with pytest.raises(ValueError, match="use_sliding_window"):
    LlamaConfig.from_hf(hf)


def test_from_hf_overrides_set_the_compute_fields():
  config = LlamaConfig.from_hf({**SHAPE, "rope_theta": 1e4}, dtype="bfloat16", scan_layers=False, eos_token_id=9)
  assert (config.dtype, config.scan_layers, config.eos_token_id) == ("bfloat16", False, 9)


@pytest.mark.parametrize(
    "hf,field", [
        ({
            **SHAPE, "model_type": "gemma"
        }, "model_type"),
        ({
            k: v for k, v in SHAPE.items() if k != "intermediate_size"
        }, "intermediate_size"),
        ({
            **SHAPE, "hidden_act": "gelu"
        }, "hidden_act"),
        ({
            **SHAPE, "pretraining_tp": 2
        }, "pretraining_tp"),
        ({
            **SHAPE, "rope_scaling": {
                "rope_type": "yarn",
                "factor": 2.0
            }
        }, "rope_scaling.*yarn"),
        ({
            **SHAPE, "rope_scaling": {
                "rope_type": "linear"
            }
        }, "rope_scaling.*factor"),
        ({
            **SHAPE, "rope_parameters": {
                "full_attention": {
                    "rope_type": "default",
                    "rope_theta": 1e4
                }
            }
        }, "rope_parameters"),
    ], ids=["model_type", "missing_key", "hidden_act", "pretraining_tp", "rope_type", "rope_factor", "per_layer_rope"])
def test_from_hf_errors_name_the_key(hf, field):
  with pytest.raises(ValueError, match=f"config.json: .*{field}"):
    LlamaConfig.from_hf(hf)


# ----------------------------------------------------------------------------------------------------------
# to_hf: presets round-trip and load in transformers.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", llama_config.PRESETS)
def test_preset_round_trips_through_to_hf_and_transformers(name):
  config = LlamaConfig.preset(name)
  assert LlamaConfig.from_hf(config.to_hf()) == config
  hf = _hf_config(config)
  assert hf.model_type == config.model_type
  assert type(hf).__name__ == {
      "llama": "LlamaConfig",
      "mistral": "MistralConfig",
      "qwen2": "Qwen2Config"
  }[config.model_type]
  assert (hf.vocab_size, hf.hidden_size, hf.intermediate_size,
          hf.num_hidden_layers) == (config.vocab_size, config.hidden_size, config.intermediate_size,
                                    config.num_hidden_layers)
  assert (hf.num_attention_heads, hf.num_key_value_heads,
          hf.max_position_embeddings) == (config.num_attention_heads, config.kv_heads, config.max_position_embeddings)
  assert (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads) == config.head_size
  assert hf.rope_parameters["rope_theta"] == config.rope_theta
  assert hf.rope_parameters["rope_type"] == ("default"
                                             if config.rope_scaling is None else config.rope_scaling.rope_type)
  assert (hf.tie_word_embeddings, hf.rms_norm_eps) == (config.tie_word_embeddings, config.rms_norm_eps)
  # What transformers 5 writes back (rope_parameters) reads as the same config.
  assert LlamaConfig.from_hf(hf.to_dict()) == config


def test_preset_overrides_replace_fields_and_unknown_preset_names_the_presets():
  config = LlamaConfig.preset("llama-tiny", num_hidden_layers=3, dtype="bfloat16")
  assert (config.num_hidden_layers, config.dtype, config.hidden_size) == (3, "bfloat16", 64)
  with pytest.raises(ValueError, match="smollm2-135m"):
    LlamaConfig.preset("llama-9000")


def test_to_hf_refuses_llama_biases_that_transformers_cannot_express():
  with pytest.raises(ValueError, match="attention_bias"):
    LlamaConfig(**SHAPE, attention_bias=True, attention_out_bias=False).to_hf()


# ----------------------------------------------------------------------------------------------------------
# Rotary frequencies and sizes against transformers.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rope", [None, LINEAR, LLAMA3], ids=["default", "linear", "llama3"])
@pytest.mark.parametrize("head_dim", [None, 24])
def test_rope_inv_freq_equals_transformers_rotary_embedding(rope, head_dim):
  config = LlamaConfig(**SHAPE, head_dim=head_dim, rope_theta=500000.0, rope_scaling=rope)
  hf = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(config=_hf_config(config))
  expected = hf.inv_freq.double().numpy()
  got = np.asarray(config.rope_inv_freq())
  assert got.shape == (config.head_size // 2,)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  if rope == LLAMA3:  # every band of llama3 scaling is exercised: scaled, smoothed and kept
    unscaled = np.asarray(dataclasses.replace(config, rope_scaling=None).rope_inv_freq())
    ratio = got / unscaled
    assert np.isclose(ratio, 1.0).any() and np.isclose(ratio, 1 / 8).any()
    assert ((ratio > 1 / 8 + 1e-6) & (ratio < 1 - 1e-6)).any()


@pytest.mark.parametrize("config", [
    LlamaConfig.preset("smollm2-135m"),
    LlamaConfig.preset("llama-3.2-1b"),
    LlamaConfig.preset("qwen2.5-0.5b"),
    LlamaConfig(**SHAPE, head_dim=24, attention_bias=True, attention_out_bias=True, mlp_bias=True),
], ids=["smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b", "llama-head_dim-biases"])
def test_num_params_equals_transformers_model_parameter_count(config):
  with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(config))
  assert config.num_params() == sum(p.numel() for p in model.parameters())


def test_eos_ids_of_an_int_a_list_and_none():
  assert LlamaConfig(**{**SHAPE, "eos_token_id": 2}).eos_ids == (2,)
  listed = LlamaConfig.from_hf({**SHAPE, "eos_token_id": [128001, 128008, 128009]})
  assert listed.eos_token_id == (128001, 128008, 128009) and listed.eos_ids == (128001, 128008, 128009)
  hash(listed)  # a list would make the frozen config unhashable (configs are jit static arguments)
  assert listed.to_hf()["eos_token_id"] == [128001, 128008, 128009]
  assert LlamaConfig(**{**SHAPE, "eos_token_id": None}).eos_ids == ()


def test_widths_default_head_dim_and_kv_heads():
  config = LlamaConfig(**{**SHAPE, "num_key_value_heads": None})
  assert (config.head_size, config.kv_heads, config.q_width, config.kv_width) == (16, 4, 64, 64)
  gqa = LlamaConfig(**SHAPE)
  assert (gqa.head_size, gqa.kv_heads, gqa.q_width, gqa.kv_width) == (16, 2, 64, 32)


def test_explicit_head_dim_other_than_hidden_over_heads_sets_the_widths():
  config = LlamaConfig(**SHAPE, head_dim=24)
  assert (config.head_size, config.q_width, config.kv_width) == (24, 96, 48)
  assert config.q_width != config.hidden_size
  assert LlamaConfig.from_hf(config.to_hf()).head_dim == 24


# ----------------------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (dict(num_key_value_heads=3), "LlamaConfig.num_attention_heads: 4 is not a multiple of num_key_value_heads=3"),
    (dict(head_dim=15), "LlamaConfig.head_dim: rotary embeddings need an even head_dim"),
    (dict(model_type="gemma"), "LlamaConfig.model_type: expected one of"),
    (dict(rms_norm_eps=-1e-5), "LlamaConfig.rms_norm_eps: expected a positive number"),
    (dict(rope_theta=0.0), "LlamaConfig.rope_theta"),
    (dict(rope_scaling={
        "rope_type": "yarn",
        "factor": 2.0
    }), "LlamaConfig.rope_scaling: rope_type 'yarn'"),
    (dict(rope_scaling={
        "rope_type": "linear",
        "factor": 0.0
    }), "LlamaConfig.rope_scaling: rope_scaling.factor"),
    (dict(rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0
    }), "rope_scaling.low_freq_factor"),
    (dict(rope_scaling="linear"), "LlamaConfig.rope_scaling"),
    (dict(attention_impl="cudnn", dtype="float32"), "LlamaConfig.attention_impl: 'cudnn' needs dtype bfloat16"),
    (dict(attention_impl="flash"), "LlamaConfig.attention_impl"),
    (dict(remat_policy="everything"), "LlamaConfig.remat_policy"),
    (dict(sliding_window=0), "LlamaConfig.sliding_window"),
    (dict(dropout=1.0), "LlamaConfig.dropout"),
    (dict(vocab_size=0), "LlamaConfig.vocab_size"),
    (dict(dtype="float7"), "LlamaConfig.dtype"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_invalid_field_is_an_error_naming_it(overrides, message):
  with pytest.raises(ValueError, match=message):
    LlamaConfig(**{**SHAPE, **overrides})


def test_cudnn_attention_is_accepted_in_bfloat16():
  assert LlamaConfig(**SHAPE, attention_impl="cudnn", dtype="bfloat16").attention_impl == "cudnn"


@pytest.mark.parametrize(
    "biases",
    [dict(attention_bias=False), dict(attention_bias=True, attention_out_bias=True)],
    ids=["no_qkv_bias", "o_proj_bias"])
def test_qwen2_without_its_fixed_biases_is_an_error(biases):
  with pytest.raises(ValueError, match="qwen2 model has q/k/v biases and no o_proj bias"):
    LlamaConfig(**SHAPE, model_type="qwen2", **biases)


def test_rope_scaling_from_hf_and_to_hf():
  assert RopeScaling.from_hf({"rope_type": "default", "rope_theta": 1e4}) is None
  assert RopeScaling.from_hf({}) is None
  llama3 = RopeScaling.from_hf({**LLAMA3, "rope_theta": 5e5})
  assert llama3 == RopeScaling(**LLAMA3)
  assert llama3.to_hf() == LLAMA3
  assert RopeScaling("linear", 4.0).to_hf() == LINEAR
  with pytest.raises(ValueError, match="rope_scaling.high_freq_factor"):
    RopeScaling("llama3", 8.0, low_freq_factor=1.0, original_max_position_embeddings=8192)
