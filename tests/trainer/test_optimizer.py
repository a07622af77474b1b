"""The recipe's optimizer: schedule shape, clipping and decoupled weight decay."""

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


def test_update_clips_global_norm_and_decays_only_matrices():
  tx, _ = optimizer.make_optimizer(learning_rate=1.0, warmup_steps=1, total_steps=10, weight_decay=0.5,
                                   clip_norm=1.0, decay_matrices_only=True)
  params = {"fc1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
  grads = {"fc1": {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.zeros((2,))}}
  state = tx.init(params)
  # Step 0 has learning rate 0: nothing moves, not even through weight decay.
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc1"]["kernel"], 0.0)
  # Step 1 at peak lr 1.0: Adam's first step is lr * sign(g) = -1 for the kernel, plus decay -lr*wd*param;
  # the bias has zero gradient and no decay, so it does not move.
  updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["fc1"]["kernel"], -1.0 - 0.5, rtol=1e-4)
  np.testing.assert_allclose(updates["fc1"]["bias"], 0.0)
  # The clipped gradient has global norm 1 (checked through optax directly).
  clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
  assert float(optax.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_optimizer_state_is_float32_for_bfloat16_params():
  tx, _ = optimizer.make_optimizer(total_steps=100)
  state = tx.init({"kernel": jnp.ones((3, 3), jnp.bfloat16)})
  mu = state[1][0].mu["kernel"]
  assert mu.dtype == jnp.float32
