"""The settings of a training run, held once, in groups: data, model, optimizer, partitioning, checkpoints,
logging and the run itself.

Where it sits: the gin entry points (`optiml_jax.train`, `optiml_jax.plan`, through `optiml_jax.gin_registry`)
build one `TrainConfig` from the gin files; `trainer.loop.run(config, make_stream)` trains it and
`trainer.loop.build_program` compiles its step. Library code takes these plain frozen dataclasses and never
sees gin; nothing here imports gin or JAX (the planner reads a config before it chooses JAX's devices).

The groups follow t5x's trainer arguments; each gin configurable has the class's name, so a field and its
binding read the same (`DataArgs.batch_size = %BATCH_SIZE`):
  DataArgs          what the batch stream reads: mixture, feature lengths, global batch, packing;
  ModelArgs         the model's config (any family's: see `ModelConfig`) and the weights it starts from;
  OptimizerArgs     the recipe's AdamW, clipping and schedule (`trainer.optimizer.make_optimizer`);
  PartitioningArgs  how one step is laid out over devices and passes (mesh, microbatches, rule table, the
                    LM head's positions): none of them changes the update, only memory and speed;
  CheckpointArgs    MODEL_DIR and how often and how checkpoints are written;
  LoggingArgs       metrics.jsonl, TensorBoard and the progress bar;
  RunArgs           the run itself: steps, seed, NaN policy, an early stop, the compilation cache.

Each group checks its own fields where it is built (`__post_init__`) and `TrainConfig` what spans groups (the
rows fit the model's positions, packed rows hold no more segments than the model's packed attention takes, the
warmup ends before the run, the batch splits into microbatches), raising ConfigError that names the field as its
gin binding (e.g. `DataArgs.batch_size`) and what was expected. What needs the devices (the batch over data x
fsdp, the number of processes) is checked by `trainer.loop`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

NAN_POLICIES = ("skip", "stop")
NONFINITE_GUARDS = ("auto", "cond", "select")  # trainer/step.py's, without importing JAX here
ON_BAD_CHECKPOINT = ("skip", "stop")  # CheckpointArgs.on_bad_checkpoint (trainer/checkpointing.py)
ON_SAVE_ERROR = ("stop", "retry")  # CheckpointArgs.on_save_error
FEATURES = ("inputs", "targets")  # the keys of TASK_FEATURE_LENGTHS (decoder-only, t5x's names)


class ConfigError(ValueError):
  """A training setting that cannot work; the message names the field (its gin binding) and what was expected."""


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_int(field: str, value: Any, *, optional: bool = False) -> None:
  if optional and value is None:
    return
  if not _is_int(value) or value < 1:
    raise ConfigError(f"{field}: expected a positive integer{' or None' if optional else ''}, got {value!r}")


def _non_negative(field: str, value: Any, *, integer: bool = False) -> None:
  if not (_is_int(value) if integer else _is_number(value)) or value < 0:
    raise ConfigError(f"{field}: expected a non-negative {'integer' if integer else 'number'}, got {value!r}")


def _text(field: str, value: Any, *, optional: bool = False) -> None:
  if optional and value is None:
    return
  if not isinstance(value, str) or not value:
    raise ConfigError(f"{field}: expected a non-empty string{' or None' if optional else ''}, got {value!r}")


def _flag(field: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ConfigError(f"{field}: expected True or False, got {value!r}")


@runtime_checkable
class ModelConfig(Protocol):
  """What the trainer needs of a model config, whatever the family (OPT's `models.opt_config.OPTConfig` has it).

  A family's config must also be a frozen (hashable) dataclass: compiled steps are cached by it. Its fields
  are read-only here (properties), as a frozen dataclass's are.
  """

  @property
  def max_position_embeddings(self) -> int:
    """The longest row the model can read."""

  @property
  def vocab_size(self) -> int:
    """Embedding rows: must cover every id of the tokenizer the data uses."""

  @property
  def num_hidden_layers(self) -> int:
    """Decoder layers."""

  @property
  def dtype(self) -> str:
    """Compute dtype of activations."""

  @property
  def scan_layers(self) -> bool:
    """One scanned layer stack (True) or unrolled layers."""

  @property
  def remat_policy(self) -> str:
    """What the backward pass recomputes (models.config_checks.REMAT_POLICIES)."""

  @property
  def attention_impl(self) -> str:
    """Which attention kernel runs (models.config_checks.ATTENTION_IMPLEMENTATIONS)."""

  @property
  def dropout(self) -> float:
    """> 0 turns dropout on in training (with attention_dropout)."""

  @property
  def attention_dropout(self) -> float:
    """Dropout on the attention probabilities."""

  def num_params(self) -> int:
    """Parameter count."""

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token at rows of `seq_len` (for MFU)."""

  def to_hf(self) -> dict[str, Any]:
    """The Hugging Face config.json written to MODEL_DIR."""

  def __hash__(self) -> int:
    """A frozen dataclass's: `trainer.loop.build_program` caches compiled steps by the config."""


@dataclasses.dataclass(frozen=True)
class DataArgs:
  """The batch stream: which seqio mixture or task, how long its rows are, how many per step."""

  mixture_or_task_name: str  # the Task or Mixture to train on: seqio's, or the cache catalog's (MIXTURE_OR_TASK_NAME)
  # {'inputs': n, 'targets': m}: a row holds n + m tokens, prompts cut from the left (TASK_FEATURE_LENGTHS)
  task_feature_lengths: Mapping[str, int] = dataclasses.field(hash=False)
  batch_size: int  # rows per step over all processes; each feeds batch_size / processes (BATCH_SIZE)
  catalog_dir: str | None = None  # bench catalog whose tasks and mixtures to register first (CATALOG_DIR)
  pack: bool = True  # several whole examples per row, each attending only to itself
  # at most this many examples per packed row (a row reaching it is complete, padded if need be): the static bound
  # the packed-layout (THD) attention kernel needs, at least ModelArgs.config.packed_attention_segments there;
  # None: as many as fit
  max_segments_per_row: int | None = None
  prefetch_depth: int = 2  # batches prepared ahead in a background thread while the device steps
  # the Hugging Face tokenizer folder the tasks tokenize with: the model's own (TOKENIZER_DIR, e.g. the converted
  # model folder); None: OPT's, shipped in the package
  tokenizer_dir: str | None = None
  # a pre-tokenized bench cache (CACHE_DIR, `python -m optiml_jax.bench cache`): the batches are drawn by index
  # from its shards alone, without seqio or TensorFlow (fast start, resume without replay; the cache holds its
  # catalog, so catalog_dir may be None); None: the registered seqio Tasks format on the fly
  cache_dir: str | None = None

  def __post_init__(self):
    _text("DataArgs.mixture_or_task_name", self.mixture_or_task_name)
    lengths = self.task_feature_lengths
    if not isinstance(lengths, Mapping) or set(lengths) != set(FEATURES):
      raise ConfigError(f"DataArgs.task_feature_lengths: expected keys 'inputs' and 'targets', got {lengths!r}")
    for key in FEATURES:
      _positive_int(f"DataArgs.task_feature_lengths['{key}']", lengths[key])
    object.__setattr__(self, "task_feature_lengths", {key: int(lengths[key]) for key in FEATURES})
    _positive_int("DataArgs.batch_size", self.batch_size)
    _text("DataArgs.catalog_dir", self.catalog_dir, optional=True)
    _flag("DataArgs.pack", self.pack)
    _positive_int("DataArgs.max_segments_per_row", self.max_segments_per_row, optional=True)
    _positive_int("DataArgs.prefetch_depth", self.prefetch_depth)
    _text("DataArgs.tokenizer_dir", self.tokenizer_dir, optional=True)
    _text("DataArgs.cache_dir", self.cache_dir, optional=True)

  @property
  def seq_len(self) -> int:
    """Tokens per row: inputs + targets."""
    return sum(self.task_feature_lengths.values())


@dataclasses.dataclass(frozen=True)
class ModelArgs:
  """The model to train and the weights it starts from."""

  config: ModelConfig  # the architecture and how to compute (e.g. @model_config() in gin)
  # Hugging Face or Orbax weights to start from (ignored once MODEL_DIR has a checkpoint); None: random init
  initial_checkpoint_path: str | None = None  # INITIAL_CHECKPOINT_PATH

  def __post_init__(self):
    if not isinstance(self.config, ModelConfig):
      raise ConfigError(f"ModelArgs.config: expected a model config, a frozen dataclass with ModelConfig's members "
                        f"(e.g. @model_config()), got {self.config!r}")
    _text("ModelArgs.initial_checkpoint_path", self.initial_checkpoint_path, optional=True)


@dataclasses.dataclass(frozen=True)
class OptimizerArgs:
  """The recipe's AdamW with global-norm clipping and warmup + linear decay (`trainer.optimizer`)."""

  learning_rate: float = 5e-5  # peak learning rate
  warmup_steps: int = 60  # linear warmup from 0; must end before RunArgs.train_steps
  end_learning_rate: float = 0.0  # the linear decay reaches it at the last step
  b1: float = 0.9  # Adam beta1
  b2: float = 0.95  # Adam beta2
  eps: float = 1e-8  # Adam epsilon
  weight_decay: float = 0.1  # decoupled weight decay
  decay_matrices_only: bool = False  # True: no decay of biases and layer norms (metaseq decayed everything)
  clip_norm: float | None = 1.0  # clip gradients to this global norm; None or 0: no clipping

  def __post_init__(self):
    _non_negative("OptimizerArgs.learning_rate", self.learning_rate)
    _non_negative("OptimizerArgs.warmup_steps", self.warmup_steps, integer=True)
    _non_negative("OptimizerArgs.end_learning_rate", self.end_learning_rate)
    for name in ("b1", "b2"):
      value = getattr(self, name)
      if not _is_number(value) or not 0 <= value < 1:
        raise ConfigError(f"OptimizerArgs.{name}: expected a number in [0, 1), got {value!r}")
    if not _is_number(self.eps) or self.eps <= 0:
      raise ConfigError(f"OptimizerArgs.eps: expected a positive number, got {self.eps!r}")
    _non_negative("OptimizerArgs.weight_decay", self.weight_decay)
    _flag("OptimizerArgs.decay_matrices_only", self.decay_matrices_only)
    if self.clip_norm is not None:
      _non_negative("OptimizerArgs.clip_norm", self.clip_norm)


@dataclasses.dataclass(frozen=True)
class PartitioningArgs:
  """How one step is laid out over devices and passes; none of these changes the update, only memory and speed."""

  mesh_shape: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor) device counts; one -1 takes the rest
  num_microbatches: int = 1  # gradient accumulation: the batch in this many passes, one update
  sequence_parallel: bool = False  # also shard the residual stream over "tensor" (the rule table's variant)
  lm_head_positions: int | None = None  # LM head only at each row's first k loss positions when they fit; None: all
  loss_chunk_size: int | None = None  # LM head and loss this many positions at a time (no whole logits); None: one pass
  padding_mask: bool = True  # False: padding keys are not masked (rows end in padding: exact at every loss position)
  nonfinite_guard: str = "auto"  # how a non-finite step keeps the state: 'cond', 'select', 'auto' (trainer/step.py)

  def __post_init__(self):
    shape = self.mesh_shape
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(_is_int(s) for s in shape) or
        any(s == 0 or s < -1 for s in shape) or list(shape).count(-1) > 1):
      raise ConfigError(f"PartitioningArgs.mesh_shape: expected (data, fsdp, tensor), positive integers of which "
                        f"one may be -1, got {shape!r}")
    object.__setattr__(self, "mesh_shape", tuple(int(s) for s in shape))
    _positive_int("PartitioningArgs.num_microbatches", self.num_microbatches)
    _flag("PartitioningArgs.sequence_parallel", self.sequence_parallel)
    _positive_int("PartitioningArgs.lm_head_positions", self.lm_head_positions, optional=True)
    _positive_int("PartitioningArgs.loss_chunk_size", self.loss_chunk_size, optional=True)
    _flag("PartitioningArgs.padding_mask", self.padding_mask)
    if self.nonfinite_guard not in NONFINITE_GUARDS:
      raise ConfigError(f"PartitioningArgs.nonfinite_guard: expected one of {NONFINITE_GUARDS}, got "
                        f"{self.nonfinite_guard!r}")


@dataclasses.dataclass(frozen=True)
class CheckpointArgs:
  """Where the run writes and how often it checkpoints (also at the end and on SIGTERM)."""

  # checkpoints, config.json, metrics.jsonl, TensorBoard, loss.png; a rerun resumes here (MODEL_DIR). A relative local
  # path is made absolute here (against the working directory), as Orbax needs; a bucket (gs://...) is kept as given
  model_dir: str
  save_every: int = 1000  # a checkpoint every this many steps
  keep_checkpoints: int | None = 3  # the newest this many are kept; None: all
  async_checkpoints: bool = True  # write in the background while training goes on
  # A newest step that does not restore (damaged, uncommitted): 'skip' (warn, set it aside, resume from the newest
  # step that restores) or 'stop' (exit code 1, nothing moved)
  on_bad_checkpoint: str = "skip"
  # A save that fails (disk full, write error): 'stop' (exit code 1 naming step and path) or 'retry' (warn, train on,
  # save again at the next save step; the run still exits 1 if its last save fails)
  on_save_error: str = "stop"

  def __post_init__(self):
    _text("CheckpointArgs.model_dir", self.model_dir)
    if "://" not in self.model_dir:  # a local path (etils.epath reads a URL such as gs://bucket/run as a bucket)
      object.__setattr__(self, "model_dir", os.path.abspath(self.model_dir))
    _positive_int("CheckpointArgs.save_every", self.save_every)
    _positive_int("CheckpointArgs.keep_checkpoints", self.keep_checkpoints, optional=True)
    _flag("CheckpointArgs.async_checkpoints", self.async_checkpoints)
    if self.on_bad_checkpoint not in ON_BAD_CHECKPOINT:
      raise ConfigError(f"CheckpointArgs.on_bad_checkpoint: expected one of {ON_BAD_CHECKPOINT}, got "
                        f"{self.on_bad_checkpoint!r}")
    if self.on_save_error not in ON_SAVE_ERROR:
      raise ConfigError(f"CheckpointArgs.on_save_error: expected one of {ON_SAVE_ERROR}, got {self.on_save_error!r}")


@dataclasses.dataclass(frozen=True)
class LoggingArgs:
  """What the run reports while it trains."""

  log_every: int = 10  # a metrics.jsonl line (loss, lr, grad norm, tokens/s, MFU) every this many steps
  progress: bool = True  # the tqdm bar on process 0
  tensorboard: bool = True  # TensorBoard events under MODEL_DIR/tensorboard

  def __post_init__(self):
    _positive_int("LoggingArgs.log_every", self.log_every)
    _flag("LoggingArgs.progress", self.progress)
    _flag("LoggingArgs.tensorboard", self.tensorboard)


@dataclasses.dataclass(frozen=True)
class RunArgs:
  """The run itself."""

  train_steps: int  # updates in the whole run; the schedule reaches its end here (TRAIN_STEPS)
  seed: int = 0  # data order, initialisation and dropout; the same on every restart
  nan_policy: str = "skip"  # a non-finite step: 'skip' (weights unchanged, go on) or 'stop' (exit code 1)
  stop_at_step: int | None = None  # end this invocation at this step (checkpointed) without changing the schedule
  compilation_cache_dir: str | None = None  # JAX's persistent compilation cache, so a rerun starts faster
  # XLA flags for this run (e.g. ('--xla_gpu_enable_latency_hiding_scheduler=true',)), added to XLA_FLAGS before
  # JAX starts its backend (`runtime.apply_xla_flags`; `python -m optiml_jax.train` does it first)
  xla_flags: Sequence[str] = ()

  def __post_init__(self):
    _positive_int("RunArgs.train_steps", self.train_steps)
    if not _is_int(self.seed):
      raise ConfigError(f"RunArgs.seed: expected an integer, got {self.seed!r}")
    if self.nan_policy not in NAN_POLICIES:
      raise ConfigError(f"RunArgs.nan_policy: expected one of {NAN_POLICIES}, got {self.nan_policy!r}")
    _positive_int("RunArgs.stop_at_step", self.stop_at_step, optional=True)
    _text("RunArgs.compilation_cache_dir", self.compilation_cache_dir, optional=True)
    flags = self.xla_flags
    if isinstance(flags, str) or not all(isinstance(f, str) and f.startswith("--") and " " not in f for f in flags):
      raise ConfigError(
          f"RunArgs.xla_flags: expected a list of XLA flags such as '--xla_gpu_enable_triton_gemm=false', "
          f"got {flags!r}")
    object.__setattr__(self, "xla_flags", tuple(flags))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run needs: one value of each group."""

  data: DataArgs
  model: ModelArgs
  checkpoint: CheckpointArgs
  run: RunArgs
  optimizer: OptimizerArgs = OptimizerArgs()
  partitioning: PartitioningArgs = PartitioningArgs()
  logging: LoggingArgs = LoggingArgs()

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, _GROUPS[field.name]):
        raise ConfigError(f"TrainConfig.{field.name}: expected a {_GROUPS[field.name].__name__}, got {value!r}")
    model = self.model.config
    if self.seq_len > model.max_position_embeddings:
      raise ConfigError(
          f"DataArgs.task_feature_lengths: {self.data.task_feature_lengths} add up to {self.seq_len} tokens, more "
          f"than the model's max_position_embeddings={model.max_position_embeddings}")
    if self.optimizer.warmup_steps >= self.run.train_steps:
      raise ConfigError(f"OptimizerArgs.warmup_steps: expected fewer than RunArgs.train_steps="
                        f"{self.run.train_steps}, got {self.optimizer.warmup_steps}")
    segments = getattr(model, "packed_attention_segments", 0) or 0  # the model's static segments per row; 0: none
    if segments > 0 and self.data.pack:
      cap = self.data.max_segments_per_row
      if cap is None or cap > segments:
        raise ConfigError(f"DataArgs.max_segments_per_row: the model's packed attention takes at most "
                          f"packed_attention_segments={segments} segments per row (ModelArgs.config), but packed rows "
                          f"may hold {'any number' if cap is None else cap}; set DataArgs.max_segments_per_row to "
                          f"{segments} (or fewer), or DataArgs.pack = False")
    if self.data.batch_size % self.partitioning.num_microbatches:
      raise ConfigError(f"DataArgs.batch_size: {self.data.batch_size} rows do not split into "
                        f"PartitioningArgs.num_microbatches={self.partitioning.num_microbatches} equal microbatches")

  @property
  def seq_len(self) -> int:
    """Tokens per row (DataArgs.seq_len)."""
    return self.data.seq_len


_GROUPS = {
    "data": DataArgs,
    "model": ModelArgs,
    "checkpoint": CheckpointArgs,
    "run": RunArgs,
    "optimizer": OptimizerArgs,
    "partitioning": PartitioningArgs,
    "logging": LoggingArgs
}
GROUPS = tuple(_GROUPS.items())  # (TrainConfig field, group class), in TrainConfig's order
