r"""Entry point: `python -m optiml_jax.train --gin_file=FILE [--gin_file=...] [--gin.KEY=VALUE ...]` (t5x flags).

The only place training meets gin. The gin files (gin/, every binding commented) configure `train` (the
function `train_config` below), which only collects and checks values into a `TrainConfig`; `run(config)`
then registers the catalog's seqio tasks, builds the batch stream and hands plain values to
`trainer.loop.run`. So a configuration error (an unknown binding, a macro left unset, a feature length
longer than the model's positions) ends the command with exit code 2 before anything is compiled.

Macros, with t5x's names: MODEL_DIR, TRAIN_STEPS, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE,
INITIAL_CHECKPOINT_PATH, and CATALOG_DIR (the bench catalog whose tasks to register). The model preset is
chosen by including one of gin/models/opt_<size>.gin (or `--gin.opt_model.preset='opt-1.3b'`).

    python -m optiml_jax.train --gin_file=gin/optiml_30b.gin --gin.MODEL_DIR=gs://bucket/run \
        --gin.CATALOG_DIR=/data/optiml_bench --gin.INITIAL_CHECKPOINT_PATH=/ckpt/opt-30b

Multi-host: run the same command on every host; with `--multihost` (or `--coordinator_address`) it calls
`jax.distributed.initialize()` first (on a Cloud TPU pod the coordinator comes from the environment). Each
process then feeds its own share of every batch. Restarting the same command resumes from the newest
checkpoint in MODEL_DIR; SIGTERM saves one at the current step and exits with code 0.

Exit codes: 0 done (or preempted and checkpointed), 1 training stopped (non-finite loss with
nan_policy='stop', an unusable initial checkpoint), 2 configuration error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Mapping, Sequence

import gin
import jax

from optiml_jax import gin_utils
from optiml_jax.models import opt as opt_lib
from optiml_jax.models import partitioning
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import loop
from optiml_jax.trainer import runtime
from optiml_jax.trainer import state as state_lib

REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "BATCH_SIZE")


@gin.configurable
def opt_model(preset: str = "tiny", dtype: str = "float32", param_dtype: str = "float32",
              scan_layers: bool = True, remat_policy: str = "none", dropout: float | None = None,
              attention_dropout: float | None = None, attention_impl: str | None = None,
              max_position_embeddings: int | None = None, num_hidden_layers: int | None = None,
              hidden_size: int | None = None, num_attention_heads: int | None = None,
              ffn_dim: int | None = None, vocab_size: int | None = None) -> opt_lib.OPTConfig:
  """An OPTConfig from a preset ("tiny", "opt-125m" ... "opt-175b") with the given fields replaced."""
  overrides = dict(dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat_policy=remat_policy,
                   attention_impl=attention_impl)
  optional = dict(dropout=dropout, attention_dropout=attention_dropout,
                  max_position_embeddings=max_position_embeddings, num_hidden_layers=num_hidden_layers,
                  hidden_size=hidden_size, num_attention_heads=num_attention_heads, ffn_dim=ffn_dim,
                  vocab_size=vocab_size)
  overrides.update({k: v for k, v in optional.items() if v is not None})
  return opt_lib.OPTConfig.preset(preset, **overrides)


gin.external_configurable(loop.OptimizerArgs, name="OptimizerArgs")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs, as plain values (see `train_config` for each field)."""

  model_dir: str
  train_steps: int
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  model: opt_lib.OPTConfig
  catalog_dir: str | None = None
  initial_checkpoint_path: str | None = None
  optimizer: loop.OptimizerArgs = loop.OptimizerArgs()
  mesh_shape: tuple[int, int, int] = (-1, 1, 1)
  num_microbatches: int = 1
  sequence_parallel: bool = False
  lm_head_positions: int | None = None
  seed: int = 0
  pack: bool = True
  save_every: int = 1000
  keep_checkpoints: int | None = 3
  async_checkpoints: bool = True
  log_every: int = 10
  nan_policy: str = "skip"
  stop_at_step: int | None = None
  progress: bool = True
  tensorboard: bool = True
  prefetch_depth: int = 2
  compilation_cache_dir: str | None = None

  @property
  def seq_len(self) -> int:
    return sum(self.task_feature_lengths.values())


def _positive_int(name: str, value: object) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise gin_utils.GinConfigError(f"{name}: expected a positive integer, got {value!r}")
  return value


@gin.configurable("train")
def train_config(*,
                 model_dir: str = gin.REQUIRED,
                 train_steps: int = gin.REQUIRED,
                 mixture_or_task_name: str = gin.REQUIRED,
                 task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
                 batch_size: int = gin.REQUIRED,
                 model: opt_lib.OPTConfig = gin.REQUIRED,
                 catalog_dir: str | None = None,
                 initial_checkpoint_path: str | None = None,
                 optimizer: loop.OptimizerArgs = loop.OptimizerArgs(),
                 mesh_shape: Sequence[int] = (-1, 1, 1),
                 num_microbatches: int = 1,
                 sequence_parallel: bool = False,
                 lm_head_positions: int | None = None,
                 seed: int = 0,
                 pack: bool = True,
                 save_every: int = 1000,
                 keep_checkpoints: int | None = 3,
                 async_checkpoints: bool = True,
                 log_every: int = 10,
                 nan_policy: str = "skip",
                 stop_at_step: int | None = None,
                 progress: bool = True,
                 tensorboard: bool = True,
                 prefetch_depth: int = 2,
                 compilation_cache_dir: str | None = None) -> TrainConfig:
  """Checks the bound values and returns them as a TrainConfig; builds nothing (see trainer.loop.run).

  Raises:
    GinConfigError: naming the binding, for a value that cannot work (before anything is compiled).
  """
  lengths = dict(task_feature_lengths)
  if set(lengths) != {"inputs", "targets"}:
    raise gin_utils.GinConfigError(f"train.task_feature_lengths (TASK_FEATURE_LENGTHS): expected keys 'inputs' "
                                   f"and 'targets', got {lengths}")
  lengths = {k: _positive_int(f"TASK_FEATURE_LENGTHS['{k}']", v) for k, v in sorted(lengths.items())}
  if not isinstance(model, opt_lib.OPTConfig):
    raise gin_utils.GinConfigError(f"train.model: expected an OPTConfig (e.g. @opt_model()), got {model!r}")
  if sum(lengths.values()) > model.max_position_embeddings:
    raise gin_utils.GinConfigError(
        f"TASK_FEATURE_LENGTHS {lengths} add up to {sum(lengths.values())} tokens, more than the model's "
        f"max_position_embeddings={model.max_position_embeddings}")
  _positive_int("train.train_steps (TRAIN_STEPS)", train_steps)
  _positive_int("train.batch_size (BATCH_SIZE)", batch_size)
  _positive_int("train.num_microbatches", num_microbatches)
  _positive_int("train.save_every", save_every)
  _positive_int("train.log_every", log_every)
  if lm_head_positions is not None:
    _positive_int("train.lm_head_positions", lm_head_positions)
  if batch_size % num_microbatches:
    raise gin_utils.GinConfigError(f"train.batch_size {batch_size} is not divisible by "
                                   f"train.num_microbatches={num_microbatches}")
  if len(tuple(mesh_shape)) != 3:
    raise gin_utils.GinConfigError(f"train.mesh_shape: expected (data, fsdp, tensor), got {mesh_shape!r}")
  if nan_policy not in loop.NAN_POLICIES:
    raise gin_utils.GinConfigError(f"train.nan_policy: expected one of {loop.NAN_POLICIES}, got {nan_policy!r}")
  if not isinstance(optimizer, loop.OptimizerArgs):
    raise gin_utils.GinConfigError(f"train.optimizer: expected @OptimizerArgs(), got {optimizer!r}")
  if not 0 <= optimizer.warmup_steps < train_steps:
    raise gin_utils.GinConfigError(f"OptimizerArgs.warmup_steps={optimizer.warmup_steps} must be in "
                                   f"[0, TRAIN_STEPS={train_steps})")
  return TrainConfig(
      model_dir=str(model_dir), train_steps=train_steps, mixture_or_task_name=str(mixture_or_task_name),
      task_feature_lengths=lengths, batch_size=batch_size, model=model, catalog_dir=catalog_dir,
      initial_checkpoint_path=initial_checkpoint_path, optimizer=optimizer,
      mesh_shape=tuple(int(x) for x in mesh_shape), num_microbatches=num_microbatches,
      sequence_parallel=bool(sequence_parallel), lm_head_positions=lm_head_positions, seed=seed, pack=pack,
      save_every=save_every, keep_checkpoints=keep_checkpoints, async_checkpoints=async_checkpoints,
      log_every=log_every, nan_policy=nan_policy, stop_at_step=stop_at_step, progress=progress,
      tensorboard=tensorboard, prefetch_depth=prefetch_depth, compilation_cache_dir=compilation_cache_dir)


def configure(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: str = "") -> TrainConfig:
  """Parses gin files and bindings and returns the checked TrainConfig (raises GinConfigError)."""
  gin_utils.parse(gin_files, bindings, search_paths)
  gin_utils.check_bindings("train", train_config, REQUIRED_MACROS)
  try:
    return train_config()
  except gin_utils.GinConfigError:
    raise
  except (ValueError, TypeError) as e:  # e.g. OPTConfig's own checks, an unknown preset
    raise gin_utils.GinConfigError(f"gin configuration: {e}") from e


def run(config: TrainConfig) -> loop.Summary:
  """Registers the data, builds the per-process batch stream and trains (see trainer.loop.run)."""
  from optiml_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top

  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  if config.catalog_dir:
    registry.register_catalog(config.catalog_dir)

  def make_stream(per_process_batch: int, index: int, count: int) -> pipeline.BatchStream:
    return pipeline.BatchStream(config.mixture_or_task_name, "train", config.task_feature_lengths,
                                per_process_batch, config.seed, shard_index=index, shard_count=count,
                                pack=config.pack)

  return loop.run(
      config.model, make_stream, model_dir=config.model_dir, train_steps=config.train_steps,
      batch_size=config.batch_size, seq_len=config.seq_len, mesh_shape=config.mesh_shape,
      num_microbatches=config.num_microbatches, optimizer=config.optimizer, seed=config.seed,
      initial_checkpoint=config.initial_checkpoint_path, save_every=config.save_every,
      keep_checkpoints=config.keep_checkpoints, async_checkpoints=config.async_checkpoints,
      log_every=config.log_every, nan_policy=config.nan_policy, stop_at_step=config.stop_at_step,
      progress=config.progress, tensorboard=config.tensorboard, prefetch_depth=config.prefetch_depth,
      rules=rules_for(config), lm_head_positions=config.lm_head_positions)


def rules_for(config: TrainConfig) -> partitioning.LogicalRules:
  """The logical-axis rule table of a run: the one table, or its sequence-parallel variant."""
  return partitioning.SEQUENCE_PARALLEL_RULES if config.sequence_parallel else partitioning.LOGICAL_AXIS_RULES


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.train", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  gin_utils.add_gin_flags(parser)
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() (coordinator from the environment or flags)")
  parser.add_argument("--coordinator_address", help="host:port of process 0, for --multihost off a TPU pod")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  return parser.parse_args(gin_utils.rewrite_gin_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  try:
    config = configure(args.gin_file, args.gin_bindings, args.gin_search_paths)
  except gin_utils.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.multihost or args.coordinator_address:
    runtime.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  try:
    summary = run(config)
  except (loop.NonFiniteLossError, checkpointing.NonFiniteCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (state_lib.InitialCheckpointError, runtime.ResumeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(summary.describe())
    print(json.dumps(dataclasses.asdict(summary)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
