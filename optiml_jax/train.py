r"""Entry point: `python -m optiml_jax.train --gin_file=FILE [--gin.KEY=VALUE ...]` (t5x flags).

The only place training meets gin. `train(...)` is configured by the gin files (every binding commented in
gin/); it registers the catalog's seqio tasks, builds the batch stream and hands plain values to
`trainer.loop.run`. Run the same command on every host of a pod: with `--multihost` (or the usual
JAX_COORDINATOR_ADDRESS / cloud TPU environment) it calls `jax.distributed.initialize()` first.

Macros, with t5x's names: MODEL_DIR, TRAIN_STEPS, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE,
INITIAL_CHECKPOINT_PATH, and CATALOG_DIR (the bench catalog whose tasks to register).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any, Mapping, Sequence

import gin
import jax

from optiml_jax import gin_utils
from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import loop

REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "BATCH_SIZE")


@gin.configurable
def opt_model(preset: str = "tiny", dtype: str = "float32", param_dtype: str = "float32",
              scan_layers: bool = True, remat_policy: str = "none", dropout: float | None = None,
              attention_dropout: float | None = None, attention_impl: str | None = None,
              max_position_embeddings: int | None = None, num_hidden_layers: int | None = None,
              hidden_size: int | None = None, num_attention_heads: int | None = None,
              ffn_dim: int | None = None) -> opt_lib.OPTConfig:
  """An OPTConfig from a preset ("tiny", "opt-125m" ... "opt-175b") with the given fields replaced."""
  overrides = dict(dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat_policy=remat_policy,
                   attention_impl=attention_impl)
  optional = dict(dropout=dropout, attention_dropout=attention_dropout,
                  max_position_embeddings=max_position_embeddings, num_hidden_layers=num_hidden_layers,
                  hidden_size=hidden_size, num_attention_heads=num_attention_heads, ffn_dim=ffn_dim)
  overrides.update({k: v for k, v in optional.items() if v is not None})
  return opt_lib.OPTConfig.preset(preset, **overrides)


gin.external_configurable(loop.OptimizerArgs, name="OptimizerArgs")


@gin.configurable
def train(*,
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
          seed: int = 0,
          pack: bool = True,
          save_every: int = 1000,
          keep_checkpoints: int | None = 3,
          async_checkpoints: bool = True,
          log_every: int = 10,
          nan_policy: str = "skip",
          stop_at_step: int | None = None,
          progress: bool = True) -> loop.Summary:
  """Trains `model` on `mixture_or_task_name` (see trainer.loop.run for the arguments)."""
  from optiml_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top

  if catalog_dir:
    registry.register_catalog(catalog_dir)
  lengths = {k: int(v) for k, v in dict(task_feature_lengths).items()}
  seq_len = sum(lengths.values())
  if seq_len > model.max_position_embeddings:
    raise ValueError(f"TASK_FEATURE_LENGTHS {lengths} add up to {seq_len} tokens, more than the model's "
                     f"max_position_embeddings={model.max_position_embeddings}")

  def make_stream(per_process_batch, index, count):
    return pipeline.BatchStream(mixture_or_task_name, "train", lengths, per_process_batch, seed,
                                shard_index=index, shard_count=count, pack=pack)

  return loop.run(model, make_stream, model_dir=model_dir, train_steps=train_steps, batch_size=batch_size,
                  seq_len=seq_len, mesh_shape=tuple(mesh_shape), num_microbatches=num_microbatches,
                  optimizer=optimizer, seed=seed, initial_checkpoint=initial_checkpoint_path,
                  save_every=save_every, keep_checkpoints=keep_checkpoints, async_checkpoints=async_checkpoints,
                  log_every=log_every, nan_policy=nan_policy, stop_at_step=stop_at_step, progress=progress)


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
  if args.multihost or args.coordinator_address:
    jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)
  try:
    gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
    gin_utils.check_required_macros(REQUIRED_MACROS)
  except gin_utils.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    summary = train()
  except loop.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    print(json.dumps(dataclasses.asdict(summary), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
