"""Tests of models/opt.py: parity with transformers' PyTorch OPT, packing, KV-cache decoding, config."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import convert
from optiml_jax.models import layers
from optiml_jax.models import opt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Small enough for CPU, large enough that every code path (heads, projections, two layers) is exercised.
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
             max_position_embeddings=40, init_std=0.1)
HF_CASES = {
    "pre_ln": {},
    "post_ln_proj": dict(do_layer_norm_before=False, word_embed_proj_dim=16),  # the opt-350m shape
    "no_bias": dict(enable_bias=False),
    "no_affine": dict(layer_norm_elementwise_affine=False),
}


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(config, params, tokens, **kwargs):
  return opt.OPT(config).apply({"params": params}, tokens, enable_dropout=False, **kwargs)


def _apply(config, params, tokens, **kwargs):
  """Logits of OPT(config) without dropout (jit-ed: eager flax dispatch is slower on these sizes)."""
  return _jit_apply(config, params, jnp.asarray(tokens), **{k: jnp.asarray(v) for k, v in kwargs.items()})


def _random_params(config):
  """Random params of OPT(config); configs that differ only in how they compute share them."""
  return _init_params(
      dataclasses.replace(config, dropout=0.0, attention_dropout=0.0, dtype="float32", remat_policy="none"))


@functools.cache
def _init_params(config):
  init = jax.jit(lambda rng: opt.OPT(config).init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))
  return init(jax.random.PRNGKey(0))["params"]


@pytest.fixture(scope="module", params=list(HF_CASES))
def hf_model_dir(request, tmp_path_factory, random_hf_opt):
  """A random transformers OPTForCausalLM saved with save_pretrained; all biases and norms randomized too."""
  config = opt.OPTConfig(**SMALL, **HF_CASES[request.param])
  model = random_hf_opt(config)
  path = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(path)
  return path, model


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(hf_model_dir, scan_layers):
  path, hf_model = hf_model_dir
  config, params = convert.load_hf(path, {"scan_layers": scan_layers})
  tokens = np.random.default_rng(1).integers(3, config.vocab_size, size=(2, 13))
  with torch.no_grad():
    expected = hf_model(torch.from_numpy(tokens)).logits.numpy()
  logits = np.asarray(_apply(config, params, tokens))
  assert logits.dtype == np.float32 and logits.shape == expected.shape
  assert np.abs(expected).max() > 0.5  # Not trivially small: the comparison below can fail.
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_packed_segments_equal_separate_rows():
  config = opt.OPTConfig(**SMALL, dropout=0.0)
  params = _random_params(config)
  rng = np.random.default_rng(2)
  first, second = rng.integers(3, config.vocab_size, 5), rng.integers(3, config.vocab_size, 7)
  packed = np.concatenate([first, second, [0, 0]])
  segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
  positions = np.array([list(range(5)) + list(range(7)) + [0, 0]])
  targets = np.concatenate([first[1:], [2], second[1:], [2], [0, 0]])[None]
  logits = np.asarray(
      _apply(config, params, packed[None], decoder_target_tokens=targets, decoder_segment_ids=segments,
             decoder_positions=positions))
  # Trailing padding cannot change earlier logits of a causal model, so one batch holds the references.
  rows = np.stack([np.pad(first, (0, 9)), np.pad(second, (0, 7)), packed])
  separate = np.asarray(_apply(config, params, rows))
  np.testing.assert_allclose(logits[0, :5], separate[0, :5], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[0, 5:12], separate[1, :7], atol=1e-5, rtol=0)
  # Without segment ids the second example would see the first: a real difference.
  assert np.abs(separate[2, 5:12] - separate[1, :7]).max() > 1e-3
  # Positions are derived from the segment ids when not given.
  derived = np.asarray(_apply(config, params, packed[None], decoder_segment_ids=segments))
  np.testing.assert_allclose(derived[0, :12], logits[0, :12], atol=1e-5, rtol=0)


def test_positions_from_segment_ids():
  segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [4, 4, 4, 4, 4, 4, 4, 4]])
  np.testing.assert_array_equal(opt.positions_from_segment_ids(segments), [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])


def _decode_step(config):
  model = opt.OPT(config)

  @jax.jit
  def step(params, cache, token):
    logits, variables = model.apply({
        "params": params,
        "cache": cache
    }, token, enable_dropout=False, decode=True, mutable=["cache"])
    return logits[:, 0], variables["cache"]

  return step


@pytest.mark.parametrize("scan_layers", [True, False])
def test_token_by_token_decoding_equals_full_forward(scan_layers):
  config = opt.OPTConfig(**SMALL, scan_layers=scan_layers)
  params = _random_params(config)
  tokens = np.random.default_rng(3).integers(3, config.vocab_size, size=(2, 9))
  full = np.asarray(_apply(config, params, tokens))
  cache = opt.init_decode_cache(config, batch_size=2, max_decode_length=12)
  step = _decode_step(config)
  for t in range(tokens.shape[1]):
    logits, cache = step(params, cache, jnp.asarray(tokens[:, t:t + 1]))
    np.testing.assert_allclose(np.asarray(logits), full[:, t], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(cache["cache_index"], [9, 9])


@pytest.mark.parametrize("scan_layers", [True, False])
def test_prefill_then_decode_with_different_prompt_lengths(scan_layers):
  config = opt.OPTConfig(**SMALL, scan_layers=scan_layers, do_layer_norm_before=False, word_embed_proj_dim=16)
  params = _random_params(config)
  model = opt.OPT(config)
  tokens = np.random.default_rng(4).integers(3, config.vocab_size, size=(2, 10))
  full = np.asarray(_apply(config, params, tokens))
  lengths = np.array([3, 6])
  prompts = np.where(np.arange(6)[None] < lengths[:, None], tokens[:, :6], 0)  # Padded after each prompt.
  # t5x: a decode=True call without a cache creates it, then prefill fills it.
  create = jax.jit(lambda p: model.apply({"params": p}, jnp.ones(
      (2, 10), jnp.int32), enable_dropout=False, decode=True, max_decode_length=10, mutable=["cache"])[1])
  prefill = jax.jit(lambda p, cache, prompt, n: model.apply({
      "params": p,
      "cache": cache
  }, prompt, enable_dropout=False, prefill=True, prefill_lengths=n, mutable=["cache"]))
  logits, variables = prefill(params, create(params)["cache"], jnp.asarray(prompts), jnp.asarray(lengths))
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(np.asarray(logits)[b, :n], full[b, :n], atol=1e-4, rtol=0)
  cache = variables["cache"]
  np.testing.assert_array_equal(cache["cache_index"], lengths)
  step = _decode_step(config)
  for k in range(4):
    token = tokens[np.arange(2), lengths + k][:, None]
    logits, cache = step(params, cache, jnp.asarray(token))
    np.testing.assert_allclose(np.asarray(logits), full[np.arange(2), lengths + k], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_several_tokens_per_decode_call_equal_full_forward(scan_layers):
  # Ragged prompts prefilled, then 3 tokens per example in one call, then 1: what shared-prompt scoring does.
  config = opt.OPTConfig(**SMALL, scan_layers=scan_layers)
  params = _random_params(config)
  model = opt.OPT(config)
  tokens = np.random.default_rng(9).integers(3, config.vocab_size, size=(2, 11))
  full = np.asarray(_apply(config, params, tokens))
  lengths = np.array([4, 7])
  prompts = np.where(np.arange(7)[None] < lengths[:, None], tokens[:, :7], 0)
  cache = opt.init_decode_cache(config, batch_size=2, max_decode_length=11)
  prefill = jax.jit(lambda p, c, t, n: model.apply({
      "params": p,
      "cache": c
  }, t, enable_dropout=False, prefill=True, prefill_lengths=n, mutable=["cache"]))
  decode = jax.jit(lambda p, c, t: model.apply({
      "params": p,
      "cache": c
  }, t, enable_dropout=False, decode=True, mutable=["cache"]))
  _, variables = prefill(params, cache, jnp.asarray(prompts), jnp.asarray(lengths))
  rows = np.arange(2)[:, None]
  chunk = tokens[rows, lengths[:, None] + np.arange(3)]
  logits, variables = decode(params, variables["cache"], jnp.asarray(chunk))
  np.testing.assert_allclose(np.asarray(logits), full[rows, lengths[:, None] + np.arange(3)], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(variables["cache"]["cache_index"], lengths + 3)
  logits, _ = decode(params, variables["cache"], jnp.asarray(tokens[np.arange(2), lengths + 3][:, None]))
  np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), lengths + 3], atol=1e-4, rtol=0)


def test_dropout_is_random_when_enabled_and_off_otherwise():
  config = opt.OPTConfig(**SMALL, dropout=0.1, attention_dropout=0.1)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(5).integers(3, config.vocab_size, size=(1, 8)))
  model = opt.OPT(config)
  apply = jax.jit(lambda rng: model.apply({"params": params}, tokens, rngs={"dropout": rng}))
  runs = [np.asarray(apply(jax.random.PRNGKey(s))) for s in (0, 1)]
  assert np.abs(runs[0] - runs[1]).max() > 1e-3
  off = np.asarray(_apply(config, params, tokens))
  np.testing.assert_allclose(off, _apply(dataclasses.replace(config, dropout=0.0, attention_dropout=0.0), params,
                                         tokens), atol=1e-6)


def test_logit_positions_give_those_rows_of_the_full_logits():
  config = opt.OPTConfig(**SMALL, dropout=0.0)
  params = _random_params(config)
  tokens = np.random.default_rng(8).integers(3, config.vocab_size, size=(2, 10))
  positions = np.array([[7, 2, 9], [0, 0, 4]], np.int32)
  full = np.asarray(_apply(config, params, tokens))
  picked = np.asarray(_apply(config, params, tokens, logit_positions=positions))
  assert picked.shape == (2, 3, config.vocab_size)
  np.testing.assert_allclose(picked, np.take_along_axis(full, positions[:, :, None], axis=1), atol=1e-5)


@pytest.mark.parametrize("remat_policy", ["full", "dots_with_no_batch_dims", "dots_with_no_batch_dims_and_attention"])
def test_remat_keeps_logits_and_gradients(remat_policy):
  config = opt.OPTConfig(**SMALL, dropout=0.0)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(6).integers(3, config.vocab_size, size=(2, 8)))

  def loss(p, cfg):
    return opt.OPT(cfg).apply({"params": p}, tokens, enable_dropout=False).mean()

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  plain = grad(params, config)
  remat = grad(params, dataclasses.replace(config, remat_policy=remat_policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, remat)


def _saved_residuals(config, params, tokens, capsys):
  """What the forward pass of the loss keeps for its backward pass, as jax prints it: one line per array."""
  capsys.readouterr()
  jax.ad_checkpoint.print_saved_residuals(
      lambda p: opt.OPT(config).apply({
          "params": p
      }, tokens, enable_dropout=False).mean(), params)
  return [line for line in capsys.readouterr().out.splitlines() if "from the argument" not in line]


def test_remat_saving_attention_keeps_its_output_and_no_scores(capsys):
  config = opt.OPTConfig(**SMALL, dropout=0.0, scan_layers=False)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(6).integers(3, config.vocab_size, size=(2, 8)))
  saved = {
      policy: _saved_residuals(dataclasses.replace(config, remat_policy=policy), params, tokens, capsys)
      for policy in ("dots_with_no_batch_dims", "dots_with_no_batch_dims_and_attention")
  }
  named = [line for line in saved["dots_with_no_batch_dims_and_attention"] if "named 'attention_output'" in line]
  assert len(named) == config.num_hidden_layers and all(line.startswith("f32[2,8,4,8]") for line in named)
  assert sorted(set(saved["dots_with_no_batch_dims_and_attention"]) - set(named)) == sorted(
      set(saved["dots_with_no_batch_dims"]))  # the weight matmuls, as before: attention's output is all it adds
  assert not any(line.startswith("f32[2,4,8,8]") for lines in saved.values() for line in lines)  # no scores


def test_remat_saving_attention_saves_cudnns_forward_outputs():
  # jax's cuDNN attention is a custom_vjp whose forward primitive returns the output and the softmax statistics
  # its backward kernel reads: saving them leaves no attention forward in the backward pass.
  policy = layers.remat_policy("dots_with_no_batch_dims_and_attention")
  cudnn_forward = jax.extend.core.Primitive("dot_product_attention_fwd_wrapper")
  other = jax.extend.core.Primitive("dot_product_attention_bwd_wrapper")
  assert policy(cudnn_forward) and not policy(other)
  assert not layers.remat_policy("dots_with_no_batch_dims")(cudnn_forward)


def test_bfloat16_compute_returns_float32_logits():
  config = opt.OPTConfig(**SMALL, dtype="bfloat16")
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(7).integers(3, config.vocab_size, size=(1, 8)))
  logits = _apply(config, params, tokens)
  reference = _apply(dataclasses.replace(config, dtype="float32"), params, tokens)
  assert logits.dtype == jnp.float32
  assert np.abs(np.asarray(logits) - np.asarray(reference)).max() < 0.1 * np.abs(reference).max()


# ----------------------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------------------

PRESET_SHAPES = {  # hidden, layers, heads, ffn (Hugging Face facebook/opt-*).
    "opt-125m": (768, 12, 12, 3072), "opt-350m": (1024, 24, 16, 4096), "opt-1.3b": (2048, 24, 32, 8192),
    "opt-2.7b": (2560, 32, 32, 10240), "opt-6.7b": (4096, 32, 32, 16384), "opt-13b": (5120, 40, 40, 20480),
    "opt-30b": (7168, 48, 56, 28672), "opt-66b": (9216, 64, 72, 36864), "opt-175b": (12288, 96, 96, 49152),
}


@pytest.mark.parametrize("name", list(PRESET_SHAPES))
def test_presets_have_published_shapes(name):
  config = opt.OPTConfig.preset(name)
  shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.ffn_dim)
  assert shape == PRESET_SHAPES[name]
  assert (config.vocab_size, config.max_position_embeddings) == (50272, 2048)
  assert config.do_layer_norm_before == (name != "opt-350m")
  assert config.word_embed_proj_dim == (512 if name == "opt-350m" else config.hidden_size)


def test_unknown_preset():
  with pytest.raises(ValueError, match="opt-125m"):
    opt.OPTConfig.preset("opt-7b")


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,overrides", [("opt-125m", {}), ("opt-350m", {}), ("tiny", {
    "enable_bias": False
}), ("tiny", {
    "layer_norm_elementwise_affine": False,
    "scan_layers": False
}), ("tiny", {
    "word_embed_proj_dim": 32
})])
def test_num_params_counts_the_model(name, overrides):
  config = opt.OPTConfig.preset(name, **overrides)
  shapes = jax.eval_shape(lambda: opt.OPT(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32)))
  assert config.num_params() == _count(shapes["params"])


def test_num_params_of_published_models():
  # What transformers reports for facebook/opt-125m and facebook/opt-350m (tied head counted once).
  assert opt.OPTConfig.preset("opt-125m").num_params() == 125_239_296
  assert opt.OPTConfig.preset("opt-350m").num_params() == 331_196_416


def test_num_params_matches_transformers():
  for case in HF_CASES.values():
    config = opt.OPTConfig(**SMALL, **case)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**config.to_hf()))
    assert config.num_params() == sum(p.numel() for p in model.parameters())


def test_flops_per_token():
  config = opt.OPTConfig.preset("opt-350m")
  shapes = jax.eval_shape(lambda: opt.OPT(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32)))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  matmul = sum(int(np.prod(x.shape)) for path, x in flat if path[-1].key == "kernel" or path[0].key == "embed_tokens")
  assert config.num_matmul_params() == matmul
  assert config.flops_per_token(2048) == 6 * matmul + 12 * 24 * 1024 * 2048


def test_bad_activation_names_the_field():
  with pytest.raises(ValueError, match="activation_function"):
    opt.OPTConfig(**SMALL, activation_function="gelu")
  hf = opt.OPTConfig(**SMALL).to_hf()
  with pytest.raises(ValueError, match="activation_function"):
    opt.OPTConfig.from_hf({**hf, "activation_function": "gelu"})


@pytest.mark.parametrize(
    "field,value",
    [
        ("remat_policy", "sometimes"),
        ("attention_impl", "flash"),
        ("attention_impl", "cudnn"),  # cuDNN needs bf16/fp16 compute.
        ("hidden_size", 30),
        ("dropout", 1.5),
        ("dtype", "float77"),
        ("packed_attention_segments", -1),
    ])
def test_bad_config_fields_are_named(field, value):
  with pytest.raises(ValueError, match=field):
    opt.OPTConfig(**{**SMALL, field: value})


def test_from_hf_reads_a_real_config_and_names_problems():
  # facebook/opt-350m's config.json (older files lack enable_bias / layer_norm_elementwise_affine).
  hf = {
      "_remove_final_layer_norm": False,
      "activation_dropout": 0.0,
      "activation_function": "relu",
      "architectures": ["OPTForCausalLM"],
      "attention_dropout": 0.0,
      "bos_token_id": 2,
      "do_layer_norm_before": False,
      "dropout": 0.1,
      "eos_token_id": 2,
      "ffn_dim": 4096,
      "hidden_size": 1024,
      "init_std": 0.02,
      "layerdrop": 0.0,
      "max_position_embeddings": 2048,
      "model_type": "opt",
      "num_attention_heads": 16,
      "num_hidden_layers": 24,
      "pad_token_id": 1,
      "prefix": "</s>",
      "torch_dtype": "float16",
      "use_cache": True,
      "vocab_size": 50272,
      "word_embed_proj_dim": 512
  }
  config = opt.OPTConfig.from_hf(hf, dtype="bfloat16")
  assert config == opt.OPTConfig.preset("opt-350m", dtype="bfloat16")
  del hf["ffn_dim"]
  with pytest.raises(ValueError, match="ffn_dim"):
    opt.OPTConfig.from_hf(hf)
  with pytest.raises(ValueError, match="_remove_final_layer_norm"):
    opt.OPTConfig.from_hf({**opt.OPTConfig(**SMALL).to_hf(), "_remove_final_layer_norm": True})


def test_to_hf_loads_in_transformers(tmp_path):
  config = opt.OPTConfig(**SMALL, do_layer_norm_before=False, word_embed_proj_dim=16, enable_bias=False)
  (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
  hf = transformers.AutoConfig.from_pretrained(tmp_path)
  assert type(hf).__name__ == "OPTConfig"
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
              "max_position_embeddings", "word_embed_proj_dim", "do_layer_norm_before", "enable_bias"):
    assert getattr(hf, key) == getattr(config, key), key
  assert opt.OPTConfig.from_hf(config.to_hf()) == config


def test_attention_impl_none_picks_cudnn_only_where_it_runs(monkeypatch):
  assert opt.resolve_attention_impl("xla", "bfloat16", 64) == "xla"
  assert opt.resolve_attention_impl("cudnn", "bfloat16", 64) == "cudnn"

  class FakeDevice:

    def __init__(self, platform, compute_capability=None):
      self.platform, self.compute_capability = platform, compute_capability

  for device, dtype, head_dim, expected in [
      (FakeDevice("gpu", "9.0"), "bfloat16", 64, "cudnn"),  # H100: flash attention
      (FakeDevice("gpu", "8.0"), "float16", 128, "cudnn"),  # A100
      (FakeDevice("gpu", "7.0"), "bfloat16", 64, "xla"),  # V100: no cuDNN flash attention
      (FakeDevice("gpu", "9.0"), "float32", 64, "xla"),  # cuDNN needs bf16/fp16
      (FakeDevice("gpu", "9.0"), "bfloat16", 160, "xla"),  # head_dim over 128
      (FakeDevice("cpu"), "bfloat16", 64, "xla"),
      (FakeDevice("tpu"), "bfloat16", 128, "xla")
  ]:
    monkeypatch.setattr(jax, "devices", lambda d=device: [d])
    assert opt.resolve_attention_impl(None, dtype, head_dim) == expected, (device.platform, dtype, head_dim)


def _loss_and_grads_on_packed_padded_batch(config, params):
  """(loss, logits, grads) of a GPU training step's kind: packed rows (two segments), trailing padding."""
  rng = np.random.default_rng(7)
  tokens = rng.integers(3, config.vocab_size, size=(4, 128))
  segments = np.concatenate([np.ones((4, 70), int), np.full((4, 40), 2), np.zeros((4, 18), int)], axis=1)
  targets = np.where(segments > 0, np.roll(tokens, -1, axis=1), 0)

  def loss(p):
    logits = opt.OPT(config).apply({"params": p}, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(segments),
                                   enable_dropout=False)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(targets)[..., None], -1)[..., 0]
    return (ce * (targets > 0)).sum() / (targets > 0).sum(), logits[segments > 0]

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return float(value), logits, grads


@pytest.mark.gpu  # cuDNN flash attention runs on CUDA GPUs only.
def test_cudnn_attention_is_as_close_to_float32_as_xla_in_bfloat16():
  # Two bf16 kernels round differently, so they are compared with a float32 reference, not with each other
  # (on an H100 they differed by 5% on a feed-forward bias gradient, all of it bf16 rounding). A masking
  # error (a segment or padding key seen) would put cuDNN's error far above XLA's.
  config = opt.OPTConfig(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                         max_position_embeddings=256, dropout=0.0)
  params = _random_params(config)
  reference = _loss_and_grads_on_packed_padded_batch(dataclasses.replace(config, attention_impl="xla"), params)
  xla, cudnn = (_loss_and_grads_on_packed_padded_batch(
      dataclasses.replace(config, dtype="bfloat16", attention_impl=impl), params) for impl in ("xla", "cudnn"))

  def error(a, b):
    return float(jnp.linalg.norm(a.astype(jnp.float32) - b))

  assert abs(cudnn[0] - reference[0]) <= 2 * abs(xla[0] - reference[0]) + 1e-3 * reference[0]
  assert error(cudnn[1], reference[1]) <= 2 * error(xla[1], reference[1]) + 1e-3 * jnp.linalg.norm(reference[1])
  for (path, ref), g_xla, g_cudnn in zip(jax.tree_util.tree_leaves_with_path(reference[2]), jax.tree.leaves(xla[2]),
                                         jax.tree.leaves(cudnn[2])):
    bound = 3 * error(g_xla, ref) + 1e-2 * float(jnp.linalg.norm(ref)) + 1e-6
    assert error(g_cudnn, ref) <= bound, (jax.tree_util.keystr(path), error(g_cudnn, ref), error(g_xla, ref))


@pytest.mark.gpu  # cuDNN flash attention runs on CUDA GPUs only.
def test_remat_saving_attention_runs_no_cudnn_forward_in_the_backward_pass(capsys):
  config = opt.OPTConfig(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                         max_position_embeddings=256, dropout=0.0, dtype="bfloat16", attention_impl="cudnn",
                         scan_layers=False)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(6).integers(3, config.vocab_size, size=(2, 128)))
  saved = _saved_residuals(dataclasses.replace(config, remat_policy="dots_with_no_batch_dims_and_attention"), params,
                           tokens, capsys)
  # Per layer: the output [2, 128, 4, 64] and the softmax statistics, both from cuDNN's forward primitive.
  assert len([line for line in saved if "output of dot_product_attention_fwd" in line]) == 2 * 2, saved
  grads = [
      jax.jit(jax.grad(lambda p, c=c: opt.OPT(c).apply({
          "params": p
      }, tokens, enable_dropout=False).mean()))(params)
      for c in (config, dataclasses.replace(config, remat_policy="dots_with_no_batch_dims_and_attention"))
  ]
  for plain, remat in zip(*map(jax.tree.leaves, grads)):  # bf16: fusions may round differently, nothing more
    difference = float(jnp.linalg.norm(plain.astype(jnp.float32) - remat.astype(jnp.float32)))
    assert difference <= 1e-2 * float(jnp.linalg.norm(plain.astype(jnp.float32))) + 1e-6
