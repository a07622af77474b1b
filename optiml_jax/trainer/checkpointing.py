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

Storage faults (docs/training.md, "When storage fails"):
  * Resume (`restore_latest`) tries the steps newest first. A step restores when its folder carries Orbax's
    commit marker (`checkpoints.discovery.COMMIT_FILE`, where the run's Orbax writes one), and every item reads
    back and checks out: `meta` is a JSON object naming this step, and every array of `params` and
    `opt_state` has the shape and dtype of the run's state and is finite (no checkpoint is written with NaN/inf,
    so one read back is damage). The first step that does is restored. A newer step that does not is, with
    `on_bad="skip"` (CheckpointArgs.on_bad_checkpoint), reported in a few log lines (step, item, tensor or
    file, the storage layer's reason) and set aside as `<step>.unrestorable`, its files unchanged: never
    restored, never counted against `max_to_keep`, never deleted here, and out of the way of the step the run
    will save again. With `on_bad="stop"` the first bad step raises `UnrestorableCheckpointError` and nothing
    is moved. When no step restores, that error is raised either way (nothing moved: a run whose model or
    optimizer changed fails every step the same way).
  * Save: an error of the save (a full disk, a write error, on this process or, with several, on any)
    raises `CheckpointSaveError` naming the step and the step's path. With asynchronous saves it is raised by
    the next `save`, `wait_until_finished` or `close`, still naming the step that failed. The failed step
    never commits (Orbax's temporary folder, removed after the failure, or when a run next starts), so it
    is never restored; older steps are deleted by `max_to_keep` only after a newer one has committed, so a
    failed save never costs an earlier step. The Checkpointer stays usable: the next save is a new attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Mapping

from etils import epath
import flax.struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import layout as layout_lib
from optiml_jax.checkpoints import orbax_io

ITEMS = ("params", "opt_state", "meta")
ON_BAD_CHECKPOINT = ("skip", "stop")  # CheckpointArgs.on_bad_checkpoint
DETAILS_LOG = orbax_io.DETAILS_LOG  # tracebacks behind one-line errors: the log file only


class NonFiniteCheckpointError(ValueError):
  """Refusing to write a checkpoint that holds NaN or infinity."""


class CheckpointError(RuntimeError):
  """A storage fault of MODEL_DIR's checkpoints; the message is short and names the step and path."""


@dataclasses.dataclass(frozen=True)
class BadStep:
  """A step of MODEL_DIR that does not restore: its folder and why (one line naming the item and tensor/file)."""

  step: int
  path: str
  reason: str

  def __str__(self) -> str:
    return f"step {self.step} ({self.path}): {self.reason}"


class UnrestorableCheckpointError(CheckpointError):
  """The step to resume from (or every step) cannot be restored; `bad` lists them, newest first."""

  def __init__(self, message: str, bad: list[BadStep]):
    super().__init__(message)
    self.bad = bad


class CheckpointSaveError(CheckpointError):
  """A save failed (a full disk, a write error); `step` never committed and is never restored."""

  def __init__(self, step: int, path: str, reason: str):
    super().__init__(f"step {step}: the checkpoint could not be written to {path}: {reason}")
    self.step = step
    self.path = path
    self.reason = reason


class _BadItem(Exception):
  """Internal: one item of a step does not restore or verify (the message is the one-line reason)."""


@jax.jit
def _all_finite_jit(leaves: list[Any]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


@jax.jit
def _finite_flags_jit(leaves: list[Any]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


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
  """A wrapper over `orbax.checkpoint.CheckpointManager` for the train state and the data position, which
  resumes from the newest step that restores and reports a failed save by step and path (module docstring).

  Retention (`max_to_keep`) is applied here, after a save has committed, rather than by Orbax (which picks the
  steps to delete before the new one is written).
  """

  def __init__(self, directory: str, *, save_interval_steps: int = 1000, max_to_keep: int | None = 3,
               async_save: bool = True):
    self.directory = str(directory)
    self.save_interval_steps = save_interval_steps
    self.max_to_keep = max_to_keep
    self.async_save = async_save
    self.bad_steps: list[BadStep] = []  # steps restore_latest skipped, newest first
    self.set_aside: dict[int, str] = {}  # step -> where its unrestorable folder now is
    self._pending: int | None = None  # an asynchronous save not yet known to have committed
    self._manager = self._open()

  def _open(self, cleanup: bool = True) -> ocp.CheckpointManager:
    options = dict(save_interval_steps=self.save_interval_steps, max_to_keep=None,
                   enable_async_checkpointing=self.async_save, create=True)
    # At start-up, removes the temporary folders of saves that never finished (Orbax's own convention).
    fields = {f.name for f in dataclasses.fields(ocp.CheckpointManagerOptions)}
    if "cleanup_tmp_directories" in fields:
      options["cleanup_tmp_directories"] = cleanup
    return ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(**options), item_names=ITEMS)

  def step_path(self, step: int) -> str:
    return str(epath.Path(self.directory) / str(step))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `step` is on the save interval."""
    return step % self.save_interval_steps == 0

  # -- saving ----------------------------------------------------------------------------------------------

  def save(self, step: int, state: TrainState, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves `state` and `meta` at `step` when `step` is a multiple of the interval, or when `force`.

    Returns whether it saved (started saving, when asynchronous).

    Raises:
      NonFiniteCheckpointError: params or optimizer state are not finite; nothing is written.
      CheckpointSaveError: this save, or the previous asynchronous one (`error.step` says which), failed.
    """
    if not force and not self.should_save(step):
      return False
    if not all_finite((state.params, state.opt_state)):
      raise NonFiniteCheckpointError(
          f"step {step}: parameters or optimizer state hold NaN/inf; not writing a checkpoint to "
          f"{self.directory}")
    self._settle()
    meta = dict(meta, step=int(step))
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              params=ocp.args.StandardSave(state.params),
              opt_state=ocp.args.StandardSave(state.opt_state),
              meta=ocp.args.JsonSave(meta),
          ),
          force=True,  # The interval is decided above, as a pure function of the step.
      )
    except orbax_io.PROGRAMMING_ERRORS:
      raise
    except Exception as e:  # pylint: disable=broad-except  a full disk, a write error, ...
      raise self._save_failed(step, e) from e
    self._pending = step
    if not self.async_save:
      self._settle()
    return True

  def _settle(self) -> None:
    """Waits for the pending save; raises CheckpointSaveError unless it committed (on every process)."""
    step, self._pending = self._pending, None
    if step is None:
      return
    error: Exception | None = None
    try:
      self._manager.wait_until_finished()
    except orbax_io.PROGRAMMING_ERRORS:
      raise
    except Exception as e:  # pylint: disable=broad-except
      error = e
    problem = None if error is None else orbax_io.describe_error(error).reason
    if problem is None and not self._committed(step):
      problem = f"the save finished without committing (no step folder with {discovery.COMMIT_FILE})"
    if not _every_process(problem is None):
      raise self._save_failed(step, error, problem or "another process could not write its part")
    self._apply_retention()

  def _committed(self, step: int) -> bool:
    folder = epath.Path(self.step_path(step))
    if not folder.is_dir():
      return False
    return (folder / discovery.COMMIT_FILE).exists() or not self._marker_expected()

  def _marker_expected(self) -> bool:
    root = epath.Path(self.directory)
    return any((root / str(s) / discovery.COMMIT_FILE).exists() for s in self._manager.all_steps())

  def _save_failed(self, step: int, error: Exception | None, reason: str | None = None) -> CheckpointSaveError:
    """The error for a failed save of `step`. Reopens the manager (Orbax's keeps the failed save and would raise
    it again) and removes the step's temporary folder, best effort: on a full disk that is the room the next
    save needs (what is left is removed when a run next starts)."""
    reason = reason or (orbax_io.describe_error(error).reason if error is not None else "unknown error")
    if error is not None:
      DETAILS_LOG.info("saving step %d to %s failed", step, self.directory, exc_info=error)
    with contextlib.suppress(Exception):
      self._manager.close()
    self._pending = None
    self._manager = self._open(cleanup=False)  # not Orbax's asynchronous clean-up: it would race the writes
    self._remove_temporary(step)  # still in flight of the failed save, and report their end at the next save
    return CheckpointSaveError(step, self.step_path(step), reason)

  def _remove_temporary(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    root = epath.Path(self.directory)
    for attempt in range(3):
      leftovers = [p for p in root.glob(f"{step}.orbax-checkpoint-tmp*") if p.is_dir()]
      if not leftovers:
        return
      for folder in leftovers:
        try:
          folder.rmtree()
        except OSError as e:  # a write of the failed save still landing in it: try again
          DETAILS_LOG.info("removing %s (attempt %d): %s", folder, attempt + 1, e)
      time.sleep(0.2)

  def _apply_retention(self) -> None:
    if self.max_to_keep is None:
      return
    steps = self.all_steps()
    for step in steps[:max(0, len(steps) - self.max_to_keep)]:
      try:
        self._manager.delete(step)
      except orbax_io.PROGRAMMING_ERRORS:
        raise
      except Exception as e:  # pylint: disable=broad-except  a full disk does not stop a delete; others might
        logging.warning("could not delete the old checkpoint %s: %s", self.step_path(step),
                        orbax_io.describe_error(e).reason)

  # -- restoring -------------------------------------------------------------------------------------------

  def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restores and verifies `step` into arrays shaped and sharded like `abstract_state` (arrays or
    ShapeDtypeStructs). Raises UnrestorableCheckpointError naming the step, the item and the tensor."""
    try:
      return self._restore_verified(step, abstract_state)
    except _BadItem as e:
      bad = BadStep(step, self.step_path(step), str(e))
      raise UnrestorableCheckpointError(f"checkpoint {bad}", [bad]) from None

  def restore_latest(self, abstract_state: TrainState,
                     on_bad: str = "skip") -> tuple[TrainState, dict[str, Any]] | None:
    """The newest step that restores completely, or None when MODEL_DIR has no step (module docstring).

    Every process must call it (the processes agree on each step). `on_bad`: "skip" (report a newer step that
    does not restore, set it aside, resume from an older one) or "stop" (raise on the first that does not).

    Raises:
      UnrestorableCheckpointError: with "stop", the newest step does not restore; either way, no step does.
    """
    if on_bad not in ON_BAD_CHECKPOINT:
      raise ValueError(f"on_bad: expected one of {ON_BAD_CHECKPOINT}, got {on_bad!r}")
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    marker = any((epath.Path(self.step_path(s)) / discovery.COMMIT_FILE).exists() for s in steps)
    bad: list[BadStep] = []
    for step in steps:
      problem, restored = None, None
      if marker and not (epath.Path(self.step_path(step)) / discovery.COMMIT_FILE).exists():
        problem = discovery.UNCOMMITTED_REASON
      else:
        try:
          restored = self._restore_verified(step, abstract_state)
        except _BadItem as e:
          problem = str(e)
      if _every_process(problem is None) and restored is not None:
        self.bad_steps = bad
        if bad:
          self._set_aside_all(bad, step)
        return restored
      bad.append(BadStep(step, self.step_path(step), problem or "another process could not restore its part"))
      if on_bad == "stop":
        older = f"; older steps: {sorted(steps[len(bad):])}" if steps[len(bad):] else ""
        raise UnrestorableCheckpointError(
            f"checkpoint {bad[0]}{older}. Set CheckpointArgs.on_bad_checkpoint='skip' to resume from the newest "
            f"step that restores (it sets {bad[0].path} aside), or move the folder aside yourself", bad)
    raise UnrestorableCheckpointError(
        f"no checkpoint in {self.directory} can be restored: " + "; ".join(map(str, bad)) +
        ". If the run's model or optimizer changed, use a new MODEL_DIR (INITIAL_CHECKPOINT_PATH can start it "
        "from one of these)", bad)

  def _set_aside_all(self, bad: list[BadStep], resumed: int) -> None:
    moved = []
    for item in bad:
      self.set_aside[item.step] = self._set_aside(item.step)
      moved.append(f"{item.path} -> {self.set_aside[item.step]}")
    self._manager.reload()
    for item in bad:
      logging.warning("checkpoint %s", item)
    logging.warning(
        "resuming from step %d, the newest step of %s that restores completely; set aside, files unchanged "
        "(inspect, then delete): %s. CheckpointArgs.on_bad_checkpoint='stop' stops instead", resumed, self.directory,
        ", ".join(moved))

  def _set_aside(self, step: int) -> str:
    """Renames the folder of `step` to `<step>.unrestorable` (or `-2`, `-3`, ... when taken); process 0 moves."""
    root = epath.Path(self.directory)
    target, n = root / f"{step}{discovery.UNRESTORABLE_SUFFIX}", 1
    while target.exists():
      n += 1
      target = root / f"{step}{discovery.UNRESTORABLE_SUFFIX}-{n}"
    if jax.process_index() == 0:
      (root / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"optiml_jax:set_aside:{step}")
    return str(target)

  def _restore_item(self, step: int, name: str, args: Any) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
    except orbax_io.PROGRAMMING_ERRORS:
      raise
    except Exception as e:  # pylint: disable=broad-except  files cut short or missing, bad JSON, ...
      DETAILS_LOG.info("restoring item %s of step %d of %s failed", name, step, self.directory, exc_info=e)
      described = orbax_io.describe_error(e)
      where = [f"tensor '{described.tensor}'"] if described.tensor else []
      where += [described.file] if described.file else [f"{self.step_path(step)}/{name}"]
      raise _BadItem(f"{name}: {' in '.join(where)}: {described.reason}") from None

  def _restore_verified(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
    if not isinstance(meta, Mapping) or meta.get("step") != step:
      found = meta.get("step") if isinstance(meta, Mapping) else type(meta).__name__
      raise _BadItem(f"meta: {self.step_path(step)}/meta: expected a JSON object with \"step\": {step}, "
                     f"found {found!r}")
    items = {}
    stored_scan, run_scan = self._stored_layout(step), layout_lib.is_scanned(abstract_state.params)
    for name in ("params", "opt_state"):
      abstract = _abstract(getattr(abstract_state, name))
      # Stored in the other layer layout (the run flipped scan_layers): read it as stored, then relayout.
      target = abstract if stored_scan in (None, run_scan) else orbax_io.relayout_abstract(abstract, stored_scan)
      restored = self._restore_item(step, name, ocp.args.StandardRestore(target))
      problem = _tree_problem(restored, target)
      if problem:
        raise _BadItem(f"{name}: {self.step_path(step)}/{name}: {problem}")
      if target is not abstract:
        restored = jax.jit(lambda tree: layout_lib.relayout(tree, bool(run_scan), stack=jnp.stack),
                           out_shardings=jax.tree_util.tree_map(lambda a: a.sharding, abstract))(restored)
      items[name] = restored
    state = TrainState(step=np.int32(step), params=items["params"], opt_state=items["opt_state"])
    return state, dict(meta)

  def _stored_layout(self, step: int) -> bool | None:
    """Whether `step`'s params are stored stacked (`layout.is_scanned`); None when unknown (the restore says why)."""
    try:
      metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.step_path(step)) / "params")
    except orbax_io.PROGRAMMING_ERRORS:
      raise
    except Exception:  # pylint: disable=broad-except  a damaged item: restoring it names the problem
      return None
    metadata = getattr(metadata, "tree", metadata)
    return layout_lib.is_scanned(metadata) if isinstance(metadata, Mapping) else None

  def wait_until_finished(self) -> None:
    """Waits for an asynchronous save; raises CheckpointSaveError naming its step if it failed."""
    self._settle()

  def close(self) -> None:
    try:
      self._settle()
    finally:
      with contextlib.suppress(Exception):
        self._manager.close()


def _every_process(ok: bool) -> bool:
  """Whether `ok` holds on every process (a collective when there are several)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray(ok, np.int32))
  return bool(np.all(np.asarray(flags)))


def _leaf_name(path: Any) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _tree_problem(restored: Any, abstract: Any) -> str | None:
  """Why a restored tree is not the expected one (structure, a leaf's shape or dtype, a non-finite leaf)."""
  if str(jax.tree_util.tree_structure(restored)) != str(jax.tree_util.tree_structure(abstract)):
    return "its tree differs from this run's state"
  got = jax.tree_util.tree_flatten_with_path(restored)[0]
  want = jax.tree_util.tree_leaves(abstract)
  for (path, leaf), expected in zip(got, want):
    if tuple(np.shape(leaf)) != tuple(expected.shape) or np.dtype(leaf.dtype) != np.dtype(expected.dtype):
      return (f"tensor '{_leaf_name(path)}' is {np.dtype(leaf.dtype).name}{list(np.shape(leaf))}, expected "
              f"{np.dtype(expected.dtype).name}{list(expected.shape)}")
  floats = [(path, leaf) for path, leaf in got if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if floats:
    flags = _finite_flags_jit([leaf for _, leaf in floats])
    flags = np.asarray(flags.addressable_data(0))
    for (path, _), finite in zip(floats, flags):
      if not finite:
        return f"tensor '{_leaf_name(path)}' holds NaN/inf (no checkpoint is written with them: damaged data)"
  return None


def _abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (keeping shardings) for the arrays of `tree`; leaves that already are stay as they are."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

  return jax.tree_util.tree_map(one, tree)
