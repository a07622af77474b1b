"""The recipe's optimizer: schedule shape, clipping and decoupled weight decay, through `make_optimizer`.

Every behaviour is checked on the `optax.GradientTransformation` that `make_optimizer` builds (what the train
step applies), either against a plain numpy AdamW written here or against the same optimizer fed a gradient
that is already clipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optiml_jax.trainer import optimizer


def test_schedule_warms_up_then_decays_to_zero():
  schedule = optimizer.warmup_linear_decay(5e-5, warmup_steps=60, total_steps=4000)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(30)), 2.5e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 5e-5, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(2030)), 2.5e-5, rtol=1e-5)
  assert float(schedule(4000)) == pytest.approx(0.0, abs=1e-12)


def test_schedule_rejects_warmup_longer_than_run():
  with pytest.raises(ValueError, match="warmup_steps"):
    optimizer.warmup_linear_decay(1e-4, warmup_steps=10, total_steps=10)


# ----------------------------------------------------------------------------------------------------------
# The built optimizer against a numpy AdamW.
# ----------------------------------------------------------------------------------------------------------


def _params():
  return {"fc1": {"kernel": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.asarray([0.25, -1.0])}}


def _grad_sequence():
  """Five gradients whose global norms (~1e3, 0.3, ~50, 0.8, ~5) straddle a threshold of 1."""
  rng = np.random.default_rng(0)
  grads = []
  for norm in (1e3, 0.3, 50.0, 0.8, 5.0):
    kernel, bias = rng.normal(size=(2, 2)), rng.normal(size=(2,))
    scale = norm / np.sqrt(np.sum(kernel**2) + np.sum(bias**2))
    grads.append(
        {"fc1": {
            "kernel": jnp.asarray(kernel * scale, jnp.float32),
            "bias": jnp.asarray(bias * scale, jnp.float32)
        }})
  return grads


def _global_norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))))


def _run(tx, grads, params):
  """The updates `tx` gives for `grads` applied in turn (parameters held fixed, so decay terms are exact)."""
  state = tx.init(params)
  updates = []
  for g in grads:
    u, state = tx.update(g, state, params)
    updates.append(jax.tree.map(np.asarray, u))
  return updates


def _numpy_adamw(grads, params, *, learning_rates, b1, b2, eps, weight_decay, clip_norm, decayed):
  """AdamW (Loshchilov & Hutter) with global-norm clipping first, in float64: the recipe, written out."""
  flat_params = {k: np.asarray(v, np.float64) for k, v in _flatten(params).items()}
  mu = {k: np.zeros_like(v) for k, v in flat_params.items()}
  nu = {k: np.zeros_like(v) for k, v in flat_params.items()}
  updates = []
  for t, g in enumerate(grads):
    g = {k: np.asarray(v, np.float64) for k, v in _flatten(g).items()}
    if clip_norm is not None:
      norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
      g = {k: v * min(1.0, clip_norm / norm) for k, v in g.items()}
    update = {}
    for k in g:
      mu[k] = b1 * mu[k] + (1 - b1) * g[k]
      nu[k] = b2 * nu[k] + (1 - b2) * g[k]**2
      direction = (mu[k] / (1 - b1**(t + 1))) / (np.sqrt(nu[k] / (1 - b2**(t + 1))) + eps)
      if decayed(k):
        direction = direction + weight_decay * flat_params[k]
      update[k] = -learning_rates[t] * direction
    updates.append(jax.tree_util.tree_unflatten(jax.tree.structure(params), list(update.values())))
  return updates


def _flatten(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_updates_close(actual, expected, rtol=2e-5, atol=1e-7):
  assert len(actual) == len(expected)
  for t, (a, e) in enumerate(zip(actual, expected)):
    a, e = _flatten(a), _flatten(e)
    assert a.keys() == e.keys()
    for k in a:
      np.testing.assert_allclose(a[k], e[k], rtol=rtol, atol=atol, err_msg=f"update {t}, {k}")


@pytest.mark.parametrize("decay_matrices_only", [False, True])
@pytest.mark.parametrize("clip_norm", [1.0, None])
def test_built_optimizer_matches_numpy_adamw(clip_norm, decay_matrices_only):
  # eps is large enough that Adam is not scale invariant, so a clipping fault shows even in the first update.
  kwargs = dict(learning_rate=0.5, warmup_steps=2, total_steps=5, end_learning_rate=0.1, b1=0.8, b2=0.9, eps=0.05,
                weight_decay=0.3, decay_matrices_only=decay_matrices_only, clip_norm=clip_norm)
  tx, schedule = optimizer.make_optimizer(**kwargs)
  # Warm-up 0 -> 0.5 over 2 updates, then linear decay to 0.1 at update 5.
  learning_rates = [0.0, 0.25, 0.5, 0.5 - 0.4 / 3, 0.5 - 0.8 / 3]
  np.testing.assert_allclose([float(schedule(t)) for t in range(5)], learning_rates, rtol=1e-6)
  grads, params = _grad_sequence(), _params()
  expected = _numpy_adamw(grads, params, learning_rates=learning_rates, b1=0.8, b2=0.9, eps=0.05, weight_decay=0.3,
                          clip_norm=clip_norm, decayed=lambda k: not decay_matrices_only or k.endswith("['kernel']"))
  _assert_updates_close(_run(tx, grads, params), expected)


# ----------------------------------------------------------------------------------------------------------
# Clipping, without a reference implementation: a clipped gradient is the gradient scaled to norm clip_norm.
# ----------------------------------------------------------------------------------------------------------


def _scaled_to(tree, norm: float):
  factor = norm / _global_norm(tree)
  return jax.tree.map(lambda x: x * factor, tree)


@pytest.mark.parametrize("clip_norm", [1.0, 0.05])
def test_gradient_above_clip_norm_updates_as_if_scaled_to_it(clip_norm):
  """Adam divides by the gradient's scale, so only a sequence of gradients of different norms (or eps)
  shows clipping; the default eps is kept here, the norms vary."""
  tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, clip_norm=clip_norm)
  grads, params = _grad_sequence(), _params()
  pre_clipped = [g if _global_norm(g) <= clip_norm else _scaled_to(g, clip_norm) for g in grads]
  assert any(_global_norm(g) > 10 * clip_norm for g in grads)
  _assert_updates_close(_run(tx, grads, params), _run(tx, pre_clipped, params))


def test_clipping_changes_the_updates():
  """The check above has teeth: the same sequence unclipped gives clearly different updates."""
  clipped_tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, clip_norm=1.0)
  grads, params = _grad_sequence(), _params()
  clipped = _run(clipped_tx, grads, params)[1:]
  unclipped_tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, clip_norm=None)
  unclipped = _run(unclipped_tx, grads, params)[1:]
  differences = [_global_norm(jax.tree.map(lambda a, b: a - b, c, u)) for c, u in zip(clipped, unclipped)]
  assert max(differences) > 1e-3, differences


def test_gradient_below_clip_norm_is_not_clipped():
  grads = [_scaled_to(g, 0.9) for g in _grad_sequence()]
  params = _params()
  clipped_tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=0.05, clip_norm=1.0)
  unclipped_tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=0.05,
                                             clip_norm=None)
  _assert_updates_close(_run(clipped_tx, grads, params), _run(unclipped_tx, grads, params), rtol=1e-6)


def test_clip_norm_none_disables_clipping():
  """With eps large, Adam's first update grows with the gradient's scale: unclipped, a gradient of norm 1000
  moves the weights further than the same gradient scaled to norm 1."""
  tx, _ = optimizer.make_optimizer(learning_rate=1.0, warmup_steps=0, total_steps=10, eps=1.0, weight_decay=0.0,
                                   clip_norm=None)
  big = _grad_sequence()[0]
  params = _params()
  (update_big,), (update_unit,) = _run(tx, [big], params), _run(tx, [_scaled_to(big, 1.0)], params)
  assert _global_norm(update_big) > 3 * _global_norm(update_unit)


# ----------------------------------------------------------------------------------------------------------
# Schedule and decoupled weight decay, by hand.
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay_matrices_only", [True, False])
def test_update_follows_schedule_and_decays_as_configured(decay_matrices_only):
  tx, _ = optimizer.make_optimizer(learning_rate=1.0, warmup_steps=1, total_steps=10, weight_decay=0.5, clip_norm=1.0,
                                   decay_matrices_only=decay_matrices_only)
  params = {"fc1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = {"fc1": {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.zeros((2,))}}
  state = tx.init(params)
  # Step 0 has learning rate 0: nothing moves, not even through weight decay.
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc1"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["fc1"]["bias"], 0.0)
  # Step 1 at peak lr 1.0: Adam's first step is lr * sign(g) = -1 for the kernel, plus decay -lr*wd*param;
  # the bias has zero gradient, so it moves only by its decay, which decay_matrices_only switches off.
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc1"]["kernel"], -1.0 - 0.5, rtol=1e-4)
  np.testing.assert_allclose(updates["fc1"]["bias"], 0.0 if decay_matrices_only else -0.5, rtol=1e-6)


def test_decay_mask_exempts_biases_and_norms_of_scanned_layers():
  params = {
      "layers": {
          "fc1": {
              "kernel": jnp.ones((2, 3, 3)),
              "bias": jnp.ones((2, 3))
          },
          "final_layer_norm": {
              "scale": jnp.ones((2, 3)),
              "bias": jnp.ones((2, 3))
          }
      },
      "embed_tokens": {
          "embedding": jnp.ones((5, 3))
      }
  }
  mask = optimizer.decay_mask(params)
  assert mask == {
      "layers": {
          "fc1": {
              "kernel": True,
              "bias": False
          },
          "final_layer_norm": {
              "scale": False,
              "bias": False
          }
      },
      "embed_tokens": {
          "embedding": True
      }
  }


def test_optimizer_state_is_float32_for_bfloat16_params():
  tx, _ = optimizer.make_optimizer(total_steps=100)
  state = tx.init({"kernel": jnp.ones((3, 3), jnp.bfloat16)})
  mu = state[1][0].mu["kernel"]
  assert mu.dtype == jnp.float32


def test_clipping_uses_the_norm_the_step_passes():
  """The train step hands its gradient norm to the update (`grad_norm=`); the clipping scales by it, so a norm
  twice the true one halves a clipped gradient."""
  tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=0.05, clip_norm=1.0)
  params, grad = _params(), _grad_sequence()[0]  # norm ~1e3: clipped
  norm = _global_norm(grad)
  state = tx.init(params)
  given, _ = tx.update(grad, state, params, grad_norm=jnp.float32(2 * norm))
  halved, _ = tx.update(_scaled_to(grad, 0.5), state, params)
  _assert_updates_close([given], [halved], rtol=1e-6)


def test_the_state_is_optaxs_so_checkpoints_of_either_clipping_restore():
  import optax  # pylint: disable=g-import-not-at-top
  tx, schedule = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=1, total_steps=10)
  reference = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, mu_dtype=jnp.float32, weight_decay=0.1))
  params = _params()
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(reference.init(params))
  # And optax's clipping gives the same updates, up to one rounding of the scaled gradient.
  _assert_updates_close(_run(tx, _grad_sequence(), params), _run(reference, _grad_sequence(), params), rtol=1e-5)


def test_set_schedule_count_moves_the_schedule_only():
  tx, _ = optimizer.make_optimizer(learning_rate=1e-2, warmup_steps=2, total_steps=10, decay_matrices_only=True)
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}}
  grads = jax.tree_util.tree_map(lambda p: 0.5 * p, params)
  state = tx.init(params)
  _, state = tx.update(grads, state, params, grad_norm=optax.global_norm(grads))
  moved = optimizer.set_schedule_count(state, 5)
  counts = lambda s: [
      x.count
      for x in jax.tree_util.tree_leaves(s, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
      if isinstance(x, optax.ScaleByScheduleState)
  ]
  assert [int(c) for c in counts(state)] == [1] and [int(c) for c in counts(moved)] == [5]
  assert counts(moved)[0].dtype == counts(state)[0].dtype
  adam = lambda s: [
      x for x in jax.tree_util.tree_leaves(s, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
      if isinstance(x, optax.ScaleByAdamState)
  ]
  jax.tree_util.tree_map(np.testing.assert_array_equal, adam(moved), adam(state))  # moments and bias correction
