"""Hugging Face folders of the Llama family (Llama, Mistral, Qwen2) through load_hf / save_hf / Orbax, bitwise.

Random tiny transformers models, every parameter random, saved with `save_pretrained`; what we write back must be
what `from_pretrained` loads, tensor for tensor. OPT's own round trips are in tests/test_convert.py.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import jax
import numpy as np
import pytest
import safetensors.numpy

from optiml_jax import convert
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import layouts
from optiml_jax.models import llama_config
from optiml_jax.models import registry

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Tiny shapes: 4 query heads, 2 key/value heads (GQA), vocabulary 40.
TINY = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)
CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}
CASES = {
    # name: (model_type, config overrides, dtype, scan_layers, max_shard_size)
    "llama_tied_mha": ("llama", dict(num_key_value_heads=4, tie_word_embeddings=True), None, True, "5GB"),
    "llama_untied_gqa_biases": ("llama", dict(tie_word_embeddings=False, attention_bias=True,
                                              mlp_bias=True), None, False, "5GB"),
    "llama_head_dim_sharded": ("llama", dict(tie_word_embeddings=False, head_dim=16), None, True, "20KB"),
    "llama_bf16": ("llama", dict(tie_word_embeddings=True), torch.bfloat16, False, "5GB"),
    "mistral_untied": ("mistral", dict(tie_word_embeddings=False, sliding_window=None), None, True, "5GB"),
    "qwen2_tied_biases": ("qwen2", dict(tie_word_embeddings=True), None, False, "5GB"),
    "qwen2_untied_biases": ("qwen2", dict(tie_word_embeddings=False), None, True, "30KB"),
}


def _hf_model(model_type: str, seed: int = 0, dtype=None, **overrides):
  """A random tiny *ForCausalLM; every parameter random so that mixing two tensors up cannot go unseen."""
  config_cls, model_cls = (getattr(transformers, name) for name in CLASSES[model_type])
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**TINY, **overrides})).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_()
  return model.to(dtype) if dtype is not None else model


def _assert_state_dicts_equal(expected, actual) -> None:
  assert set(expected) == set(actual)
  for key, value in expected.items():
    assert actual[key].dtype == value.dtype, key
    assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_orbax_hf_round_trip_is_bitwise_and_from_pretrained_loads_it(tmp_path, case):
  model_type, overrides, dtype, scan_layers, max_shard_size = CASES[case]
  model = _hf_model(model_type, dtype=dtype, **overrides)
  hf_dir = tmp_path / "hf"
  model.save_pretrained(hf_dir, max_shard_size=max_shard_size)

  config, params = convert.load_hf(hf_dir, {"scan_layers": scan_layers})
  assert isinstance(config, llama_config.LlamaConfig) and config.model_type == model_type
  assert config.tie_word_embeddings == model.config.tie_word_embeddings
  assert layout.is_scanned(params) == scan_layers
  assert {p: v.shape for p, v in layout.flatten(params).items()} == layout.param_shapes(config)
  assert ("lm_head", "kernel") in layout.flatten(params) or config.tie_word_embeddings

  convert.save_orbax(params, tmp_path / "orbax", config)
  restored_config, restored = convert.restore_orbax(tmp_path / "orbax")
  assert restored_config == config
  for path, value in layout.flatten(params).items():
    got = layout.flatten(restored)[path]
    assert isinstance(got, np.ndarray) and got.dtype == value.dtype and np.array_equal(got, value), path

  out = convert.save_hf(restored_config, restored, tmp_path / "hf_out", max_shard_size=max_shard_size)
  if max_shard_size != "5GB":
    index = json.loads((out / hf_lib.SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
  original, _ = hf_lib.read_hf_weights(hf_dir)
  written, _ = hf_lib.read_hf_weights(out)
  assert set(written) == set(original) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
  assert ("lm_head.weight" in written) == (not config.tie_word_embeddings)
  for key, value in written.items():
    assert value.dtype == original[key].dtype and value.tobytes() == original[key].tobytes(), key

  model_cls = getattr(transformers, CLASSES[model_type][1])
  loaded, info = model_cls.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert loaded.dtype == model.dtype
  _assert_state_dicts_equal(model.state_dict(), loaded.state_dict())
  auto = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert type(auto).__name__ == CLASSES[model_type][1]


def test_kernels_transposed_layers_stacked_and_head_untied(tmp_path):
  model = _hf_model("qwen2", tie_word_embeddings=False)
  model.save_pretrained(tmp_path)
  _, params = convert.load_hf(tmp_path, {"scan_layers": True})
  hf = {k: v.numpy() for k, v in model.state_dict().items()}
  np.testing.assert_array_equal(params["layers"]["self_attn"]["k_proj"]["kernel"][1],
                                hf["model.layers.1.self_attn.k_proj.weight"].T)
  np.testing.assert_array_equal(params["layers"]["self_attn"]["q_proj"]["bias"][0],
                                hf["model.layers.0.self_attn.q_proj.bias"])
  np.testing.assert_array_equal(params["layers"]["mlp"]["down_proj"]["kernel"][0],
                                hf["model.layers.0.mlp.down_proj.weight"].T)
  np.testing.assert_array_equal(params["layers"]["post_attention_layernorm"]["scale"][1],
                                hf["model.layers.1.post_attention_layernorm.weight"])
  np.testing.assert_array_equal(params["norm"]["scale"], hf["model.norm.weight"])
  np.testing.assert_array_equal(params["lm_head"]["kernel"], hf["lm_head.weight"].T)
  assert "bias" not in params["layers"]["self_attn"]["o_proj"]  # Qwen2: q/k/v biases only.
  assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (2, 32, 16)  # GQA: 2 heads of 8.


def test_param_shapes_match_the_flax_model():
  """The contract with models/llama.py: the layout's table is exactly what make_model(config).init creates."""
  for overrides, scan in ((dict(tie_word_embeddings=True), True), (dict(attention_bias=True, mlp_bias=True), False),
                          (dict(model_type="qwen2", attention_bias=True, head_dim=16), True)):
    config = llama_config.LlamaConfig(**{**TINY, **overrides}, scan_layers=scan)
    model = registry.make_model(config)
    tokens = jax.ShapeDtypeStruct((1, 4), np.int32)
    variables = jax.eval_shape(lambda t, m=model: m.init(jax.random.key(0), t, enable_dropout=False), tokens)
    shapes = {p: tuple(v.shape) for p, v in layout.flatten(variables["params"]).items()}
    assert shapes == layout.param_shapes(config)


def test_state_dict_names_and_the_tied_head(tmp_path):
  model = _hf_model("llama", tie_word_embeddings=True)
  config = registry.config_from_hf(model.config.to_dict())
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert "lm_head.weight" in state  # transformers' state dict has the tied head; files need not.

  params = convert.params_from_hf_state_dict(config, state, "x.safetensors")
  back = convert.hf_state_dict_from_params(config, params)
  assert set(back) == set(state) - {"lm_head.weight"}
  # LlamaModel's bare names read as well.
  bare = {k.removeprefix("model."): v for k, v in state.items()}
  bare_params = convert.params_from_hf_state_dict(config, bare, "bare")
  for path, value in layout.flatten(params).items():
    np.testing.assert_array_equal(layout.flatten(bare_params)[path], value)

  state["lm_head.weight"] = state["lm_head.weight"] + 1.0
  with pytest.raises(
      convert.ConversionError,
      match=r"x\.safetensors: tensor lm_head\.weight differs from model\.embed_tokens\.weight; "
      r"this llama config ties"):
    convert.params_from_hf_state_dict(config, state, "x.safetensors")

  untied = dataclasses.replace(config, tie_word_embeddings=False)
  del state["lm_head.weight"]
  with pytest.raises(convert.ConversionError, match=r"x\.safetensors: missing tensor lm_head\.weight \(expected shape "
                     r"\(40, 32\)\)"):
    convert.params_from_hf_state_dict(untied, state, "x.safetensors")


def test_wrong_shape_names_file_and_key(tmp_path):
  model = _hf_model("mistral", tie_word_embeddings=False)
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  index = json.loads((tmp_path / hf_lib.SAFE_WEIGHTS_INDEX_NAME).read_text())["weight_map"]
  key = "model.layers.1.self_attn.v_proj.weight"
  shard = tmp_path / index[key]
  tensors = safetensors.numpy.load_file(str(shard))
  safetensors.numpy.save_file({**tensors, key: tensors[key][:-1].copy()}, str(shard))
  with pytest.raises(convert.ConversionError,
                     match=rf"{shard.name}: tensor {key}: expected shape \(16, 32\), got \(15, 32\)"):
    convert.load_hf(tmp_path)


def test_old_per_layer_rotary_inv_freq_buffers_are_skipped_as_transformers_skips_them(tmp_path):
  """transformers < 4.31 saved each layer's rotary `inv_freq` buffer; from_pretrained ignores those keys, and so does
  load_hf. Any other stray tensor is still refused, and OPT (no rotary embedding) keeps refusing the key."""
  model = _hf_model("llama", tie_word_embeddings=False)
  model.config.save_pretrained(tmp_path)
  state = {k: v.clone() for k, v in model.state_dict().items()}
  inv_freq = 1.0 / (10000**(torch.arange(0, 8, 2).float() / 8))
  for i in range(TINY["num_hidden_layers"]):
    state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq  # as transformers 4.30 wrote them
  torch.save(state, tmp_path / hf_lib.TORCH_WEIGHTS_NAME)
  assert transformers.LlamaForCausalLM.from_pretrained(tmp_path) is not None
  config, params = convert.load_hf(tmp_path)
  expected = convert.params_from_hf_state_dict(config, {k: v.numpy() for k, v in model.state_dict().items()})
  for path, value in layout.flatten(expected).items():
    np.testing.assert_array_equal(layout.flatten(params)[path], value, err_msg="/".join(path))

  numpy_state = {k: v.numpy() for k, v in state.items()}
  for stray in ("model.layers.0.self_attn.rotary_emb.inv_freq_scaled", "model.layers.0.self_attn.position_ids"):
    with pytest.raises(convert.ConversionError, match=rf"x\.bin: unexpected tensor {re.escape(stray)} for this "
                       "config; 1 unexpected in all"):
      convert.params_from_hf_state_dict(config, {**numpy_state, stray: inv_freq.numpy()}, "x.bin")
  opt_config = registry.preset("tiny", num_hidden_layers=1)
  shapes = layout.param_shapes(opt_config)
  opt_params = layout._unflatten({path: np.zeros(shape, np.float32) for path, shape in shapes.items()})  # pylint: disable=protected-access
  opt_state = convert.hf_state_dict_from_params(opt_config, opt_params)
  key = "model.decoder.layers.0.self_attn.rotary_emb.inv_freq"
  with pytest.raises(convert.ConversionError, match=rf"unexpected tensor {re.escape(key)}"):
    convert.params_from_hf_state_dict(opt_config, {**opt_state, key: inv_freq.numpy()})


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
  with pytest.raises(convert.ConversionError) as error:
    convert.load_hf(tmp_path)
  message = str(error.value)
  assert message.startswith(f"{tmp_path / 'config.json'}: model_type 'gpt2' is not supported")
  assert all(t in message for t in ("opt", "llama", "mistral", "qwen2")), message
  # And through the CLI, as one line.
  assert convert.main(["hf-to-orbax", str(tmp_path), str(tmp_path / "out")]) == 1
  assert not (tmp_path / "out").exists()


def test_a_config_of_no_known_family_is_refused():

  @dataclasses.dataclass(frozen=True)
  class Other:
    family = "gpt2"
    num_hidden_layers: int = 1
    scan_layers: bool = True

  with pytest.raises(
      convert.ConversionError, match=r"no Hugging Face parameter layout for Other \(family 'gpt2'\); "
      r"known families: opt, llama"):
    layout.param_shapes(Other())
  assert tuple(family.name for family in registry.FAMILIES) == layouts.FAMILIES


def test_orbax_restore_reads_the_family_from_config_json(tmp_path):
  model = _hf_model("qwen2", tie_word_embeddings=True)
  model.save_pretrained(tmp_path / "hf")
  config, params = convert.load_hf(tmp_path / "hf", {"scan_layers": False})
  convert.save_orbax(params, tmp_path / "orbax", config)
  assert json.loads((tmp_path / "orbax" / "config.json").read_text())["model_type"] == "qwen2"
  restored_config, _ = convert.restore_orbax(tmp_path / "orbax")
  assert restored_config == config and restored_config.attention_bias
  # A params tree of another shape is refused with the path named.
  bad = dict(params)
  bad["norm"] = {"scale": np.zeros((31,), np.float32)}
  with pytest.raises(convert.ConversionError, match=r"parameter norm/scale: expected shape \(32,\), got \(31,\)"):
    convert.save_orbax(bad, tmp_path / "bad", config)
  assert not (tmp_path / "bad").exists()


def _write_cli_tokenizer(folder: pathlib.Path) -> None:
  folder.mkdir()
  (folder / "tokenizer.json").write_text("{}")
  (folder / "chat_template.jinja").write_text("{{ messages }}")


def test_cli_orbax_to_hf_copies_tokenizer_files(tmp_path):
  model = _hf_model("llama", tie_word_embeddings=False)
  model.save_pretrained(tmp_path / "hf")
  assert convert.main(["hf-to-orbax", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
  _write_cli_tokenizer(tmp_path / "tok")
  assert convert.main(
      ["orbax-to-hf",
       str(tmp_path / "ckpt"),
       str(tmp_path / "out"), "--tokenizer_dir",
       str(tmp_path / "tok")]) == 0
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json"
  ]
  _assert_state_dicts_equal(model.state_dict(),
                            transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").state_dict())
