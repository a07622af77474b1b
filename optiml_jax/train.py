r"""Entry point: `python -m optiml_jax.train --gin_file=FILE [--gin_file=...] [--gin.KEY=VALUE ...]` (t5x flags).

A thin shell around the library: parse the flags and the gin files, build the run's
`trainer.config.TrainConfig` (`gin_registry.configure_training`: every group of settings bound by gin under its
class name, e.g. `DataArgs.batch_size`, `PartitioningArgs.mesh_shape`, `OptimizerArgs.learning_rate`), make the
batch stream (the catalog's seqio Tasks; or, with CACHE_DIR, the pre-tokenized cache alone, which needs neither
seqio nor TensorFlow) and hand both to `trainer.loop.run`. A configuration error (an
unknown binding, a gin file that does not parse, a macro set by a flag that no gin file uses, a macro left unset,
a value a group refuses, a feature length longer than the model's positions, a PartitioningArgs.mesh_shape that
does not fit the devices, a MODEL_DIR that is a file or another model's checkpoint, a model that is not the one
MODEL_DIR or the initial checkpoint holds (`trainer.preflight`), a catalog that is missing or lists a source file
that is gone, `--multihost` without its coordinator) ends the command with exit code 2 before anything is
compiled, naming the binding or flag. A relative MODEL_DIR is made absolute against the working directory.

Macros, with t5x's names: MODEL_DIR, TRAIN_STEPS, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, BATCH_SIZE,
INITIAL_CHECKPOINT_PATH, CATALOG_DIR (the bench catalog whose tasks to register) and CACHE_DIR (its pre-tokenized
cache, `python -m optiml_jax.bench cache`: fast start, resume without replay, no TensorFlow or seqio needed; the
cache carries its catalog, so CATALOG_DIR may be None). The model preset is
chosen by including one of gin/models/opt_<size>.gin (or `--gin.model_config.preset='opt-1.3b'`).

    python -m optiml_jax.train --gin_file=gin/optiml_30b.gin --gin.MODEL_DIR=gs://bucket/run \
        --gin.CATALOG_DIR=/data/optiml_bench --gin.INITIAL_CHECKPOINT_PATH=/ckpt/opt-30b

Multi-host: run the same command on every host; with `--multihost` (or `--coordinator_address`) it calls
`jax.distributed.initialize()` first (on a Cloud TPU pod the coordinator comes from the environment). Each
process then feeds its own share of every batch. Restarting the same command resumes from the newest
checkpoint in MODEL_DIR; SIGTERM saves one at the current step and exits with code 0, a first Ctrl-C (SIGINT)
the same with code 130 (a second one stops at once, without a checkpoint).

Storage faults (docs/training.md): a damaged or uncommitted newest checkpoint is reported in a few lines and
set aside, and the run resumes from the newest step that restores (`CheckpointArgs.on_bad_checkpoint='stop'`
exits 1 instead); a save that fails (a full disk, a write error) exits 1 naming the step and its path
(`CheckpointArgs.on_save_error='retry'` trains on and saves again at the next save step). Tracebacks of the
libraries behind such faults go to a log file (`--log_file`, by default under $TMPDIR/optiml_jax/), not to the
screen; `--debug` shows them there too (`cli_logging`). An unexpected error still prints its traceback.

Exit codes: 0 done (or preempted: checkpointed, or during start-up with nothing to save), 1 training stopped
(non-finite loss with nan_policy='stop', an unusable initial checkpoint or checkpoint to resume, a failed save), 2
configuration or usage error, 130 stopped by Ctrl-C after its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

import jax

from optiml_jax import cli_logging
from optiml_jax import gin_registry
from optiml_jax import gin_utils
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import preflight
from optiml_jax.trainer import runtime
from optiml_jax.trainer import state as state_lib

# Catalog task formats whose `path` names a dataset, not a file (`data.sources.reopen`).
NON_FILE_FORMATS = ("tfds",)


def run(config: config_lib.TrainConfig) -> loop.Summary:
  """Builds each process's batch stream and trains (`loop.run`).

  With `config.data.cache_dir`, the batches come from the bench cache alone (`cached_streams`): neither seqio nor
  TensorFlow is imported. Otherwise the catalog is registered as seqio Tasks with the tokenizer of
  `config.data.tokenizer_dir` (OPT's when unset) and the batches come from `pipeline.BatchStream`
  (`registered_streams`). Either way the model's embedding must cover the tokenizer's ids (a `ConfigError` says so
  before anything compiles). MODEL_DIR and the checkpoints' models are checked first (`trainer.preflight`), then the
  mesh of PartitioningArgs.mesh_shape and the batch over it (`loop.check_devices`)."""
  preflight.check(config)  # cheap (a few file reads): before the catalog is registered
  loop.check_devices(config)  # the mesh and the batch over it, also before the catalog is registered
  cache_dir = config.data.cache_dir
  make_stream = cached_streams(config, cache_dir) if cache_dir else registered_streams(config)
  return loop.run(config, make_stream)


def cached_streams(config: config_lib.TrainConfig, cache_dir: str) -> loop.StreamFactory:
  """The streams of a run from `cache_dir` (CACHE_DIR), without seqio or TensorFlow: `cached_stream.CachedBatchStream`s
  of the mixture or Task the cache's catalog (or CATALOG_DIR's, when set) defines.

  Checks first, each a `ConfigError` naming the binding: TOKENIZER_DIR (OPT's when unset) is the tokenizer the cache
  was built with (their fingerprints, `vocab_info.folder_fingerprint`), the cache recorded that tokenizer's BOS,
  EOS and vocabulary size (`cache.require_tokenizer`: an older cache is named with the command that records them),
  the model's vocab_size covers that size, and every task of the mixture has a training shard."""
  from optiml_jax.data import cache  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import cached_stream  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import special_tokens  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import vocab_info  # pylint: disable=g-import-not-at-top

  data = config.data
  tokenizer_dir = data.tokenizer_dir or special_tokens.OPT_TOKENIZER_DIR
  try:
    fingerprint = vocab_info.folder_fingerprint(tokenizer_dir)
  except (OSError, ValueError) as e:  # a missing folder, a folder without tokenizer files
    raise config_lib.ConfigError(f"DataArgs.tokenizer_dir (TOKENIZER_DIR): {e}") from e
  try:
    manifest = cache.read_manifest(cache_dir)
    cache.check_vocabulary(manifest, fingerprint, cache_dir)
    tokenizer = cache.require_tokenizer(manifest, cache_dir)
    tasks = cached_stream.cache_tasks(cache_dir, data.mixture_or_task_name, data.catalog_dir)
  except cache.CacheError as e:
    raise config_lib.ConfigError(f"DataArgs.cache_dir (CACHE_DIR): {e}") from e
  except FileNotFoundError as e:  # no catalog there (with CACHE_DIR, CATALOG_DIR may be None: the cache holds one)
    where = "DataArgs.catalog_dir (CATALOG_DIR)" if data.catalog_dir else "DataArgs.cache_dir (CACHE_DIR)"
    raise config_lib.ConfigError(f"{where}: {e}") from e
  except ValueError as e:  # not a mixture or training task of the catalog
    raise config_lib.ConfigError(f"DataArgs.mixture_or_task_name (MIXTURE_OR_TASK_NAME): {e}") from e
  try:  # The model must embed every id the data can hold: said now, not as a gather out of range later.
    vocab_info.check_covers(config.model.config.vocab_size, tokenizer.vocab_size, f"the tokenizer in {tokenizer_dir}",
                            f"the model config ({type(config.model.config).__name__})")
  except ValueError as e:
    raise config_lib.ConfigError(f"{data.mixture_or_task_name}: {e}") from e

  def make_stream(block_rows: int, index: int, count: int) -> loop.ResumableStream:
    return cached_stream.CachedBatchStream(data.mixture_or_task_name, data.task_feature_lengths, block_rows,
                                           config.run.seed, cache_dir=cache_dir, shard_index=index, shard_count=count,
                                           pack=data.pack, max_segments_per_row=data.max_segments_per_row, tasks=tasks)

  return make_stream


def check_catalog(catalog_dir: str) -> None:
  """Raises ConfigError naming DataArgs.catalog_dir (CATALOG_DIR) when `catalog_dir` holds no readable catalog, or
  when a source file its tasks read is gone (the first ones named): said now, not as a TensorFlow traceback once
  the step has compiled. Datasets that are no file (TFDS tasks) are left to their reader."""
  from optiml_jax.data import catalog as catalog_lib  # pylint: disable=g-import-not-at-top

  where = "DataArgs.catalog_dir (CATALOG_DIR)"
  try:
    bench = catalog_lib.load(catalog_dir)
  except (OSError, ValueError) as e:  # no catalog.json there, not a catalog's JSON
    raise config_lib.ConfigError(f"{where}: {e}") from e
  missing = [t.path for t in bench.tasks if t.format not in NON_FILE_FORMATS and not os.path.exists(t.path)]
  if missing:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise config_lib.ConfigError(
        f"{where}: {catalog_dir}: {len(missing)} of its {len(bench.tasks)} tasks' source files are missing: {shown}; "
        "restore them, or rebuild the catalog from the sources at hand (python -m optiml_jax.bench build)")


def registered_streams(config: config_lib.TrainConfig) -> loop.StreamFactory:
  """The streams of a run from the catalog's source files: registers it (CATALOG_DIR, when set) as seqio Tasks with
  the tokenizer of TOKENIZER_DIR (OPT's when unset), checks that the model's embedding covers that vocabulary and
  returns a factory of `pipeline.BatchStream`s. A missing or unreadable catalog, or a task source file that is
  gone, is a ConfigError naming CATALOG_DIR (`check_catalog`)."""
  import seqio  # pylint: disable=g-import-not-at-top

  from optiml_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top

  data = config.data
  try:
    vocabulary = registry.default_vocabulary(data.tokenizer_dir)
  except (OSError, ValueError) as e:  # a missing folder, a folder without tokenizer files, no EOS
    raise config_lib.ConfigError(f"DataArgs.tokenizer_dir (TOKENIZER_DIR): {e}") from e
  if data.catalog_dir:
    check_catalog(data.catalog_dir)
    try:
      registry.register_catalog(data.catalog_dir, vocabulary)
    except (OSError, ValueError) as e:  # the catalog, or an entry of it, that cannot be registered
      raise config_lib.ConfigError(f"DataArgs.catalog_dir (CATALOG_DIR): {e}") from e
  try:  # The model must embed every id the data can hold: said now, not as a gather out of range later.
    provider = seqio.get_mixture_or_task(data.mixture_or_task_name)
    vocab.check_vocab_covers(config.model.config.vocab_size, provider.output_features["targets"].vocabulary,
                             f"the model config ({type(config.model.config).__name__})")
  except ValueError as e:
    raise config_lib.ConfigError(f"{data.mixture_or_task_name}: {e}") from e

  def make_stream(block_rows: int, index: int, count: int) -> loop.ResumableStream:
    return pipeline.BatchStream(data.mixture_or_task_name, "train", data.task_feature_lengths, block_rows,
                                config.run.seed, shard_index=index, shard_count=count, pack=data.pack,
                                max_segments_per_row=data.max_segments_per_row)

  return make_stream


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.train", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  gin_utils.add_gin_flags(parser)
  parser.add_argument("--multihost", action="store_true",
                      help="call jax.distributed.initialize() (coordinator from the environment or flags)")
  parser.add_argument("--coordinator_address", help="host:port of process 0, for --multihost off a TPU pod")
  parser.add_argument("--num_processes", type=int)
  parser.add_argument("--process_id", type=int)
  parser.add_argument("--log_file", default=None,
                      help="where library tracebacks go (default: $TMPDIR/optiml_jax/train-<time>-<pid>.log)")
  parser.add_argument("--debug", action="store_true", help="print library tracebacks on the screen too")
  return parser.parse_args(gin_utils.rewrite_gin_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  with cli_logging.session("train", args.log_file, args.debug) as log:
    return _main(args, log)


def _main(args: argparse.Namespace, log: cli_logging.Session) -> int:
  try:
    config = gin_registry.configure_training(args.gin_file, args.gin_bindings, args.gin_search_paths)
  except gin_utils.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    runtime.apply_xla_flags(config.run.xla_flags)  # before anything starts JAX's backend
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.multihost or args.coordinator_address:
    try:
      runtime.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as e:  # e.g. off a Cloud TPU pod, no coordinator in the environment
      print(
          f"error: --multihost: jax.distributed.initialize(): {e}; off a Cloud TPU pod give --coordinator_address="
          "HOST:PORT (process 0's), --num_processes and --process_id", file=sys.stderr)
      return 2
  try:
    summary = run(config)
  except config_lib.ConfigError as e:  # MODEL_DIR, the checkpoints' models, the catalog, the batch over the devices
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (loop.NonFiniteLossError, checkpointing.NonFiniteCheckpointError, state_lib.InitialCheckpointError,
          runtime.ResumeError, checkpointing.CheckpointError) as e:
    log.report(e)
    return 1
  if jax.process_index() == 0:
    print(summary.describe())
    print(json.dumps(dataclasses.asdict(summary)))
  return 130 if summary.interrupted else 0  # Ctrl-C: checkpointed, but what follows `&&` should not run


if __name__ == "__main__":
  cli_logging.run_quietly(main)
