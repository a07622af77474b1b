"""The chunked LM head and loss: the plain path's loss and gradients, without the whole logits in memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optiml_jax.models import registry
from optiml_jax.trainer import chunked_loss
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import step as step_lib


def _plain(hidden, head, targets, weights):
  logits = jnp.einsum("bld,vd->blv", hidden, head.astype(hidden.dtype)).astype(jnp.float32)
  return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)


def _inputs(dtype=jnp.float32, batch=3, length=10, width=16, vocab=37):
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  hidden = jax.random.normal(keys[0], (batch, length, width)).astype(dtype)
  head = jax.random.normal(keys[1], (vocab, width)) * 0.3
  targets = jax.random.randint(keys[2], (batch, length), 0, vocab)
  weights = (jax.random.uniform(keys[3], (batch, length)) > 0.4).astype(jnp.float32)
  return hidden, head, targets, weights


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])  # 3 and 4 leave a padded last chunk; 64 > length
def test_chunks_give_the_plain_loss_and_gradients(chunk_size):
  hidden, head, targets, weights = _inputs()
  plain_loss, (plain_dh, plain_dw) = jax.value_and_grad(_plain, argnums=(0, 1))(hidden, head, targets, weights)
  loss_fn = functools.partial(chunked_loss.chunked_cross_entropy, chunk_size=chunk_size)
  loss, (dh, dw) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(hidden, head, targets, weights)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  np.testing.assert_allclose(dh, plain_dh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, plain_dw, rtol=1e-5, atol=1e-6)
  # Without differentiation the loss alone runs (no gradient formed), with the same value.
  np.testing.assert_allclose(jax.jit(loss_fn)(hidden, head, targets, weights), plain_loss, rtol=1e-6)


def test_bfloat16_hidden_states_keep_their_dtype_and_stay_close():
  hidden, head, targets, weights = _inputs(jnp.bfloat16)
  plain_loss, (plain_dh, plain_dw) = jax.value_and_grad(_plain, argnums=(0, 1))(hidden, head, targets, weights)
  loss_fn = functools.partial(chunked_loss.chunked_cross_entropy, chunk_size=4)
  loss, (dh, dw) = jax.value_and_grad(loss_fn, argnums=(0, 1))(hidden, head, targets, weights)
  assert dh.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-3)
  np.testing.assert_allclose(dh.astype(jnp.float32), plain_dh.astype(jnp.float32), atol=2e-2)
  np.testing.assert_allclose(dw, plain_dw, atol=2e-2)


def test_a_cotangent_scales_both_gradients():
  hidden, head, targets, weights = _inputs()
  loss_fn = functools.partial(chunked_loss.chunked_cross_entropy, chunk_size=4)
  once = jax.grad(loss_fn, argnums=(0, 1))(hidden, head, targets, weights)
  scaled = jax.grad(lambda *a: 2.5 * loss_fn(*a), argnums=(0, 1))(hidden, head, targets, weights)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 2.5 * a, rtol=1e-6), once, scaled)


def _model_and_batch(preset, **overrides):
  config = registry.preset(preset, **overrides)
  model = registry.make_model(config)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, config.vocab_size, (2, 13))
  weights = np.zeros((2, 12), np.float32)
  weights[0, 4:9] = 1.0
  weights[1, 2:12] = 1.0
  segments = np.ones((2, 12), np.int32)
  segments[0, 7:] = 2  # a packed row
  batch = {
      "decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
      "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
      "decoder_segment_ids": jnp.asarray(segments),
      "decoder_loss_weights": jnp.asarray(weights),
  }
  params = model.init(jax.random.PRNGKey(0), batch["decoder_input_tokens"], enable_dropout=False)["params"]
  return model, params, batch


TINY = dict(num_hidden_layers=2, vocab_size=97, max_position_embeddings=32, dtype="float32")
MODELS = {
    "opt tied": ("opt-125m", dict(TINY, hidden_size=32, ffn_dim=64, num_attention_heads=4)),
    "opt with projections": ("opt-350m",
                             dict(TINY, hidden_size=32, word_embed_proj_dim=16, ffn_dim=64, num_attention_heads=4)),
    "llama untied": ("llama-3.1-8b",
                     dict(TINY, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                          tie_word_embeddings=False)),
    "llama tied": ("smollm2-135m",
                   dict(TINY, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)),
}

CASES = [(name, None, 1) for name in sorted(MODELS)] + [
    (name, lm_head_positions, microbatches)
    for name in ("opt tied", "llama untied")
    for lm_head_positions, microbatches in [(None, 2), (10, 1), (4, 1)]  # 4: a row has more, the full pass runs
]


@pytest.mark.parametrize("name,lm_head_positions,num_microbatches", CASES)
def test_the_train_step_with_a_chunked_loss_gives_the_plain_gradients(name, lm_head_positions, num_microbatches):
  preset, overrides = MODELS[name]
  model, params, batch = _model_and_batch(preset, **overrides)
  run = jax.jit(
      functools.partial(step_lib.gradients, model=model, enable_dropout=False, num_microbatches=num_microbatches,
                        lm_head_positions=lm_head_positions), static_argnames="loss_chunk_size")
  plain_grads, plain_loss, plain_weight = run(params, batch, dropout_rng=jax.random.PRNGKey(1))
  grads, loss, weight = run(params, batch, dropout_rng=jax.random.PRNGKey(1), loss_chunk_size=5)
  assert float(weight) == float(plain_weight) == 15.0
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, plain_grads)


def _logit_shaped_buffers(loss_chunk_size, batch=2, length=64, vocab=512):
  """The float32 arrays of the compiled step whose shape ends in [length, vocab]: the whole logits or their
  gradient."""
  config = registry.preset("opt-125m", num_hidden_layers=1, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                           vocab_size=vocab, max_position_embeddings=length, dtype="float32")
  model = registry.make_model(config)
  tokens = jnp.ones((batch, length), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, enable_dropout=False))["params"]
  data = {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": tokens,
      "decoder_loss_weights": jnp.ones((batch, length), jnp.float32)
  }
  step = functools.partial(step_lib.gradients, model=model, enable_dropout=False, loss_chunk_size=loss_chunk_size)
  hlo = jax.jit(step).lower(params, data, dropout_rng=jax.random.PRNGKey(0)).compile().as_text()
  return hlo.count(f"f32[{batch},{length},{vocab}]")


def test_the_compiled_step_holds_no_whole_logits_with_a_chunk_size():
  assert _logit_shaped_buffers(None) > 0  # the plain path holds [batch, length, vocab] float32 logits
  assert _logit_shaped_buffers(16) == 0  # chunks of 16: only [batch, 16, vocab]


def test_partitioning_args_check_the_chunk_size():
  assert config_lib.PartitioningArgs(loss_chunk_size=256).loss_chunk_size == 256
  for bad in (0, -1, 2.5, True):
    with pytest.raises(config_lib.ConfigError, match="PartitioningArgs.loss_chunk_size"):
      config_lib.PartitioningArgs(loss_chunk_size=bad)
