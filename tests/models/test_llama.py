"""Tests of models/llama.py (and the shared models/layers.py): parity with transformers' Llama, Mistral and Qwen2,
packing, token 0 as a real token, KV-cache decoding with grouped-query attention, remat, an 8-device mesh."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from optiml_jax.checkpoints import layout
from optiml_jax.models import layers
from optiml_jax.models import llama
from optiml_jax.models import llama_config
from optiml_jax.models import registry

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# 4 query heads, 2 key/value heads (GQA), head_dim 8; rope_theta 100 so that a few positions turn every
# frequency visibly (the scaled, smoothed and kept bands of llama3 scaling all matter at 16 tokens).
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rope_theta=100.0, rms_norm_eps=1e-5)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64
}
HF_CASES = {
    "llama_mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "llama_gqa_untied": dict(tie_word_embeddings=False),
    "llama3_rope": dict(tie_word_embeddings=True, rope_scaling=LLAMA3),
    "linear_rope": dict(rope_scaling={
        "rope_type": "linear",
        "factor": 4.0
    }),
    "llama_head_dim_biases": dict(head_dim=12, attention_bias=True, attention_out_bias=True, mlp_bias=True),
    "qwen2_biases": dict(model_type="qwen2", attention_bias=True, tie_word_embeddings=True),  # as from_hf reads it
    "mistral_window": dict(model_type="mistral", sliding_window=5),
}
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def _config(**overrides) -> llama_config.LlamaConfig:
  return llama_config.LlamaConfig(**{**TINY, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(config, params, tokens, **kwargs):
  return llama.Llama(config).apply({"params": params}, tokens, enable_dropout=False, **kwargs)


def _apply(config, params, tokens, **kwargs):
  """Logits of Llama(config) without dropout."""
  return np.asarray(_jit_apply(config, params, jnp.asarray(tokens), **{k: jnp.asarray(v) for k, v in kwargs.items()}))


@functools.cache
def _random_params(config):
  """Random params of Llama(config), every scale and bias random too (configs that differ only in how they
  compute share them)."""
  config = dataclasses.replace(config, dropout=0.0, attention_dropout=0.0, dtype="float32", remat_policy="none")
  params = jax.jit(lambda rng: llama.Llama(config).init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
      jax.random.PRNGKey(0))["params"]
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  out = []
  for key, (path, leaf) in zip(keys, leaves):
    name = path[-1].key
    noise = 0.1 * jax.random.normal(key, leaf.shape)
    out.append(1.0 + noise if name == "scale" else noise if name == "bias" else leaf * 8.0)  # init std 0.02 -> 0.16
  return jax.tree_util.tree_unflatten(tree, out)


def _hf_model(config: llama_config.LlamaConfig, seed: int = 0):
  """transformers' *ForCausalLM of `config` (eager attention, the exact reference), every parameter random."""
  torch.manual_seed(seed)
  hf_config = transformers.AutoConfig.for_model(**config.to_hf())
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = getattr(transformers, HF_CLASSES[config.model_type])(hf_config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.normal_(1.0, 0.1)
      elif name.endswith("bias"):
        param.normal_(0.0, 0.1)
      else:
        param.normal_(0.0, 0.15)
  return model


@pytest.fixture(scope="module", params=list(HF_CASES))
def hf_case(request):
  config = _config(**HF_CASES[request.param])
  model = _hf_model(config)
  state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return request.param, config, model, state_dict


@pytest.mark.parametrize("scan_layers", [True, False])
def test_logits_match_transformers(hf_case, scan_layers):
  name, config, hf_model, state_dict = hf_case
  config = dataclasses.replace(config, scan_layers=scan_layers)
  params = layout.params_from_hf_state_dict(config, state_dict)
  tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 16))
  tokens[0, 3] = 0  # token 0 is a real token: nothing may treat it as padding
  with torch.no_grad():
    expected = hf_model(torch.from_numpy(tokens)).logits.numpy()
  logits = _apply(config, params, tokens)
  assert logits.dtype == np.float32 and logits.shape == expected.shape
  assert np.abs(expected).max() > 0.5  # Not trivially small: the comparison below can fail.
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  # What the case is about changes the logits well beyond the tolerance.
  plain = {
      "llama3_rope": dict(rope_scaling=None),
      "linear_rope": dict(rope_scaling=None),
      "mistral_window": dict(sliding_window=None),
      "llama_gqa_untied": dict(tie_word_embeddings=True)
  }
  if name in plain and scan_layers:
    other = dataclasses.replace(config, **plain[name])
    # (The tied model has no lm_head: the untied one must read it.)
    other_params = {k: v for k, v in params.items() if k != "lm_head" or not other.tie_word_embeddings}
    assert np.abs(_apply(other, other_params, tokens) - expected).max() > 1e-2, name


def test_attention_dropout_path_equals_the_fused_one():
  """The explicit path (taken with attention dropout) computes the same attention, GQA, window and mask included,
  when it keeps everything."""
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.normal(size=(2, 9, 6, 8)), jnp.float32)
  key, value = (jnp.asarray(rng.normal(size=(2, 9, 2, 8)), jnp.float32) for _ in range(2))
  segments = jnp.asarray([[1] * 5 + [2] * 4, [1] * 9])
  mask = layers.attention_mask(None, segments)

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def attend(window, rate, q, k, v, m):
    rng = jax.random.PRNGKey(0) if rate else None
    return layers.dot_product_attention(q, k, v, m, True, rate, rng, window=window)

  for window in (None, 3):
    np.testing.assert_allclose(attend(window, 1e-9, query, key, value, mask),
                               attend(window, 0.0, query, key, value, mask), atol=1e-5)
  # Query head n reads key/value head n // 3 (Hugging Face's repeat_kv): the same as repeating them by hand.
  repeated = attend(None, 0.0, query, jnp.repeat(key, 3, axis=2), jnp.repeat(value, 3, axis=2), mask)
  np.testing.assert_allclose(attend(None, 0.0, query, key, value, mask), repeated, atol=1e-6)


def test_decode_mask_window():
  mask = np.asarray(layers.decode_mask(jnp.asarray([4]), 8, num_queries=2, window=3))[0, 0]
  np.testing.assert_array_equal(mask.astype(int), [[0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]])


# ----------------------------------------------------------------------------------------------------------
# Packing, positions and token 0.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"sliding_window": 4}])
def test_packed_segments_equal_separate_rows(overrides):
  config = _config(**overrides)
  params = _random_params(config)
  rng = np.random.default_rng(2)
  first, second = rng.integers(0, config.vocab_size, 5), rng.integers(0, config.vocab_size, 7)
  first[2] = 0
  packed = np.concatenate([first, second, [0, 0]])[None]
  segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
  positions = np.array([list(range(5)) + list(range(7)) + [0, 0]])
  logits = _apply(config, params, packed, decoder_segment_ids=segments, decoder_positions=positions)
  # Trailing padding cannot change earlier logits of a causal model, so one batch holds the references.
  rows = np.stack([np.pad(first, (0, 9)), np.pad(second, (0, 7)), packed[0]])
  separate = _apply(config, params, rows)
  np.testing.assert_allclose(logits[0, :5], separate[0, :5], atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits[0, 5:12], separate[1, :7], atol=1e-5, rtol=0)
  # Without segment ids the second example would see the first: a real difference.
  assert np.abs(separate[2, 5:12] - separate[1, :7]).max() > 1e-2
  # Positions are derived from the segment ids when not given.
  derived = _apply(config, params, packed, decoder_segment_ids=segments)
  np.testing.assert_allclose(derived[0, :12], logits[0, :12], atol=1e-5, rtol=0)


def test_positions_rotate_queries_and_keys():
  config = _config()
  params = _random_params(config)
  tokens = np.random.default_rng(3).integers(0, config.vocab_size, size=(1, 8))
  base = _apply(config, params, tokens)
  # Rotary attention depends on relative positions only: a constant shift keeps the logits ...
  shifted = _apply(config, params, tokens, decoder_positions=np.arange(8)[None] + 5)
  np.testing.assert_allclose(shifted, base, atol=1e-4, rtol=0)
  # ... and other gaps change them.
  spread = _apply(config, params, tokens, decoder_positions=2 * np.arange(8)[None])
  assert np.abs(spread - base)[:, 1:].max() > 1e-2


def test_token_zero_is_not_padding():
  """Targets equal to 0 (a real token in Llama vocabularies) do not hide keys, unlike OPT's mask."""
  config = _config()
  params = _random_params(config)
  tokens = np.random.default_rng(4).integers(1, config.vocab_size, size=(2, 10))
  targets = np.roll(tokens, -1, axis=1)
  targets[:, 2] = 0
  np.testing.assert_array_equal(_apply(config, params, tokens, decoder_target_tokens=targets),
                                _apply(config, params, tokens))


# ----------------------------------------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------------------------------------


def _decoder(config):
  model = llama.Llama(config)
  prefill = jax.jit(lambda p, c, t, n: model.apply({
      "params": p,
      "cache": c
  }, t, enable_dropout=False, prefill=True, prefill_lengths=n, mutable=["cache"]))
  decode = jax.jit(lambda p, c, t: model.apply({
      "params": p,
      "cache": c
  }, t, enable_dropout=False, decode=True, mutable=["cache"]))
  return prefill, decode


@pytest.mark.parametrize("scan_layers", [True, False])
def test_token_by_token_decoding_equals_full_forward(scan_layers):
  config = _config(scan_layers=scan_layers, tie_word_embeddings=False)
  params = _random_params(config)
  tokens = np.random.default_rng(5).integers(0, config.vocab_size, size=(2, 9))
  full = _apply(config, params, tokens)
  cache = registry.init_decode_cache(config, batch_size=2, max_decode_length=12)
  key_shape = (cache["layers"] if scan_layers else cache["layers_0"])["self_attn"]["cached_key"].shape
  assert key_shape[-3:] == (12, 2, 8)  # [.., cache_length, kv_heads, head_dim]: the cache holds kv heads only
  _, decode = _decoder(config)
  for t in range(tokens.shape[1]):
    logits, variables = decode(params, cache, jnp.asarray(tokens[:, t:t + 1]))
    cache = variables["cache"]
    np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(cache["cache_index"], [9, 9])


@pytest.mark.parametrize("overrides", [dict(scan_layers=True), dict(scan_layers=False, sliding_window=4)])
def test_ragged_prefill_and_multi_token_decode_equal_full_forward(overrides):
  # Ragged prompts prefilled, then 3 tokens per example in one call, then 1: what shared-prompt scoring does.
  config = _config(**overrides)
  params = _random_params(config)
  model = llama.Llama(config)
  tokens = np.random.default_rng(6).integers(0, config.vocab_size, size=(2, 12))
  full = _apply(config, params, tokens)
  lengths = np.array([4, 7])
  prompts = np.where(np.arange(7)[None] < lengths[:, None], tokens[:, :7], 0)  # padded after each prompt
  # t5x: a decode=True call without a cache creates it, then prefill fills it.
  create = jax.jit(lambda p: model.apply({"params": p}, jnp.ones(
      (2, 12), jnp.int32), enable_dropout=False, decode=True, max_decode_length=12, mutable=["cache"])[1])
  prefill, decode = _decoder(config)
  logits, variables = prefill(params, create(params)["cache"], jnp.asarray(prompts), jnp.asarray(lengths))
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(np.asarray(logits)[b, :n], full[b, :n], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(variables["cache"]["cache_index"], lengths)
  rows = np.arange(2)[:, None]
  chunk = lengths[:, None] + np.arange(3)
  logits, variables = decode(params, variables["cache"], jnp.asarray(tokens[rows, chunk]))
  np.testing.assert_allclose(np.asarray(logits), full[rows, chunk], atol=1e-4, rtol=0)
  np.testing.assert_array_equal(variables["cache"]["cache_index"], lengths + 3)
  logits, _ = decode(params, variables["cache"], jnp.asarray(tokens[np.arange(2), lengths + 3][:, None]))
  np.testing.assert_allclose(np.asarray(logits)[:, 0], full[np.arange(2), lengths + 3], atol=1e-4, rtol=0)


def test_decode_and_prefill_together_is_an_error():
  config = _config()
  with pytest.raises(ValueError, match="decode and prefill"):
    llama.Llama(config).init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), decode=True, prefill=True)


# ----------------------------------------------------------------------------------------------------------
# How it computes: logit positions, remat, dropout, bfloat16.
# ----------------------------------------------------------------------------------------------------------


def test_logit_positions_give_those_rows_of_the_full_logits():
  config = _config(tie_word_embeddings=False)
  params = _random_params(config)
  tokens = np.random.default_rng(7).integers(0, config.vocab_size, size=(2, 10))
  positions = np.array([[7, 2, 9], [0, 0, 4]], np.int32)
  picked = _apply(config, params, tokens, logit_positions=positions)
  assert picked.shape == (2, 3, config.vocab_size)
  np.testing.assert_allclose(picked, np.take_along_axis(_apply(config, params, tokens), positions[:, :, None], 1),
                             atol=1e-5)


@pytest.mark.parametrize("remat_policy,scan_layers", [("full", True), ("dots_with_no_batch_dims_and_attention", True),
                                                      pytest.param("dots", False, marks=pytest.mark.slow)])
def test_remat_keeps_gradients(remat_policy, scan_layers):
  config = _config(scan_layers=scan_layers)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(8).integers(0, config.vocab_size, size=(2, 8)))

  def loss(p, cfg):
    return jax.nn.logsumexp(llama.Llama(cfg).apply({"params": p}, tokens, enable_dropout=False), -1).mean()

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  plain, remat = grad(params, config), grad(params, dataclasses.replace(config, remat_policy=remat_policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), plain, remat)


def test_dropout_is_random_when_enabled_and_off_otherwise():
  config = _config(dropout=0.1, attention_dropout=0.1)
  params = _random_params(config)
  tokens = jnp.asarray(np.random.default_rng(9).integers(0, config.vocab_size, size=(1, 8)))
  model = llama.Llama(config)
  apply = jax.jit(lambda rng: model.apply({"params": params}, tokens, rngs={"dropout": rng}))
  runs = [np.asarray(apply(jax.random.PRNGKey(s))) for s in (0, 1)]
  assert np.abs(runs[0] - runs[1]).max() > 1e-3
  np.testing.assert_allclose(_apply(config, params, tokens),
                             _apply(dataclasses.replace(config, dropout=0.0, attention_dropout=0.0), params, tokens),
                             atol=1e-6)


def test_bfloat16_compute_returns_float32_logits():
  config = _config(dtype="bfloat16")
  params = _random_params(config)
  tokens = np.random.default_rng(10).integers(0, config.vocab_size, size=(1, 8))
  logits = _apply(config, params, tokens)
  reference = _apply(dataclasses.replace(config, dtype="float32"), params, tokens)
  assert logits.dtype == np.float32
  assert np.abs(logits - reference).max() < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("name", llama_config.PRESETS)
def test_presets_build_the_parameters_their_config_counts(name):
  config = llama_config.LlamaConfig.preset(name)
  shapes = jax.eval_shape(lambda: llama.Llama(config).init(jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32)))
  assert config.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  assert ("lm_head" in shapes["params"]) == (not config.tie_word_embeddings)


# ----------------------------------------------------------------------------------------------------------
# An 8-device mesh.
# ----------------------------------------------------------------------------------------------------------

_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from optiml_jax.models import llama, llama_config, partitioning, registry

    assert len(jax.devices()) == 8, jax.devices()
    config = llama_config.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rope_theta=100.0, initializer_range=0.2)
    model = llama.Llama(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(4, 12)), jnp.int32)
    segments = jnp.asarray(np.repeat([[1] * 7 + [2] * 5], 4, axis=0), jnp.int32)
    variables = jax.jit(lambda r: model.init(r, tokens, enable_dropout=False))(jax.random.PRNGKey(0))
    params, axes = variables["params"], partitioning.params_logical_axes(variables)
    forward = lambda p, x, s: model.apply({"params": p}, x, decoder_segment_ids=s, enable_dropout=False)
    reference = np.asarray(jax.jit(forward)(params, tokens, segments))

    def decode_all(p, cache):  # prefill 6 tokens, then 3 in one call, then 1
      apply = lambda c, t, **kw: model.apply({"params": p, "cache": c}, t, enable_dropout=False, mutable=["cache"],
                                             **kw)
      _, v = apply(cache, tokens[:, :6], prefill=True)
      a, v = apply(v["cache"], tokens[:, 6:9], decode=True)
      b, _ = apply(v["cache"], tokens[:, 9:10], decode=True)
      return jnp.concatenate([a, b], axis=1)

    full = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, enable_dropout=False))(params, tokens))
    result = {}
    for shape in [(2, 1, 4), (1, 4, 2)]:  # 2 kv heads on tensor=4 and on tensor=2
      mesh = partitioning.make_mesh(*shape)
      sharded = partitioning.shard_params(params, axes, mesh)
      batch = partitioning.logical_to_mesh_sharding({"b": jax.sharding.PartitionSpec("batch", "length")}, mesh)["b"]
      param_shardings = partitioning.logical_to_mesh_sharding(axes, mesh)
      with partitioning.mesh_context(mesh):
        run = jax.jit(forward, in_shardings=(param_shardings, batch, batch))
        logits = run(sharded, jax.device_put(tokens, batch), jax.device_put(segments, batch))
        cache = registry.init_decode_cache(config, 4, 12)
        decoded = jax.jit(decode_all)(sharded, cache)
      kernel = sharded["layers"]["self_attn"]["k_proj"]["kernel"]
      result[str(shape)] = {
          "max_diff": float(np.abs(np.asarray(logits) - reference).max()),
          "scale": float(np.abs(reference).max()),
          "decode_diff": float(np.abs(np.asarray(decoded) - full[:, 6:10]).max()),
          "kernel_spec": str(kernel.sharding.spec),
          "kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
      }
    print("RESULT " + json.dumps(result))
""")


@pytest.mark.slow  # a fresh interpreter compiling two meshes (~30 s on two CPU cores)
def test_eight_device_mesh_gives_single_device_logits():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICE_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
  for shape, r in json.loads(line[len("RESULT "):]).items():
    _, fsdp, tensor = json.loads(shape.replace("(", "[").replace(")", "]"))
    assert r["scale"] > 0.1, (shape, r)
    assert r["max_diff"] < 1e-5, (shape, r)
    assert r["decode_diff"] < 1e-4, (shape, r)
    assert r["kernel_spec"] == str(P(None, "fsdp", "tensor")), (shape, r)
    assert r["kernel_shard_shape"] == [2, 32 // fsdp, 16 // tensor], (shape, r)


def _loss_and_grads_on_packed_padded_batch(config, params):
  """(loss, logits, grads) of a GPU training step's kind: packed rows (two segments), trailing padding."""
  rng = np.random.default_rng(11)
  tokens = rng.integers(0, config.vocab_size, size=(4, 128))
  segments = np.concatenate([np.ones((4, 70), int), np.full((4, 40), 2), np.zeros((4, 18), int)], axis=1)
  targets = np.roll(tokens, -1, axis=1)
  weights = (segments > 0) & (np.roll(segments, -1, axis=1) == segments)

  def loss(p):
    logits = llama.Llama(config).apply({"params": p}, jnp.asarray(tokens), decoder_segment_ids=jnp.asarray(segments),
                                       enable_dropout=False)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(targets)[..., None], -1)[..., 0]
    return (ce * weights).sum() / weights.sum(), logits[segments > 0]

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return float(value), logits, grads


@pytest.mark.gpu  # cuDNN flash attention runs on CUDA GPUs only.
@pytest.mark.parametrize("sliding_window", [None, 48])
def test_cudnn_attention_is_as_close_to_float32_as_xla_in_bfloat16(sliding_window):
  # As OPT's test (tests/models/test_opt.py): two bf16 kernels are compared with a float32 reference; a masking
  # error (a key of another segment, of the window's outside, or of the wrong kv head) would put cuDNN's error far
  # above XLA's.
  config = llama_config.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    sliding_window=sliding_window, model_type="mistral")
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
