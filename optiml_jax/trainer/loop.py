"""The training loop: mesh, sharded state, the jit-ed step, checkpoints, resume, preemption, logging.

Sits under the gin entry point (`optiml_jax.train`), which turns gin bindings into a `trainer.config.TrainConfig`
and calls `run(config, make_stream)`. Everything here takes that plain config and a batch-stream factory.

Order of a run: check MODEL_DIR and the model of the checkpoint it resumes or starts from (`trainer.preflight`);
build the ("data", "fsdp", "tensor") mesh; derive every array's sharding from the model's
logical axis names and the one rule table (`trainer.state`); restore the latest checkpoint under MODEL_DIR
(state and every process's data position; with another number of processes Orbax reshards the state onto
this mesh and `runtime.data_state_of_this_process` says where each new process's data continues) or else
initialise (from the initial checkpoint if given) directly in the sharded layout; then step. Each process
feeds the rows its devices hold (`runtime.process_row_block`: `batch_size / process_count` rows of its own stream
shard, or, where a tensor axis spans processes, the same shard as the processes it shares rows with; on a TPU
slice those rows are often no one block of the batch, and `jax.make_array_from_process_local_data` puts them in place),
prepared by a background thread (`trainer.prefetch`) while the device runs the previous step.

Metrics are fetched one step late, so the host never waits for the device between steps; a non-finite loss
or gradient is therefore noticed after the next step is queued, which changes nothing: the step itself keeps
params and optimizer state unchanged when its loss or gradient is not finite (`trainer.step`), and pending
metrics are always checked before a checkpoint is written.

Storage faults (`trainer.checkpointing`): a newest step that does not restore is reported and set aside, and
the run resumes from the newest step that does (CheckpointArgs.on_bad_checkpoint='skip'), or stops
('stop'); a save that fails stops the run naming step and path (CheckpointArgs.on_save_error='stop'), or is
reported and tried again at the next save step ('retry'; a failed last save still raises).

Preemption: SIGTERM (or a first Ctrl-C: `interrupted=True` too) sets a flag; after the current step the loop saves a
checkpoint at that step and returns with `preempted=True` (every process agrees through an all-gather of the flag).
Restarting the same command resumes from it and sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping, Protocol

import jax
import numpy as np
import optax

from optiml_jax.models import partitioning
from optiml_jax.models import registry
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import metrics as metrics_lib
from optiml_jax.trainer import optimizer as optimizer_lib
from optiml_jax.trainer import prefetch
from optiml_jax.trainer import preflight
from optiml_jax.trainer import runtime
from optiml_jax.trainer import state as state_lib
from optiml_jax.trainer import step as step_lib

BATCH_AXES = ("batch", "length")


class ResumableStream(Iterator[Mapping[str, np.ndarray]], Protocol):
  """A batch stream `run` can checkpoint and resume (`data.pipeline.BatchStream`, `trainer.synthetic`)."""

  def state(self) -> dict[str, Any]:
    """The position (JSON-able), stored in each checkpoint's metadata."""

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a `state()`."""


StreamFactory = Callable[[int, int, int], ResumableStream]

NonFiniteLossError = runtime.NonFiniteLossError


@dataclasses.dataclass
class Summary:
  """What a run did; printed at the end and returned to the caller."""

  model_dir: str
  first_step: int
  last_step: int
  train_steps: int
  preempted: bool
  skipped_steps: list[int]
  first_loss: float | None
  last_loss: float | None
  seconds: float
  tokens_per_second: float | None
  checkpoint_steps: list[int]
  loss_plot: str | None
  bad_checkpoints: list[str] = dataclasses.field(default_factory=list)  # skipped at resume, newest first
  failed_saves: list[int] = dataclasses.field(default_factory=list)  # steps whose save failed (on_save_error='retry')
  interrupted: bool = False  # stopped by Ctrl-C (SIGINT) in this process, not by SIGTERM: the command exits 130

  def describe(self) -> str:
    """A few human-readable lines."""
    if self.last_step == self.first_step < self.train_steps and self.preempted:  # SIGTERM during start-up
      head = (f"preempted during start-up: nothing trained, {self.model_dir} is still at step {self.last_step} of "
              f"{self.train_steps} (rerun the same command to go on)")
    elif self.last_step == self.first_step:
      head = f"nothing to do: {self.model_dir} is already at step {self.last_step} of {self.train_steps}"
    else:
      head = (f"trained steps {self.first_step + 1}..{self.last_step} of {self.train_steps} in "
              f"{self.seconds:.0f} s" + (" (preempted: rerun the same command to resume)" if self.preempted else ""))
    lines = [head]
    if self.first_loss is not None:
      lines.append(f"loss {self.first_loss:.4f} (first logged) -> {self.last_loss:.4f} (last logged)")
    if self.tokens_per_second:
      lines.append(f"{self.tokens_per_second:,.0f} tokens/s overall (start-up included)")
    if self.skipped_steps:
      lines.append(f"skipped non-finite steps: {self.skipped_steps}")
    for bad in self.bad_checkpoints:
      lines.append(f"unrestorable checkpoint set aside: {bad}")
    if self.failed_saves:
      lines.append(f"failed saves (not checkpointed): steps {self.failed_saves}")
    lines.append(f"checkpoints: {self.checkpoint_steps} under {self.model_dir}")
    lines.append(f"metrics: {os.path.join(self.model_dir, 'metrics.jsonl')}  TensorBoard: "
                 f"{os.path.join(self.model_dir, 'tensorboard')}")
    if self.loss_plot:
      lines.append(f"loss plot: {self.loss_plot}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Program:
  """The jit-ed functions of a run and the layout they use (see `build_program`).

  Attributes:
    model: the Flax module the step applies (`make_model` of the run's model config).
    layout: shardings of the train state (`trainer.state.StateLayout`).
    tx, schedule: the optimizer and its learning-rate schedule.
    train_fn: `(state, global batch, rng) -> (state, metrics)`, state donated.
    init_fn: `rng -> TrainState` at step 0, created in place (call inside `partitioning.mesh_context`).
    batch_sharding: how global batches are laid out ("batch" over data x fsdp).
    mesh, rules: the device mesh and the logical-axis rule table the step is laid out with.
  """

  model: Any
  layout: state_lib.StateLayout
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  train_fn: Any
  init_fn: Any
  batch_sharding: jax.sharding.NamedSharding
  mesh: jax.sharding.Mesh
  rules: partitioning.LogicalRules


def make_model(model_config: config_lib.ModelConfig) -> Any:
  """The Flax module of a model config of any family (`models.registry`); ConfigError for anything else."""
  try:
    return registry.make_model(model_config)
  except ValueError as e:
    raise config_lib.ConfigError(f"ModelArgs.config: {e}") from e


def rules_for(args: config_lib.PartitioningArgs) -> partitioning.LogicalRules:
  """The logical-axis rule table of a run: the one table, or its sequence-parallel variant."""
  return partitioning.SEQUENCE_PARALLEL_RULES if args.sequence_parallel else partitioning.LOGICAL_AXIS_RULES


@functools.lru_cache(maxsize=4)
def build_program(model_config: config_lib.ModelConfig, optimizer: config_lib.OptimizerArgs,
                  partitioning_args: config_lib.PartitioningArgs, train_steps: int, seq_len: int,
                  mesh: jax.sharding.Mesh | None = None) -> Program:
  """The step and init functions of a run; cached, so runs in one process compile once.

  Takes only what the compiled step depends on (a TrainConfig's `model.config`, `optimizer`, `partitioning`,
  `run.train_steps` and `seq_len`), so runs that differ in anything else share it. `mesh`: the devices to lay
  the step over; None makes one of `partitioning_args.mesh_shape` from all devices.
  """
  if mesh is None:
    mesh = make_mesh(partitioning_args)
  rules = rules_for(partitioning_args)
  model = make_model(model_config)
  tx, schedule = optimizer_lib.make_optimizer(total_steps=train_steps, **dataclasses.asdict(optimizer))
  layout = state_lib.state_layout(model, tx, mesh, seq_len, rules)
  batch_sharding = partitioning.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*BATCH_AXES), mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  enable_dropout = model_config.dropout > 0 or model_config.attention_dropout > 0
  train_fn = jax.jit(
      functools.partial(
          step_lib.train_step, model=model, tx=tx, schedule=schedule,
          num_microbatches=partitioning_args.num_microbatches, enable_dropout=enable_dropout,
          lm_head_positions=partitioning_args.lm_head_positions, loss_chunk_size=partitioning_args.loss_chunk_size,
          padding_mask=partitioning_args.padding_mask,
          nonfinite_guard=step_lib.resolve_nonfinite_guard(partitioning_args.nonfinite_guard,
                                                           mesh.devices.flat[0].platform)),
      in_shardings=(layout.shardings, batch_sharding, replicated), out_shardings=(layout.shardings, replicated),
      donate_argnums=(0,))
  init_fn = state_lib.make_init_fn(model, tx, layout, seq_len)
  return Program(model, layout, tx, schedule, train_fn, init_fn, batch_sharding, mesh, rules)


def make_mesh(partitioning_args: config_lib.PartitioningArgs) -> jax.sharding.Mesh:
  """The mesh of `PartitioningArgs.mesh_shape` over all devices; ConfigError naming the binding, with
  `partitioning.make_mesh`'s reason, when the sizes do not fit the devices."""
  try:
    return partitioning.make_mesh(*partitioning_args.mesh_shape)
  except ValueError as e:
    raise config_lib.ConfigError(f"PartitioningArgs.mesh_shape: {e}") from e


def check_devices(config: config_lib.TrainConfig) -> None:
  """The checks `run` makes of the devices before anything is built (the mesh, the batch and the parameters over
  it), for an entry point to make before it registers the catalog; raises ConfigError naming the binding."""
  _check_layout(config, make_mesh(config.partitioning))


def _check_layout(config: config_lib.TrainConfig, mesh: jax.sharding.Mesh) -> None:
  """What the config alone cannot check: the batch over data x fsdp (over the processes: `process_row_block`),
  and every parameter dimension over the mesh axes the rule table gives it (`state.uneven_param_dims`)."""
  batch_size, num_microbatches = config.data.batch_size, config.partitioning.num_microbatches
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if (batch_size // num_microbatches) % shards:
    raise config_lib.ConfigError(
        f"DataArgs.batch_size: {batch_size} rows must split into PartitioningArgs.num_microbatches="
        f"{num_microbatches} microbatches whose rows divide over data x fsdp = {shards} devices")
  uneven = state_lib.uneven_param_dims(make_model(config.model.config), mesh.shape, config.seq_len,
                                       rules_for(config.partitioning))
  if uneven:
    shown = "; ".join(uneven[:3]) + (f"; and {len(uneven) - 3} more" if len(uneven) > 3 else "")
    sizes = ", ".join(f"{axis}={mesh.shape[axis]}" for axis in partitioning.MESH_AXES)
    raise config_lib.ConfigError(
        f"PartitioningArgs.mesh_shape: the mesh ({sizes}) cannot split every parameter evenly: {shown}; choose "
        "fsdp and tensor sizes that divide the model's dimensions")


def restore_stream(stream: ResumableStream, state: Mapping[str, Any], step_folder: str) -> None:
  """Puts `stream` at the data position a checkpoint saved; a ResumeError naming `step_folder` when the saved
  position is of another stream (another RunArgs.seed, mixture, feature lengths, packing: the stream's `restore`
  raises ValueError naming the fields that differ)."""
  try:
    stream.restore(state)
  except ValueError as e:
    raise runtime.ResumeError(
        f"checkpoint {step_folder}: its data position cannot continue this run's data ({e}); resume with the "
        "RunArgs.seed and DataArgs (mixture, feature lengths, packing) of the run that wrote it, or start a new "
        "MODEL_DIR from it with INITIAL_CHECKPOINT_PATH (the data then restarts from the beginning)") from e


def run(config: config_lib.TrainConfig, make_stream: StreamFactory) -> Summary:
  """Trains as `config` says on batches from `make_stream(block_rows, block_index, block_count)`: stream shard
  `block_index` of `block_count`, the rows of the global batch this process's devices hold
  (`runtime.process_row_block`; processes that share rows get the same shard, so their deterministic streams feed
  the same rows).

  The stream must have `state()` and `restore(state)` (see `data.pipeline.BatchStream`) for exact resume;
  its batches are numpy dicts of [block_rows, seq_len] arrays with the `decoder_*` features (the
  stream, not the loop, reads `config.data`'s mixture, catalog and packing). `RunArgs.stop_at_step` ends
  this invocation early (checkpointing there) without changing the schedule, which is always laid out over
  `RunArgs.train_steps`. Raises NonFiniteLossError (nan_policy="stop") naming the step, ConfigError when the
  mesh or the batch cannot be laid out over these devices or when MODEL_DIR or a checkpoint's model does not fit the run
  (`trainer.preflight`, checked before anything is built), `checkpointing.UnrestorableCheckpointError` when the
  checkpoint to resume from does not restore (see CheckpointArgs.on_bad_checkpoint), `runtime.ResumeError` naming
  the step folder when its data position is of another stream or process layout (`restore_stream`) and
  `checkpointing.CheckpointSaveError` naming the step and path when a save fails (CheckpointArgs.on_save_error).
  """
  data, ckpt_args, log_args, run_args = config.data, config.checkpoint, config.logging, config.run
  model_config, model_dir, seq_len = config.model.config, ckpt_args.model_dir, config.seq_len
  train_steps, batch_size, seed = run_args.train_steps, data.batch_size, run_args.seed
  preflight.check(config)  # MODEL_DIR and the checkpoints' models, before anything is built
  runtime.apply_xla_flags(run_args.xla_flags)  # a no-op when the entry point applied them already
  if run_args.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", run_args.compilation_cache_dir)
  started = time.time()
  mesh = make_mesh(config.partitioning)
  _check_layout(config, mesh)
  program = build_program(model_config, config.optimizer, config.partitioning, train_steps, seq_len, mesh)
  model, rules = program.model, program.rules
  segment_bound = getattr(model_config, "packed_attention_segments", 0)

  with contextlib.ExitStack() as cleanup:  # closed in reverse order, also when something raises
    preemption = cleanup.enter_context(runtime.Preemption())
    ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=ckpt_args.save_every,
                                      max_to_keep=ckpt_args.keep_checkpoints, async_save=ckpt_args.async_checkpoints)
    cleanup.callback(ckpt.close)
    block = runtime.process_row_block(program.batch_sharding, batch_size, seq_len)
    stream = make_stream(block.rows, block.index, block.count)
    restored = ckpt.restore_latest(program.layout.abstract, on_bad=ckpt_args.on_bad_checkpoint)
    if restored is not None:
      state, meta = restored
      state = dataclasses.replace(state, step=runtime.replicated_scalar(meta["step"], program.layout.shardings.step))
      restore_stream(stream, runtime.data_state_of_this_process(meta, model_dir, stream.state()),
                     ckpt.step_path(meta["step"]))
      logging.info("resumed from %s at step %d", model_dir, meta["step"])
    else:
      state = state_lib.initial_state(model, program.tx, program.layout, mesh, seed=seed, seq_len=seq_len,
                                      initial_checkpoint=config.model.initial_checkpoint_path, rules=rules,
                                      init_fn=program.init_fn)
      runtime.write_model_config(model_dir, model_config, data.tokenizer_dir)
    first_step = int(state.step)
    last_step = min(train_steps, run_args.stop_at_step or train_steps)

    batches = prefetch.Prefetcher(stream, depth=data.prefetch_depth)
    del stream
    cleanup.callback(batches.close)
    writer = metrics_lib.MetricsWriter(model_dir, resume_step=first_step, tensorboard=log_args.tensorboard)
    cleanup.callback(writer.close)
    tracker = runtime.StepTracker(writer=writer, log_every=log_args.log_every, last_step=last_step,
                                  nan_policy=run_args.nan_policy, flops_per_token=model_config.flops_per_token(seq_len),
                                  positions_per_step=batch_size * seq_len, num_devices=mesh.devices.size,
                                  peak_flops=metrics_lib.peak_flops_per_device(),
                                  progress=runtime.progress_bar(train_steps, first_step, log_args.progress))
    cleanup.callback(tracker.close)
    saved_step = first_step if restored is not None else None
    failed_saves: list[int] = []

    def save(at: int) -> None:
      """Saves at step `at`; a failed save raises (on_save_error='stop') or is reported (and so retried at the next
      save step). An earlier asynchronous save that failed is reported by this call, then this one is tried."""
      for _ in range(2):
        try:
          ckpt.save(at, state, {"data": runtime.gather_json(batches.state())}, force=True)
          return
        except checkpointing.CheckpointSaveError as e:
          if ckpt_args.on_save_error == "stop":
            raise
          failed_saves.append(e.step)
          logging.warning(
              "%s; training goes on and the next save tries again (CheckpointArgs.on_save_error="
              "'retry')", e)
          if e.step == at:
            return

    step = first_step
    preempted = preemption.agreed()  # SIGTERM during start-up: nothing trained yet, nothing to save
    with partitioning.mesh_context(mesh, rules):
      while step < last_step and not preempted:
        local = next(batches)
        runtime.check_segment_bound(local, segment_bound, step)
        global_batch = {
            k: jax.make_array_from_process_local_data(program.batch_sharding, np.asarray(v), (batch_size, seq_len))
            for k, v in local.items()
        }
        state, metrics = program.train_fn(state, global_batch, jax.random.PRNGKey(seed))
        step += 1
        tracker.push(step, metrics, runtime.count_tokens(local) * block.count)
        preempted = preemption.agreed()
        if preempted or ckpt.should_save(step):
          tracker.flush()  # a pending non-finite step stops the run (nan_policy="stop") before this save
          save(step)
          saved_step = step
      tracker.flush()
    if step != saved_step and step > first_step:
      save(step)
    try:
      ckpt.wait_until_finished()
    except checkpointing.CheckpointSaveError as e:
      if ckpt_args.on_save_error == "stop" or e.step != step:
        raise
      failed_saves.append(e.step)
      logging.warning("%s", e)
    if failed_saves and failed_saves[-1] == step and step > first_step:  # nothing left to retry it
      raise checkpointing.CheckpointSaveError(
          step, ckpt.step_path(step), f"the run's last save failed (steps that failed: {failed_saves}); the newest "
          f"committed step is {ckpt.latest_step()}: free space or fix the storage, then rerun the same command")
    if preempted and step > first_step:
      logging.warning("preempted at step %d (checkpointed); rerun the same command to resume", step)
    elif preempted and step < last_step:  # SIGTERM during start-up: no step ran, so there was nothing to save
      logging.warning(
          "preempted during start-up, before step %d: nothing trained and nothing checkpointed%s; rerun "
          "the same command to %s", step + 1, f" since step {step}" if step else "", "resume" if step else "start")
    checkpoint_steps = ckpt.all_steps()
  plot = None
  if jax.process_index() == 0 and tracker.losses:
    try:
      plot = metrics_lib.plot_loss_curve(writer.path, os.path.join(model_dir, "loss.png"))
    except ImportError as e:  # an accelerator image without matplotlib: the run is done, the curve is optional
      logging.warning(
          "no loss.png (%s): %s holds the losses; optiml_jax.trainer.metrics.plot_loss_curve draws "
          "them where matplotlib is installed", e, writer.path)
  seconds = time.time() - started
  return Summary(model_dir=model_dir, first_step=first_step, last_step=step, train_steps=train_steps,
                 preempted=preempted, skipped_steps=tracker.skipped,
                 first_loss=tracker.losses[0] if tracker.losses else None,
                 last_loss=tracker.losses[-1] if tracker.losses else None, seconds=seconds,
                 tokens_per_second=tracker.total_tokens / seconds if tracker.total_tokens else None,
                 checkpoint_steps=checkpoint_steps, loss_plot=plot, bad_checkpoints=[str(b) for b in ckpt.bad_steps],
                 failed_saves=failed_saves, interrupted=preemption.interrupted)
