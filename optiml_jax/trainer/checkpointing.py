"""Orbax checkpoints of the train state, with the data position, under `MODEL_DIR`.

Sits under the training loop: `Checkpointer.save(step, state, data_state)` every N steps and at the end;
`Checkpointer.restore_latest(abstract_state)` when a run (re)starts. Layout, one Orbax `CheckpointManager`
step folder per saved step:

    MODEL_DIR/<step>/params      float32 master weights (Orbax StandardSave; what eval and convert read)
    MODEL_DIR/<step>/opt_state   optimizer state
    MODEL_DIR/<step>/meta        JSON: step and "data", the stream position of every process (a list)
    MODEL_DIR/config.json        the model's Hugging Face config (written by the loop at the start)

Orbax writes each step into a temporary folder and renames it when every item (and, in an asynchronous save,
every process) has finished, so a killed save never leaves a step folder that restores; `all_steps()` lists
only finalised ones. A tree holding a non-finite value is refused before anything is written.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class NonFiniteCheckpointError(ValueError):
  """Refusing to write a checkpoint that holds NaN or infinity."""


@jax.jit
def _all_finite_jit(leaves: list[Any]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree: Any) -> bool:
  """Whether every floating-point leaf of `tree` (numpy or jax arrays, sharded across processes or not)
  is free of NaN and infinity. Every process must call it (it runs one small jit-ed reduction)."""
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return True
  flag = _all_finite_jit(leaves)
  # The result is replicated; on several processes it is not fully addressable, so read the local copy.
  return bool(np.asarray(flag.addressable_data(0)))


@flax.struct.dataclass
class TrainState:
  """What a checkpoint holds besides its JSON metadata (a pytree, so it passes through `jax.jit`)."""

  step: Any  # int32 scalar array: number of updates applied
  params: Any
  opt_state: Any


class Checkpointer:
  """A thin wrapper over `orbax.checkpoint.CheckpointManager` for the train state and the data position."""

  def __init__(self, directory: str, *, save_interval_steps: int = 1000, max_to_keep: int | None = 3,
               async_save: bool = True):
    self.directory = str(directory)
    self.save_interval_steps = save_interval_steps
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params", "opt_state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return step % self.save_interval_steps == 0

  def save(self, step: int, state: TrainState, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves `state` and `meta` at `step` when `step` is a multiple of the interval, or when `force`.

    Returns whether it saved.

    Raises NonFiniteCheckpointError, writing nothing, when params or optimizer state are not finite.
    """
    if not force and not self.should_save(step):
      return False
    if not all_finite((state.params, state.opt_state)):
      raise NonFiniteCheckpointError(
          f"step {step}: parameters or optimizer state hold NaN/inf; not writing a checkpoint to "
          f"{self.directory}")
    meta = dict(meta, step=int(step))
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,  # The interval is decided above, as a pure function of the step.
    )

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores `step` into arrays shaped and sharded like `abstract_state` (arrays or ShapeDtypeStructs)."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(abstract_state.params)),
            opt_state=ocp.args.StandardRestore(_abstract(abstract_state.opt_state)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    meta = dict(restored["meta"])
    state = TrainState(step=np.int32(meta["step"]), params=restored["params"], opt_state=restored["opt_state"])
    return state, meta

  def restore_latest(self, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    step = self.latest_step()
    return None if step is None else self.restore(step, abstract_state)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (keeping shardings) for the arrays of `tree`; leaves that already are stay as they are."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

  return jax.tree_util.tree_map(one, tree)
