"""Tests of optiml_jax/models/llama_config.py: config.json read in both transformers forms, rotary frequencies as
transformers computes them, the presets' round trip, and errors that name the field."""

import numpy as np
import pytest

from optiml_jax.models import llama_config

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64
}


def test_both_transformers_forms_of_config_json_read_the_same():
  v4 = {"model_type": "llama", **SMALL, "rope_theta": 500000.0, "rope_scaling": LLAMA3}
  v5 = {"model_type": "llama", **SMALL, "rope_parameters": {**LLAMA3, "rope_theta": 500000.0}}
  assert llama_config.LlamaConfig.from_hf(v4) == llama_config.LlamaConfig.from_hf(v5)
  config = llama_config.LlamaConfig.from_hf(v5)
  assert config.rope_theta == 500000.0 and config.rope_scaling.rope_type == "llama3"
  # What transformers itself writes loads, with the fields set surviving.
  for cls, model_type in ((transformers.LlamaConfig, "llama"), (transformers.MistralConfig, "mistral"),
                          (transformers.Qwen2Config, "qwen2")):
    written = cls(**SMALL, rope_theta=10000.0, tie_word_embeddings=True).to_dict()
    read = llama_config.LlamaConfig.from_hf(written)
    assert (read.model_type, read.num_key_value_heads, read.tie_word_embeddings) == (model_type, 2, True)
    assert read.attention_bias == (model_type == "qwen2") and not read.attention_out_bias


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}, LLAMA3])
def test_rope_inverse_frequencies_equal_transformers(scaling):
  config = llama_config.LlamaConfig(**SMALL, rope_theta=500000.0, rope_scaling=scaling)
  hf = transformers.AutoConfig.for_model(**config.to_hf())
  from transformers.models.llama import modeling_llama  # pylint: disable=g-import-not-at-top
  expected = modeling_llama.LlamaRotaryEmbedding(hf).inv_freq.double().numpy()
  np.testing.assert_allclose(np.asarray(config.rope_inv_freq()), expected, rtol=1e-6)


@pytest.mark.parametrize("name", llama_config.PRESETS)
def test_every_preset_round_trips_through_config_json_and_transformers_reads_it(name):
  config = llama_config.LlamaConfig.preset(name)
  assert llama_config.LlamaConfig.from_hf(config.to_hf()) == config
  hf = transformers.AutoConfig.for_model(**config.to_hf())
  assert (hf.hidden_size, hf.num_key_value_heads, hf.head_dim) == (config.hidden_size, config.kv_heads,
                                                                   config.head_size)


def test_widths_eos_ids_and_an_explicit_head_dim():
  config = llama_config.LlamaConfig(**{**SMALL, "num_key_value_heads": None}, head_dim=32, eos_token_id=[5, 7])
  assert (config.kv_heads, config.head_size, config.q_width, config.kv_width) == (4, 32, 128, 128)
  assert config.eos_ids == (5, 7)
  assert llama_config.LlamaConfig(**SMALL, eos_token_id=3).eos_ids == (3,)


@pytest.mark.parametrize("change,message", [
    (dict(num_key_value_heads=3), "num_attention_heads: 4 is not a multiple of num_key_value_heads=3"),
    (dict(head_dim=15), "head_dim: rotary embeddings need an even head_dim"),
    (dict(model_type="gemma"), "model_type: expected one of"),
    (dict(rms_norm_eps=-1.0), "rms_norm_eps: expected a positive number"),
    (dict(rope_scaling={
        "rope_type": "yarn",
        "factor": 2.0
    }), "rope_scaling"),
    (dict(attention_impl="cudnn"), "attention_impl: 'cudnn' needs dtype bfloat16"),
    (dict(model_type="qwen2"), "qwen2 model has q/k/v biases and no o_proj bias"),
    (dict(model_type="qwen2", attention_bias=True, attention_out_bias=True), "qwen2 model has q/k/v biases"),
])
def test_bad_fields_are_named(change, message):
  with pytest.raises(ValueError, match=message):
    llama_config.LlamaConfig(**{**SMALL, **change})


def test_qwen2_reads_its_biases_and_refuses_per_layer_windows():
  written = transformers.Qwen2Config(**SMALL).to_dict()
  assert llama_config.LlamaConfig.from_hf(written).attention_bias
  with pytest.raises(ValueError, match="use_sliding_window"):
    llama_config.LlamaConfig.from_hf({**written, "use_sliding_window": True})
