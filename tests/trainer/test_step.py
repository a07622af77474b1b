"""The train step: target-only loss, exact gradient accumulation, NaN guard."""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optiml_jax.models import opt
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import step as step_lib

VOCAB = 11
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TinyLM(nn.Module):
  """A causal bag-of-previous-tokens model with t5x's decoder-only call signature."""

  @nn.compact
  def __call__(self, decoder_input_tokens, decoder_target_tokens=None, decoder_segment_ids=None, decoder_positions=None,
               decoder_causal_attention=None, *, enable_dropout=True, decode=False, max_decode_length=None,
               prefill=False, prefill_lengths=None):
    x = nn.Embed(VOCAB, 8)(decoder_input_tokens)
    x = jnp.cumsum(x, axis=1)
    x = nn.Dropout(0.5, deterministic=not enable_dropout)(x)
    return nn.Dense(VOCAB)(x).astype(jnp.float32)


def _batch(rng, batch=4, length=6):
  tokens = jax.random.randint(rng, (batch, length + 1), 3, VOCAB)
  weights = np.zeros((batch, length), np.float32)
  weights[:, 3:] = 1.0  # the last three positions are target tokens
  weights[0, :] = 0.0
  weights[0, -1] = 1.0  # uneven counts across rows, so a per-row mean would differ
  return {
      "decoder_input_tokens": tokens[:, :-1],
      "decoder_target_tokens": tokens[:, 1:],
      "decoder_loss_weights": jnp.asarray(weights),
  }


def _state(model, tx, batch):
  params = model.init(jax.random.PRNGKey(0), batch["decoder_input_tokens"], enable_dropout=False)["params"]
  return checkpointing.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))


def test_loss_is_mean_over_target_tokens_and_ignores_prompt_targets():
  model, tx = TinyLM(), optax.sgd(0.1)
  batch = _batch(jax.random.PRNGKey(1))
  state = _state(model, tx, batch)
  _, metrics = step_lib.train_step(state, batch, jax.random.PRNGKey(2), model=model, tx=tx, enable_dropout=False)
  logits = model.apply({"params": state.params}, batch["decoder_input_tokens"], enable_dropout=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["decoder_target_tokens"])
  w = batch["decoder_loss_weights"]
  np.testing.assert_allclose(metrics["loss"], jnp.sum(ce * w) / jnp.sum(w), rtol=1e-6)
  assert float(metrics["target_tokens"]) == float(jnp.sum(w))
  # Changing the target of a prompt position (weight 0) changes nothing.
  changed = dict(batch, decoder_target_tokens=batch["decoder_target_tokens"].at[1, 0].set(3))
  _, metrics2 = step_lib.train_step(state, changed, jax.random.PRNGKey(2), model=model, tx=tx, enable_dropout=False)
  assert float(metrics2["loss"]) == float(metrics["loss"])


def test_microbatches_give_the_same_update_as_one_batch():
  model, tx = TinyLM(), optax.adam(1e-2)
  batch = _batch(jax.random.PRNGKey(3))
  state = _state(model, tx, batch)
  one, m1 = step_lib.train_step(state, batch, jax.random.PRNGKey(0), model=model, tx=tx, enable_dropout=False,
                                num_microbatches=1)
  four, m4 = step_lib.train_step(state, batch, jax.random.PRNGKey(0), model=model, tx=tx, enable_dropout=False,
                                 num_microbatches=4)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), one.params, four.params)


@pytest.mark.parametrize("guard", ["cond", "select"])
def test_non_finite_loss_leaves_params_and_optimizer_state_unchanged(guard):
  model, tx = TinyLM(), optax.adamw(1e-2, weight_decay=0.1)
  batch = _batch(jax.random.PRNGKey(4))
  state = _state(model, tx, batch)
  step = jax.jit(
      lambda s, b, r: step_lib.train_step(s, b, r, model=model, tx=tx, enable_dropout=False, nonfinite_guard=guard))
  state, _ = step(state, batch, jax.random.PRNGKey(0))  # AdamW's moments and count are no longer zero
  poisoned = jax.tree_util.tree_map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), state.params)
  new_state, metrics = step(state.replace(params=poisoned), batch, jax.random.PRNGKey(0))
  assert int(metrics["finite"]) == 0
  assert int(new_state.step) == 2
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.params, poisoned)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.opt_state, state.opt_state)


@pytest.mark.parametrize("guard", ["cond", "select"])
def test_a_skipped_step_still_advances_the_learning_rate_schedule(guard):
  # SGD with learning rate 0.1 x count: the update of step s is -0.1 s x the mean gradient. Without the
  # schedule's count following the step, a skipped step left every later rate one step behind the logged one.
  schedule = lambda count: 0.1 * count
  model, tx = TinyLM(), optax.sgd(schedule)
  batch = _batch(jax.random.PRNGKey(6))
  poisoned_batch = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"].at[1, 4].set(jnp.nan))
  step = jax.jit(lambda s, b: step_lib.train_step(s, b, jax.random.PRNGKey(0), model=model, tx=tx, schedule=schedule,
                                                  enable_dropout=False, nonfinite_guard=guard))
  state = _state(model, tx, batch)
  state, _ = step(state, batch)  # step 0: rate 0
  state, metrics = step(state, poisoned_batch)  # step 1: skipped
  assert int(metrics["finite"]) == 0
  before = state.params
  state, metrics = step(state, batch)  # step 2: rate 0.2
  assert int(metrics["finite"]) == 1
  np.testing.assert_allclose(float(metrics["learning_rate"]), 0.2, rtol=1e-6)
  grads, _, weight = step_lib.gradients(before, batch, model, jax.random.PRNGKey(0), enable_dropout=False)
  expected = jax.tree_util.tree_map(lambda p, g: p - 0.2 * g / weight, before, grads)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state.params, expected)


def test_both_guards_apply_the_same_finite_update_to_donated_state():
  model, tx = TinyLM(), optax.adamw(1e-2, weight_decay=0.1)
  batch = _batch(jax.random.PRNGKey(5))
  after = {}
  for guard in ("cond", "select"):
    step = jax.jit(
        functools.partial(step_lib.train_step, model=model, tx=tx, enable_dropout=False, nonfinite_guard=guard),
        donate_argnums=(0,))
    state = _state(model, tx, batch)
    for _ in range(3):
      state, metrics = step(state, batch, jax.random.PRNGKey(0))
      assert int(metrics["finite"]) == 1
    after[guard] = state
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after["cond"],
                         after["select"])


def test_auto_guard_is_cond_on_the_cpu_only_and_unknown_guards_are_refused():
  assert step_lib.resolve_nonfinite_guard("auto", "cpu") == "cond"
  assert step_lib.resolve_nonfinite_guard("auto", "gpu") == "select"
  assert step_lib.resolve_nonfinite_guard("auto", "tpu") == "select"
  assert step_lib.resolve_nonfinite_guard("select", "cpu") == "select"
  with pytest.raises(ValueError, match="nonfinite_guard: expected one of"):
    step_lib.resolve_nonfinite_guard("where", "cpu")


def test_dropout_differs_per_step_but_is_reproducible():
  model, tx = TinyLM(), optax.sgd(0.1)
  batch = _batch(jax.random.PRNGKey(5))
  state = _state(model, tx, batch)
  run = lambda s: step_lib.train_step(s, batch, jax.random.PRNGKey(9), model=model, tx=tx)[1]["loss"]
  assert float(run(state)) == float(run(state))
  assert float(run(state)) != float(run(state.replace(step=jnp.int32(1))))


def _opt_with_packed_batch():
  """A real (small) OPT with dropout and a packed batch whose rows carry 3, 5 and 2 target tokens."""
  config = opt.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
                         max_position_embeddings=32, dropout=0.1)
  tokens = np.random.default_rng(0).integers(3, 64, size=(3, 17))
  segments = np.array([[1] * 8 + [2] * 6 + [0] * 2, [1] * 16, [1] * 5 + [0] * 11])
  weights = np.zeros((3, 16), np.float32)
  weights[0, [5, 6, 12]] = 1.0
  weights[1, [3, 7, 8, 9, 15]] = 1.0
  weights[2, [3, 4]] = 1.0
  batch = {
      "decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
      "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
      "decoder_segment_ids": jnp.asarray(segments),
      "decoder_loss_weights": jnp.asarray(weights)
  }
  model = opt.OPT(config)
  params = model.init(jax.random.PRNGKey(0), batch["decoder_input_tokens"], enable_dropout=False)["params"]
  return model, params, batch


@pytest.mark.parametrize("k", [5, 8, 3])  # 3: a row has more targets, so the full pass runs
def test_lm_head_at_weighted_positions_gives_the_full_pass_loss_and_gradients(k):
  model, params, batch = _opt_with_packed_batch()
  run = jax.jit(functools.partial(step_lib.gradients, model=model, enable_dropout=True),
                static_argnames="lm_head_positions")
  full_grads, full_loss, full_weight = run(params, batch, dropout_rng=jax.random.PRNGKey(3))
  grads, loss, weight = run(params, batch, dropout_rng=jax.random.PRNGKey(3), lm_head_positions=k)
  assert float(weight) == float(full_weight) == 10.0
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, full_grads)


def test_weighted_positions_come_first_in_order():
  weights = jnp.asarray([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1]], jnp.float32)
  np.testing.assert_array_equal(step_lib.weighted_positions_first(weights, 4), [[1, 3, 4, 0], [0, 5, 1, 2]])


def _padded(batch):
  """The batch with its padding as the data pipeline writes it: input and target 0 where the segment is 0."""
  real = batch["decoder_segment_ids"] > 0
  return dict(batch, decoder_input_tokens=jnp.where(real, batch["decoder_input_tokens"], 0),
              decoder_target_tokens=jnp.where(real, batch["decoder_target_tokens"], 0))


@pytest.mark.parametrize("packed", [True, False])
def test_without_the_padding_mask_rows_that_end_in_padding_train_the_same(packed):
  model, params, batch = _opt_with_packed_batch()
  batch = _padded(batch)
  if not packed:  # rows 1 and 2: one sequence each, the second ending in 11 padding positions; no segment ids
    batch = {k: v[1:] for k, v in batch.items() if k != "decoder_segment_ids"}
  run = jax.jit(functools.partial(step_lib.gradients, model=model, enable_dropout=False),
                static_argnames="padding_mask")
  masked = run(params, batch, dropout_rng=jax.random.PRNGKey(3))
  unmasked = run(params, batch, dropout_rng=jax.random.PRNGKey(3), padding_mask=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), unmasked, masked)
  # Unpacked, the step then builds no [batch, 1, length, length] mask at all: attention is causal alone.
  lowered = lambda **kw: run.lower(params, batch, dropout_rng=jax.random.PRNGKey(3), **kw).as_text()
  mask_type = f"tensor<{batch['decoder_input_tokens'].shape[0]}x1x16x16xi1>"
  assert mask_type in lowered()
  assert (mask_type in lowered(padding_mask=False)) == packed


def test_microbatch_m_takes_rows_m_m_plus_m_and_so_on():
  batch = {"rows": np.arange(8 * 3).reshape(8, 3)}
  micro = step_lib._split_microbatches(batch, 4)["rows"]  # pylint: disable=protected-access
  assert micro.shape == (4, 2, 3)
  assert [list(m[:, 0] // 3) for m in micro] == [[0, 4], [1, 5], [2, 6], [3, 7]]


# The tiny OPT's step with 2 microbatches, compiled (not run) for a batch of 16 rows over data=8 CPU devices:
# each microbatch must stay on all 8 devices, so no activation or logit is gathered or passed between them.
_MICROBATCH_HLO_SCRIPT = textwrap.dedent("""
    import re
    import jax
    from optiml_jax.models import opt as opt_lib
    from optiml_jax.models import partitioning
    from optiml_jax.trainer import config as config_lib
    from optiml_jax.trainer import loop
    from optiml_jax.trainer import synthetic

    model = opt_lib.OPTConfig.preset("tiny", vocab_size=512, max_position_embeddings=32, dropout=0.0)
    mesh = partitioning.make_mesh(-1, 1, 1)
    program = loop.build_program(model, config_lib.OptimizerArgs(warmup_steps=1),
                                 config_lib.PartitioningArgs(num_microbatches=2), 6, 32, mesh)
    with partitioning.mesh_context(mesh, program.rules):
      state = jax.eval_shape(program.init_fn, jax.random.PRNGKey(0))
      batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=program.batch_sharding)
               for k, v in synthetic.global_batch(0, 0, 16, 32, 512).items()}
      state = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                                     program.layout.shardings)
      hlo = program.train_fn.lower(state, batch, jax.random.PRNGKey(0)).compile().as_text()
    for op in ("all-gather", "collective-permute", "all-reduce"):
      print(op, len(re.findall(r"\\b" + op + r"(-start)?\\(", hlo)))
""")


def test_microbatches_of_a_data_sharded_batch_move_no_activations_between_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _MICROBATCH_HLO_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  counts = dict((op, int(n)) for op, n in (line.split() for line in proc.stdout.splitlines() if line.strip()))
  assert counts["all-gather"] == 0 and counts["collective-permute"] == 0, counts
  assert counts["all-reduce"] > 0, counts  # the gradients are still summed over the data axis
