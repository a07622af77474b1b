"""The training loop: mesh, sharded state, the jit-ed step, checkpoints, resume, preemption, logging.

Sits under the gin entry point (`optiml_jax.train`), which turns gin bindings into the plain arguments of
`run`. Everything here takes ordinary values: a model config, a batch-stream factory and figures.

Order of a run: build the ("data", "fsdp", "tensor") mesh; derive every array's sharding from the model's
logical axis names and the one rule table (`models.partitioning`); restore the latest checkpoint under
`model_dir` (state and data position) or else initialise (from `initial_checkpoint` if given) directly in the
sharded layout; then step. Each process feeds its own `batch_size / process_count` rows.

Preemption: SIGTERM sets a flag; after the current step the loop saves a checkpoint at that step and returns
with `preempted=True` (every process agrees through an all-gather of the flag). Restarting the same command
resumes from it and sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils

from optiml_jax.models import opt as opt_lib
from optiml_jax.models import partitioning
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import metrics as metrics_lib
from optiml_jax.trainer import optimizer as optimizer_lib
from optiml_jax.trainer import step as step_lib

NAN_POLICIES = ("skip", "stop")
BATCH_AXES = ("batch", "length")


class NonFiniteLossError(RuntimeError):
  """Training stopped on a non-finite loss or gradient (nan_policy="stop")."""


@dataclasses.dataclass(frozen=True)
class OptimizerArgs:
  """The recipe's optimizer figures (see `trainer.optimizer.make_optimizer`)."""

  learning_rate: float = 5e-5
  warmup_steps: int = 60
  end_learning_rate: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  decay_matrices_only: bool = False
  clip_norm: float | None = 1.0


@dataclasses.dataclass
class Summary:
  """What a run did; printed at the end and returned to the caller."""

  model_dir: str
  first_step: int
  last_step: int
  preempted: bool
  skipped_steps: list[int]
  first_loss: float | None
  last_loss: float | None
  seconds: float
  tokens_per_second: float | None
  loss_plot: str | None


class _Preemption:
  """Turns SIGTERM into a flag the loop polls (installed only in the main thread)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint after the current step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    return bool(np.any(flags))


def state_shardings(model, tx, mesh, seq_len: int, rules=partitioning.LOGICAL_AXIS_RULES):
  """(abstract TrainState with shardings, TrainState of NamedShardings, params' logical axes)."""
  dummy = jnp.ones((1, seq_len), jnp.int32)
  abstract_params, axes = partitioning.abstract_variables(model, dummy, enable_dropout=False)
  abstract_params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), abstract_params)
  param_shardings = partitioning.logical_to_mesh_sharding(axes, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated)
  shardings = checkpointing.TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  abstract = checkpointing.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                      opt_state=abstract_opt)
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    abstract, shardings)
  return abstract, shardings, axes


def _global_batch(local: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def run(model_config: opt_lib.OPTConfig,
        make_stream: Callable[[int, int, int], Iterator[Mapping[str, np.ndarray]]],
        *,
        model_dir: str,
        train_steps: int,
        batch_size: int,
        seq_len: int,
        mesh_shape: tuple[int, int, int] = (-1, 1, 1),
        num_microbatches: int = 1,
        optimizer: OptimizerArgs = OptimizerArgs(),
        seed: int = 0,
        initial_checkpoint: str | None = None,
        save_every: int = 1000,
        keep_checkpoints: int | None = 3,
        async_checkpoints: bool = True,
        log_every: int = 10,
        nan_policy: str = "skip",
        stop_at_step: int | None = None,
        progress: bool = True,
        rules=partitioning.LOGICAL_AXIS_RULES) -> Summary:
  """Trains `model_config` on batches from `make_stream(per_process_batch, process_index, process_count)`.

  The stream must have `state()` and `restore(state)` (see `data.pipeline.BatchStream`) for exact resume.
  `stop_at_step` ends this invocation early (checkpointing there) without changing the schedule, which is
  always laid out over `train_steps`.
  """
  if nan_policy not in NAN_POLICIES:
    raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size {batch_size} is not divisible by the {jax.process_count()} processes")
  started = time.time()
  mesh = partitioning.make_mesh(*mesh_shape)
  model = opt_lib.OPT(model_config)
  tx, schedule = optimizer_lib.make_optimizer(total_steps=train_steps, **dataclasses.asdict(optimizer))
  abstract, shardings, _ = state_shardings(model, tx, mesh, seq_len, rules)
  batch_sharding = partitioning.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*BATCH_AXES), mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  stream = make_stream(batch_size // jax.process_count(), jax.process_index(), jax.process_count())
  ckpt = checkpointing.Checkpointer(model_dir, save_interval_steps=save_every, max_to_keep=keep_checkpoints,
                                    async_save=async_checkpoints)
  restored = ckpt.restore_latest(abstract)
  if restored is not None:
    state, meta = restored
    state = state.replace(step=jax.device_put(jnp.int32(meta["step"]), replicated))
    stream.restore(meta["data"])
    logging.info("resumed from %s at step %d", model_dir, meta["step"])
  else:
    state = _initial_state(model, tx, abstract, shardings, seed, seq_len, initial_checkpoint, mesh, rules)
  first_step = int(state.step)

  train_fn = jax.jit(
      lambda s, b, r: step_lib.train_step(s, b, r, model=model, tx=tx, schedule=schedule,
                                          num_microbatches=num_microbatches,
                                          enable_dropout=model_config.dropout > 0 or
                                          model_config.attention_dropout > 0),
      in_shardings=(shardings, batch_sharding, replicated),
      out_shardings=(shardings, replicated),
      donate_argnums=(0,))
  rng = jax.random.PRNGKey(seed)
  writer = metrics_lib.MetricsWriter(model_dir, resume_step=first_step)
  peak = metrics_lib.peak_flops_per_device()
  flops_per_token = model_config.flops_per_token(seq_len)
  last_step = stop_at_step if stop_at_step is not None else train_steps
  last_step = min(last_step, train_steps)
  skipped, losses = [], []
  tokens_since, time_since, total_tokens = 0, time.time(), 0
  bar = tqdm.tqdm(total=train_steps, initial=first_step, disable=not progress or jax.process_index() != 0,
                  desc="train", dynamic_ncols=True)
  preempted = False
  step = first_step
  with _Preemption() as preemption, partitioning.mesh_context(mesh, rules):
    while step < last_step:
      local = next(stream)
      tokens = int(np.sum(np.asarray(local["decoder_target_tokens"]) != 0)) * jax.process_count()
      state, metrics = train_fn(state, _global_batch(local, batch_sharding), rng)
      step += 1
      tokens_since += tokens
      total_tokens += tokens
      if step % log_every == 0 or step == last_step or not int(metrics["finite"]):
        metrics = jax.device_get(metrics)
        if not int(metrics["finite"]):
          message = f"step {step}: non-finite loss ({metrics['loss']}) or gradient norm ({metrics['grad_norm']})"
          if nan_policy == "stop":
            writer.close()
            ckpt.close()
            raise NonFiniteLossError(message + "; stopping (nan_policy='stop'); no checkpoint written")
          logging.warning("%s; update skipped", message)
          skipped.append(step)
        elapsed = max(time.time() - time_since, 1e-9)
        tps = tokens_since / elapsed
        record = {
            "loss": float(metrics["loss"]),
            "learning_rate": float(metrics["learning_rate"]),
            "grad_norm": float(metrics["grad_norm"]),
            "tokens_per_second": tps,
            "mfu": metrics_lib.model_flops_utilization(tps, flops_per_token, jax.device_count(), peak),
        }
        writer.write(step, record)
        losses.append(record["loss"])
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}", tok_s=f"{tps:,.0f}")
        tokens_since, time_since = 0, time.time()
      bar.update(1)
      if preemption.agreed():
        preempted = True
        break
      ckpt.save(step, state, {"data": stream.state()})
  bar.close()
  if step > first_step or preempted:
    if step not in ckpt.all_steps():
      ckpt.save(step, state, {"data": stream.state()}, force=True)
  ckpt.close()
  writer.close()
  plot = None
  if jax.process_index() == 0 and losses:
    plot = metrics_lib.plot_loss_curve(writer.path, os.path.join(model_dir, "loss.png"))
  seconds = time.time() - started
  summary = Summary(model_dir=model_dir, first_step=first_step, last_step=step, preempted=preempted,
                    skipped_steps=skipped, first_loss=losses[0] if losses else None,
                    last_loss=losses[-1] if losses else None, seconds=seconds,
                    tokens_per_second=total_tokens / seconds if total_tokens else None, loss_plot=plot)
  return summary


def _initial_state(model, tx, abstract, shardings, seed, seq_len, initial_checkpoint, mesh, rules):
  """A fresh TrainState in its sharded layout: random init, or params from an Orbax/HF checkpoint."""
  if initial_checkpoint:
    from optiml_jax import convert  # pylint: disable=g-import-not-at-top
    params = _load_initial_params(convert, initial_checkpoint, abstract.params, shardings.params,
                                  model.config.scan_layers)
    init_opt = jax.jit(tx.init, out_shardings=shardings.opt_state)
    with partitioning.mesh_context(mesh, rules):
      opt_state = init_opt(params)
    step = jax.device_put(jnp.int32(0), shardings.step)
    return checkpointing.TrainState(step=step, params=params, opt_state=opt_state)

  dummy = jnp.ones((1, seq_len), jnp.int32)

  def init(rng):
    params = model.init(rng, dummy, enable_dropout=False)["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), params)
    return checkpointing.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

  with partitioning.mesh_context(mesh, rules):
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def _load_initial_params(convert, path, abstract_params, param_shardings, scan_layers):
  """Params from an Orbax checkpoint (`convert.restore_orbax`) or a Hugging Face folder, checked and sharded."""
  if os.path.exists(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "params")):
    _, params = convert.load_hf(path, config_overrides={"scan_layers": scan_layers})
    params = jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x, np.float32), s),
                                    params, param_shardings)
  else:
    _, params = convert.restore_orbax(path, shardings=param_shardings)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
  expected = jax.tree_util.tree_map(lambda a: a.shape, abstract_params)
  got = jax.tree_util.tree_map(lambda a: a.shape, params)
  if expected != got:
    raise ValueError(f"initial checkpoint {path}: parameter shapes do not match the configured model "
                     f"(expected {expected}, got {got})")
  return params
