"""Orbax checkpoints of the train state: round trip, data position, retention, NaN refusal, atomicity."""

import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optiml_jax.trainer import checkpointing


def _state(value=1.0):
  params = {"fc1": {"kernel": jnp.full((4, 3), value), "bias": jnp.zeros((3,))}}
  opt_state = optax.adam(1e-3).init(params)
  return checkpointing.TrainState(step=jnp.int32(0), params=params, opt_state=opt_state)


def test_round_trip_with_data_position(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=2, max_to_keep=2)
  state = _state(2.5)
  assert ckpt.save(2, state, {"data": {"batches": 7}})
  ckpt.wait_until_finished()
  restored, meta = ckpt.restore_latest(_state(0.0))
  assert meta["step"] == 2 and meta["data"] == {"batches": 7}
  np.testing.assert_array_equal(restored.params["fc1"]["kernel"], state.params["fc1"]["kernel"])
  assert int(restored.step) == 2
  ckpt.close()


def test_interval_and_retention(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=2, max_to_keep=2, async_save=False)
  saved = [step for step in range(1, 8) if ckpt.save(step, _state(step), {})]
  assert saved == [2, 4, 6]
  ckpt.save(7, _state(7), {}, force=True)
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [6, 7]
  ckpt.close()


def test_refuses_non_finite_state_and_writes_nothing(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
  with pytest.raises(checkpointing.NonFiniteCheckpointError, match="step 3"):
    ckpt.save(3, _state(float("nan")), {})
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == []
  assert not any(name.startswith("3") for name in os.listdir(tmp_path))
  ckpt.close()


def test_unfinished_step_folder_is_not_listed(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1, async_save=False)
  ckpt.save(1, _state(1.0), {})
  ckpt.close()
  # A save killed half-way leaves only Orbax's temporary folder behind; it is not a checkpoint.
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-123" / "params")
  reopened = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
  assert reopened.all_steps() == [1]
  _, meta = reopened.restore_latest(_state(0.0))
  assert meta["step"] == 1
  reopened.close()
