"""Tests of optiml_jax.interop.t5x_model inside t5x's DecoderOnlyModel, for a tiny OPT and a tiny Llama: features,
scoring, greedy decoding with the cache (prompts holding id 0 included), several decodes per example, axis rules
and the optimizer.

Needs t5x: importable already, or checkouts of t5x, airio and jestimator under $OPTIML_T5X_DIR (docs/t5x.md,
"Installing t5x from source"); skipped otherwise.
"""

import dataclasses
import functools
import os
import sys
import types

import flax
from flax import traverse_util
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

T5X_ENV = "OPTIML_T5X_DIR"
T5X_CHECKOUTS = ("t5x", "airio", "jestimator")


def _add_t5x_checkouts() -> None:
  root = os.environ.get(T5X_ENV)
  if root:
    for name in reversed(T5X_CHECKOUTS):
      path = os.path.join(root, name)
      if os.path.isdir(path) and path not in sys.path:
        sys.path.insert(0, path)


_add_t5x_checkouts()
t5x_models = pytest.importorskip(
    "t5x.models", reason=f"t5x is not importable: set {T5X_ENV} to a folder holding checkouts of t5x, airio and "
    "jestimator (docs/t5x.md)")

from t5x import decoding  # pylint: disable=g-import-not-at-top,wrong-import-position
from t5x import optimizers as t5x_optimizers  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

from optiml_jax.data import packing  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.interop import t5x_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position

EOS = 2
LENGTHS = {"inputs": 8, "targets": 8}  # rows of 16 positions
# A large initializer scale makes the logits of a random model peaked, so greedy choices are far from ties.
CONFIGS = {
    "opt": t5x_model.model_config_for_t5x("tiny", vocab_size=128, max_position_embeddings=32, dropout=0.0,
                                          init_std=0.5),
    "llama": t5x_model.model_config_for_t5x("llama-tiny", vocab_size=128, max_position_embeddings=32,
                                            initializer_range=0.5),
}
# Id 0 is a real token in Llama-family vocabularies: the third Llama prompt holds it, inside and last (t5x alone
# counts a prompt by its non-zero ids). OPT never produces its id 0 (<s>) and treats it as padding.
EXAMPLES = {
    "opt": [([11, 12, 13], [21, 22, EOS]), ([31, 32, 33, 34, 35, 36], [41, EOS]), ([51], [61, 62, 63, EOS])],
    "llama": [([11, 12, 13], [21, 22, EOS]), ([31, 32, 33, 34, 35, 36], [41, EOS]), ([51, 0, 52, 0], [61, 62, 63, EOS])]
}


def _greedy_decode_fn(sampler=None, **decode_kwargs):
  sampler = sampler or functools.partial(decoding.temperature_sample, temperature=0.0)
  return functools.partial(t5x_model.decode, sampler=sampler, **decode_kwargs)


def _model(config, model_cls=t5x_model.DecoderOnlyModel, sampler=None, **decode_kwargs):
  vocabulary = seqio.PassThroughVocabulary(size=config.vocab_size, eos_id=EOS)
  return model_cls(module=t5x_model.DecoderForT5x(config), vocabulary=vocabulary, optimizer_def=None,
                   decode_fn=_greedy_decode_fn(sampler, **decode_kwargs),
                   feature_converter_cls=t5x_model.FeatureConverter, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")


def _dataset(examples):
  return tf.data.Dataset.from_generator(
      lambda: ({
          "inputs": np.asarray(i, np.int32),
          "targets": np.asarray(t, np.int32)
      } for i, t in examples), output_signature={
          "inputs": tf.TensorSpec([None], tf.int32),
          "targets": tf.TensorSpec([None], tf.int32)
      })


def _batch(examples, pack=False, **converter_args):
  converter = t5x_model.FeatureConverter(pack=pack, **converter_args)
  rows = list(converter(_dataset(examples), LENGTHS).as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(request):
  return request.param


@pytest.fixture(scope="module")
def config(family):
  return CONFIGS[family]


@pytest.fixture(scope="module")
def examples(family):
  return EXAMPLES[family]


@pytest.fixture(scope="module")
def params(config):
  model = _model(config)
  shapes, types = {"decoder_input_tokens": (1, 16)}, {"decoder_input_tokens": jnp.int32}
  init = jax.jit(lambda rng: model.get_initial_variables(rng, shapes, types)["params"])
  return init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def batch(examples):
  return {k: jnp.asarray(v) for k, v in _batch(examples).items()}


@pytest.fixture(scope="module")
def greedy(config, params, batch):
  """t5x's predict_batch with one (greedy) decode per example."""
  return np.asarray(jax.jit(_model(config).predict_batch)(params, batch))


@functools.partial(jax.jit, static_argnums=0)
def _logits(config, params, tokens):
  return registry.make_model(config).apply({"params": params}, tokens, enable_dropout=False)


def test_unpacked_rows_carry_the_prompt_as_decoder_causal_attention():
  batch = _batch(EXAMPLES["llama"])
  assert set(batch) == {
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention"
  }
  np.testing.assert_array_equal(batch["decoder_input_tokens"][0], [2, 11, 12, 13, 21, 22] + [0] * 10)
  np.testing.assert_array_equal(batch["decoder_causal_attention"][0], [1, 1, 1, 1] + [0] * 12)
  np.testing.assert_array_equal(batch["decoder_causal_attention"][2], [1] * 5 + [0] * 11)
  # The prompt length excludes BOS: the last 1 of the mask is the last prompt token, id 0 or not (t5x's own count
  # of non-zero ids gives 2 for the third row).
  np.testing.assert_array_equal(np.sum(batch["decoder_causal_attention"], axis=-1) - 1, [3, 6, 4])


@pytest.mark.parametrize("cap", [None, 1])
def test_packed_rows_are_those_of_our_converter(cap):
  examples = EXAMPLES["llama"]
  ours = packing.OptimlFeatureConverter(pack=True, max_segments_per_row=cap)(_dataset(examples), LENGTHS)
  theirs = t5x_model.FeatureConverter(pack=True, use_custom_packing_ops=False,
                                      max_segments_per_row=cap)(_dataset(examples), LENGTHS)
  if cap is not None:  # a cap of 1: one example per row, still packed features
    assert all(packing.count_segments(r["decoder_segment_ids"][None])[0] == 1 for r in theirs.as_numpy_iterator())
  for a, b in zip(ours.as_numpy_iterator(), theirs.as_numpy_iterator(), strict=True):
    assert set(a) == set(b) and "decoder_causal_attention" not in b
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_score_batch_is_the_log_likelihood_of_the_targets(config, params, batch, examples):
  scores = np.asarray(jax.jit(_model(config).score_batch)(params, batch))
  logits = _logits(config, params, batch["decoder_input_tokens"])
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  expected = []
  for row, (prompt, target) in enumerate(examples):
    n_in, n_tgt = len(prompt), len(target)
    positions = range(n_in, n_in + n_tgt)
    expected.append(sum(log_probs[row, p, int(batch["decoder_target_tokens"][row, p])] for p in positions))
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)


def _check_greedy(config, params, batch, decoded, examples, max_steps=None, bos=(EOS,)):
  """Each decoded token is an argmax of the full (cache-free) forward pass over the tokens before it."""
  row_length = batch["decoder_input_tokens"].shape[1]
  for row, (prompt, _) in enumerate(examples):
    tokens = list(bos) + list(prompt)
    room = row_length + 1 - len(tokens)  # t5x decodes until position `row_length` (one past the row) is written
    budget = room if max_steps is None else min(max_steps, room)
    generated = []
    for _ in range(budget):
      padded = tokens + [0] * (row_length + 1 - len(tokens))  # one shape, one compile; causal: no effect
      logits = np.asarray(_logits(config, params, jnp.asarray([padded])))[0, len(tokens) - 1]
      token = int(decoded[row][len(generated)])
      assert logits[token] >= logits.max() - 1e-4, (row, len(generated), token, int(logits.argmax()))
      generated.append(token)
      tokens.append(token)
      if token == EOS:
        break
    np.testing.assert_array_equal(decoded[row][:len(generated)], generated)
    assert not np.any(decoded[row][len(generated):]), "padding after </s> or the budget"


def test_predict_batch_is_greedy_decoding_with_the_prefilled_cache(config, params, batch, greedy, examples):
  assert greedy.shape == batch["decoder_input_tokens"].shape
  assert np.count_nonzero(greedy) >= len(examples), "a random model should produce tokens"
  _check_greedy(config, params, batch, greedy, examples)


def test_rows_without_a_bos_start_with_the_prompt_and_decode_after_it(family, config, params):
  """A tokenizer that adds no BOS (SmolLM2, Qwen2): the row is prompt + target, the prompt ends one position
  earlier, and decoding continues the prompt itself."""
  examples = EXAMPLES[family]
  batch = _batch(examples, bos_id=None)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][0], [11, 12, 13, 21, 22] + [0] * 11)
  np.testing.assert_array_equal(batch["decoder_loss_weights"][0], [0, 0, 1, 1, 1] + [0] * 11)
  np.testing.assert_array_equal(batch["decoder_causal_attention"][0], [1, 1, 1] + [0] * 13)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  decoded = np.asarray(jax.jit(_model(config).predict_batch)(params, batch))
  _check_greedy(config, params, batch, decoded, examples, bos=())
  limited = np.asarray(jax.jit(_model(config, max_decode_steps=2).predict_batch)(params, batch))
  np.testing.assert_array_equal(limited[:, :2], decoded[:, :2])
  assert not np.any(limited[:, 2:])


def test_the_converter_takes_bos_and_eos_from_the_vocabulary():
  opt_vocab = t5x_model.FeatureConverter(pack=False, vocabulary=vocab_lib.OPTVocabulary())
  assert (opt_vocab.bos_id, opt_vocab.eos_id) == (2, 2)
  no_bos = types.SimpleNamespace(bos_id=None, eos_id=7)  # what vocab.HFVocabulary gives for SmolLM2's tokenizer
  converter = t5x_model.FeatureConverter(pack=False, bos_id=2, vocabulary=no_bos, apply_length_check=False)
  assert (converter.bos_id, converter.eos_id) == (None, 7)
  # A row of inputs + targets = 5 positions holds 6 tokens when no BOS comes first (formatting.fit_to_row): the
  # first prompt loses its first token so that the whole target fits; the second target alone is longer than the
  # row, so it is cut to its first 5 tokens and the vocabulary's EOS, and its prompt is dropped.
  examples = [([10, 11, 12, 13], [21, 22, 7]), ([11, 12, 13], [21, 22, 23, 24, 25, 26, 7])]
  rows = list(converter(_dataset(examples), {"inputs": 2, "targets": 3}))
  np.testing.assert_array_equal(rows[0]["decoder_input_tokens"], [11, 12, 13, 21, 22])
  np.testing.assert_array_equal(rows[0]["decoder_target_tokens"], [12, 13, 21, 22, 7])
  np.testing.assert_array_equal(rows[1]["decoder_input_tokens"], [21, 22, 23, 24, 25])
  np.testing.assert_array_equal(rows[1]["decoder_target_tokens"], [22, 23, 24, 25, 7])  # cut, EOS kept


@pytest.mark.parametrize("family", ["llama"], indirect=True)  # only the Llama prompts hold id 0
def test_t5x_alone_cuts_a_prompt_at_id_0(config, params, batch, greedy):
  """What DecoderOnlyModel fixes: t5x's own model takes the third prompt for [51, 0, 52] and decodes after 52."""
  stock = np.asarray(jax.jit(_model(config, model_cls=t5x_models.DecoderOnlyModel).predict_batch)(params, batch))
  np.testing.assert_array_equal(stock[:2], greedy[:2])
  assert not np.array_equal(stock[2], greedy[2])


@pytest.mark.parametrize("steps", [1, 3])
def test_max_decode_steps_counts_new_tokens(config, params, batch, greedy, examples, steps):
  decoded = np.asarray(jax.jit(_model(config, max_decode_steps=steps).predict_batch)(params, batch))
  _check_greedy(config, params, batch, decoded, examples, max_steps=steps)
  np.testing.assert_array_equal(decoded[:, :steps], greedy[:, :steps])
  assert not np.any(decoded[:, steps:])


def test_max_decode_steps_must_be_positive(config, params, batch):
  with pytest.raises(ValueError, match="max_decode_steps must be >= 1"):
    _model(config, max_decode_steps=0).predict_batch(params, batch)


@pytest.fixture
def gin_sampler():
  """`decoding.temperature_sample` as gin/t5x/models/decoder_base.gin hands it to `t5x_model.decode`, greedy and with
  `max_decode_steps_hard_limit = 4` bound on it."""
  gin.parse_config("""
      from __gin__ import dynamic_registration
      from t5x import decoding
      from optiml_jax.interop import t5x_model
      t5x_model.decode.sampler = @decoding.temperature_sample
      decoding.temperature_sample.temperature = 0.0
      decoding.temperature_sample.max_decode_steps_hard_limit = 4
  """)
  try:
    yield gin.get_bindings(t5x_model.decode)["sampler"]
  finally:
    gin.clear_config()


@pytest.mark.parametrize("family", ["llama"], indirect=True)  # its third prompt holds id 0
def test_the_hard_limit_caps_the_new_tokens_as_in_t5x(config, params, batch, greedy, gin_sampler):
  """t5x's `max_decode_steps_hard_limit` (its guard on a `max_decode_steps` passed in `decoder_params`) caps the new
  tokens at min(max_decode_steps, limit), wherever it is given: bound on the sampler in gin (or a partial's keyword),
  or in `decoder_params` (or bound on decode: both reach its keyword arguments), which wins as in t5x. The sampler
  clipped its own, rewritten count: one token more, and fewer after a prompt holding id 0 (none at all with limit
  1)."""

  def predict(sampler, **decoder_params):
    model = _model(config, sampler=sampler, max_decode_steps=5)
    return jax.jit(functools.partial(model.predict_batch_with_aux, decoder_params=decoder_params or None))

  runs = [("bound in gin", 4, predict(gin_sampler)),
          ("in decoder_params", 1, predict(gin_sampler, **{t5x_model.HARD_LIMIT: 1})),
          ("a partial's keyword", 2,
           predict(functools.partial(decoding.temperature_sample, temperature=0.0, **{t5x_model.HARD_LIMIT: 2})))]
  for where, steps, run in runs:
    decoded = np.asarray(run(params, batch)[0])
    np.testing.assert_array_equal(decoded[:, :steps], greedy[:, :steps], err_msg=where)
    assert not np.any(decoded[:, steps:]), where


def test_several_decodes_per_example_with_the_scanned_cache(config, params, batch, greedy):
  predict = functools.partial(_model(config).predict_batch_with_aux, num_decodes=2, return_all_decodes=True)
  several, _ = jax.jit(predict)(params, batch)
  several = np.asarray(several)
  assert several.shape == (greedy.shape[0], 2, greedy.shape[1])
  for k in range(2):  # temperature 0: every decode is the greedy one
    np.testing.assert_array_equal(several[:, k], greedy)
  limited = functools.partial(
      _model(config, max_decode_steps=2).predict_batch_with_aux, num_decodes=2, return_all_decodes=True)
  several, _ = jax.jit(limited)(params, batch)
  for k in range(2):
    np.testing.assert_array_equal(np.asarray(several)[:, k, :2], greedy[:, :2])
    assert not np.any(np.asarray(several)[:, k, 2:])


def test_swap_layer_axis_swaps_stacked_arrays_only():
  cache = {"cache_index": jnp.arange(3), "layers": {"self_attn": {"cached_key": jnp.zeros((2, 3, 5, 4, 1))}}}
  swapped = t5x_model.swap_layer_axis(cache)
  assert swapped["cache_index"].shape == (3,)
  assert swapped["layers"]["self_attn"]["cached_key"].shape == (3, 2, 5, 4, 1)
  back = t5x_model.swap_layer_axis(swapped)
  assert back["layers"]["self_attn"]["cached_key"].shape == (2, 3, 5, 4, 1)


def test_t5x_init_with_float_tokens_gives_our_parameter_tree(config, params):
  model = _model(config)
  variables = jax.eval_shape(
      lambda: model.get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 16)}))
  ours = jax.eval_shape(lambda: registry.make_model(config).init(jax.random.PRNGKey(0), jnp.ones(
      (1, 16), jnp.int32), enable_dropout=False))
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, ours["params"])
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours["params"])
  assert jax.tree.map(jnp.shape, variables["params_axes"]) == jax.tree.map(jnp.shape, ours["params_axes"])
  # The same parameters for the same key: the wrapper adds no scope of its own.
  ours_params = jax.jit(lambda rng: registry.make_model(config).init(rng, jnp.ones(
      (1, 16), jnp.int32), enable_dropout=False)["params"])(jax.random.PRNGKey(0))
  ours_flat = traverse_util.flatten_dict(flax.core.unfreeze(ours_params))
  theirs_flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  assert ours_flat.keys() == theirs_flat.keys()
  for key, value in ours_flat.items():
    np.testing.assert_array_equal(theirs_flat[key], value, err_msg="/".join(key))


def test_a_vocabulary_beyond_the_embedding_is_refused(config):
  with pytest.raises(ValueError, match="vocab_size 128 does not cover .*tokenizer_opt.*50264"):
    t5x_model.DecoderOnlyModel(module=t5x_model.DecoderForT5x(config), vocabulary=vocab_lib.OPTVocabulary(),
                               optimizer_def=None)


def test_a_prefix_lm_is_refused_as_the_models_are_causal_only(family, config):
  """t5x's `inputs_bidirectional_attention=True` (prefix LM) was accepted and changed nothing: our modules ignore
  `decoder_causal_attention`, so a gin file asking for a prefix LM trained and scored a causal one."""
  module, vocabulary = t5x_model.DecoderForT5x(config), seqio.PassThroughVocabulary(size=config.vocab_size, eos_id=EOS)
  refused = f"inputs_bidirectional_attention=True .*: {family} models are causal only"
  with pytest.raises(ValueError, match=refused):
    t5x_model.DecoderOnlyModel(module, vocabulary, optimizer_def=None, inputs_bidirectional_attention=True)
  with pytest.raises(ValueError, match=refused):  # positionally, as t5x's signature allows
    t5x_model.DecoderOnlyModel(module, vocabulary, None, t5x_model.decode, True)
  t5x_model.DecoderOnlyModel(module, vocabulary, optimizer_def=None, inputs_bidirectional_attention=False)


def test_model_config_for_t5x_takes_any_family_and_names_bad_fields():
  assert isinstance(t5x_model.model_config_for_t5x("smollm2-135m", dtype="bfloat16"), type(CONFIGS["llama"]))
  assert t5x_model.model_config_for_t5x("smollm2-135m").hidden_size == 576
  assert t5x_model.opt_config_for_t5x("opt-125m", dropout=0.0) == registry.preset("opt-125m", dropout=0.0)
  assert issubclass(t5x_model.OPTForT5x, t5x_model.DecoderForT5x)  # the name OPT gin files bind
  with pytest.raises(ValueError, match="model_config_for_t5x.preset: unknown model preset 'opt-9b'.*smollm2-135m"):
    t5x_model.model_config_for_t5x("opt-9b")
  with pytest.raises(ValueError, match="model_config_for_t5x.ffn_dim: LlamaConfig .* no such field"):
    t5x_model.model_config_for_t5x("llama-tiny", ffn_dim=128)


def test_logical_axis_rules_on_t5x_mesh_cover_every_parameter_axis(config):
  rules = dict(t5x_model.logical_axis_rules(fsdp=True))
  assert rules["batch"] == "data" and rules["embed"] == "data"
  assert rules["mlp"] == rules["vocab"] == rules["joined_kv"] == rules["heads"] == "model"
  assert rules["layers"] is None and rules["kv"] is None
  assert dict(t5x_model.logical_axis_rules(fsdp=False))["embed"] is None
  _, axes = partitioning.abstract_variables(registry.make_model(config), jnp.ones((1, 8), jnp.int32),
                                            enable_dropout=False)
  partitioning.check_rules_cover(axes, t5x_model.logical_axis_rules())
  with pytest.raises(ValueError, match="'seq'.*no t5x counterpart"):
    t5x_model.logical_axis_rules(rules=(("seq", "sequence"),))


def test_optimizer_is_the_recipe_chain_wrapped_for_t5x():
  wrapped = t5x_model.optimizer(total_steps=100, learning_rate=1e-3, warmup_steps=10, weight_decay=0.0)
  assert isinstance(wrapped, t5x_optimizers.OptaxWrapper)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros((2,))}
  state = wrapped.init_state(params)
  step = jax.jit(lambda p, s: wrapped.apply_gradient(wrapped.hyper_params, p, s, jax.tree.map(jnp.ones_like, p)))
  new_params, state = step(params, state)  # update 0 of a warmup schedule has learning rate 0
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  new_params, state = step(new_params, state)  # update 1: Adam's first step moves each weight by the rate
  np.testing.assert_allclose(new_params["kernel"], 1.0 - 1e-4, rtol=1e-5)
  assert int(state.step) == 2
  schedule = t5x_model.learning_rate_fn(total_steps=100, learning_rate=1e-3, warmup_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(10), schedule(55), schedule(100)], [0, 1e-3, 5e-4, 0], atol=1e-9)


def test_scoring_and_decoding_read_float32_logits_as_our_inference_does(family, params):
  """Called without dropout (score_batch, predict_batch, evaluation), the wrapper asks the family's LM head for its
  float32 sums; training (enable_dropout=True) keeps the head rounded to the compute dtype."""
  config = dataclasses.replace(CONFIGS[family], dtype="bfloat16")
  wrapper, module = t5x_model.DecoderForT5x(config), registry.make_model(config)
  tokens = jnp.asarray([[2, 11, 12, 13, 21, 22, 2, 0]], jnp.int32)
  for enable_dropout in (False, True):
    ours = wrapper.apply({"params": params}, tokens, tokens, enable_dropout=enable_dropout,
                         rngs={"dropout": jax.random.PRNGKey(0)})
    module_logits = module.apply({"params": params}, tokens, enable_dropout=enable_dropout,
                                 float32_logits=not enable_dropout, rngs={"dropout": jax.random.PRNGKey(0)})
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(module_logits))
  rounded = module.apply({"params": params}, tokens, enable_dropout=False)
  scored = wrapper.apply({"params": params}, tokens, tokens, enable_dropout=False)
  assert not np.array_equal(np.asarray(scored), np.asarray(rounded)), "float32 sums should differ from bf16 logits"
