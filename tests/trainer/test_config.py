"""trainer/config.py: each group refuses a value that cannot work, naming the field (its gin binding); the
TrainConfig checks what spans groups; configs are frozen and hashable (compiled steps are cached by them)."""

import dataclasses

import pytest

from optiml_jax.models import opt_config
from optiml_jax.trainer import config as config_lib

TINY = opt_config.OPTConfig.preset("tiny", max_position_embeddings=64)


def _data(**kwargs):
  return config_lib.DataArgs(**{
      "mixture_or_task_name": "mix",
      "task_feature_lengths": {
          "inputs": 24,
          "targets": 8
      },
      "batch_size": 8,
      **kwargs
  })


def _config(**groups):
  return config_lib.TrainConfig(
      **{
          "data": _data(),
          "model": config_lib.ModelArgs(TINY),
          "checkpoint": config_lib.CheckpointArgs("/runs/x"),
          "run": config_lib.RunArgs(train_steps=100),
          **groups
      })


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: _data(mixture_or_task_name=""), "DataArgs.mixture_or_task_name: expected a non-empty string"),
        (lambda: _data(task_feature_lengths={"inputs": 8}), "DataArgs.task_feature_lengths: expected keys"),
        (lambda: _data(task_feature_lengths={
            "inputs": 8,
            "targets": -1
        }), "DataArgs.task_feature_lengths['targets']"),
        (lambda: _data(batch_size=0), "DataArgs.batch_size: expected a positive integer, got 0"),
        (lambda: _data(batch_size=True), "DataArgs.batch_size: expected a positive integer, got True"),
        (lambda: _data(pack="yes"), "DataArgs.pack: expected True or False"),
        (lambda: _data(prefetch_depth=0), "DataArgs.prefetch_depth"),
        (lambda: _data(max_segments_per_row=0), "DataArgs.max_segments_per_row: expected a positive integer or None"),
        (lambda: _data(max_segments_per_row=True), "DataArgs.max_segments_per_row: expected a positive integer"),
        (lambda: _data(max_segments_per_row=2.0), "DataArgs.max_segments_per_row: expected a positive integer"),
        (lambda: config_lib.ModelArgs({"preset": "tiny"}), "ModelArgs.config: expected a model config"),
        (lambda: config_lib.ModelArgs(TINY, initial_checkpoint_path=""), "ModelArgs.initial_checkpoint_path"),
        (lambda: config_lib.OptimizerArgs(learning_rate=-1.0), "OptimizerArgs.learning_rate: expected a non-negative"),
        (lambda: config_lib.OptimizerArgs(warmup_steps=1.5),
         "OptimizerArgs.warmup_steps: expected a non-negative integer"),
        (lambda: config_lib.OptimizerArgs(b2=1.0), "OptimizerArgs.b2: expected a number in [0, 1)"),
        (lambda: config_lib.OptimizerArgs(eps=0.0), "OptimizerArgs.eps: expected a positive number"),
        (lambda: config_lib.OptimizerArgs(clip_norm=-1.0), "OptimizerArgs.clip_norm"),
        (lambda: config_lib.PartitioningArgs(mesh_shape=(1, 8)), "PartitioningArgs.mesh_shape: expected (data, fsdp"),
        (lambda: config_lib.PartitioningArgs(mesh_shape=(-1, -1, 2)), "PartitioningArgs.mesh_shape"),
        (lambda: config_lib.PartitioningArgs(num_microbatches=0), "PartitioningArgs.num_microbatches"),
        (lambda: config_lib.PartitioningArgs(lm_head_positions=0), "PartitioningArgs.lm_head_positions"),
        (lambda: config_lib.PartitioningArgs(sequence_parallel=1), "PartitioningArgs.sequence_parallel"),
        (lambda: config_lib.PartitioningArgs(nonfinite_guard="where"), "PartitioningArgs.nonfinite_guard: expected"),
        (lambda: config_lib.CheckpointArgs(""), "CheckpointArgs.model_dir: expected a non-empty string"),
        (lambda: config_lib.CheckpointArgs("/r", save_every=0), "CheckpointArgs.save_every"),
        (lambda: config_lib.CheckpointArgs("/r", keep_checkpoints=0), "CheckpointArgs.keep_checkpoints"),
        (lambda: config_lib.LoggingArgs(log_every=0), "LoggingArgs.log_every"),
        (lambda: config_lib.LoggingArgs(tensorboard=None), "LoggingArgs.tensorboard"),
        (lambda: config_lib.RunArgs(train_steps=0), "RunArgs.train_steps: expected a positive integer"),
        (lambda: config_lib.RunArgs(train_steps=10, nan_policy="ignore"), "RunArgs.nan_policy: expected one of"),
        (lambda: config_lib.RunArgs(train_steps=10, stop_at_step=0), "RunArgs.stop_at_step"),
        (lambda: config_lib.RunArgs(train_steps=10, seed="0"), "RunArgs.seed: expected an integer"),
        (lambda: config_lib.RunArgs(train_steps=10, xla_flags="--xla_gpu_enable_triton_gemm=false"),
         "RunArgs.xla_flags: expected a list of XLA flags"),
        (lambda: config_lib.RunArgs(train_steps=10, xla_flags=["xla_gpu_enable_triton_gemm=false"]),
         "RunArgs.xla_flags"),
        (lambda: config_lib.RunArgs(train_steps=10, xla_flags=["--a=1 --b=2"]), "RunArgs.xla_flags"),
        # What spans groups.
        (lambda: _config(data=_data(task_feature_lengths={
            "inputs": 60,
            "targets": 8
        })), "add up to 68 tokens, more than the model's max_position_embeddings=64"),
        (lambda: _config(optimizer=config_lib.OptimizerArgs(warmup_steps=100)),
         "OptimizerArgs.warmup_steps: expected fewer than RunArgs.train_steps=100, got 100"),
        (lambda: _config(partitioning=config_lib.PartitioningArgs(num_microbatches=3)),
         "PartitioningArgs.num_microbatches=3"),
        (lambda: _config(logging=config_lib.OptimizerArgs()), "TrainConfig.logging: expected a LoggingArgs"),
    ])
def test_a_bad_value_is_refused_naming_its_field(build, message):
  with pytest.raises(config_lib.ConfigError) as error:
    build()
  assert message in str(error.value)
  assert isinstance(error.value, ValueError)


def test_a_good_config_is_frozen_hashable_and_normalised():
  config = _config(data=_data(task_feature_lengths={
      "targets": 8,
      "inputs": 24
  }), partitioning=config_lib.PartitioningArgs(mesh_shape=[1, -1, 2]))
  assert config.seq_len == config.data.seq_len == 32
  assert list(config.data.task_feature_lengths) == ["inputs", "targets"]
  assert config.partitioning.mesh_shape == (1, -1, 2)  # a gin list becomes the tuple a cache key needs
  assert hash(config) == hash(_config(data=_data(), partitioning=config_lib.PartitioningArgs(mesh_shape=(1, -1, 2))))
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.run.train_steps = 5  # type: ignore[misc]
  assert config.optimizer == config_lib.OptimizerArgs() and config.logging == config_lib.LoggingArgs()


@dataclasses.dataclass(frozen=True)
class _OtherFamily:
  """A model config that is not OPT's: the model group takes any family with the protocol's members."""

  max_position_embeddings: int = 128
  dropout: float = 0.0
  attention_dropout: float = 0.0
  vocab_size: int = 512
  num_hidden_layers: int = 1
  dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str | None = None

  def num_params(self) -> int:
    return 1

  def flops_per_token(self, seq_len: int) -> float:
    return 6.0 + seq_len

  def to_hf(self) -> dict:
    return {"model_type": "other"}


def test_the_model_group_takes_any_family_with_the_protocol():
  config = _config(model=config_lib.ModelArgs(_OtherFamily()), data=_data(task_feature_lengths={
      "inputs": 100,
      "targets": 28
  }))
  assert config.seq_len == 128 and isinstance(config.model.config, config_lib.ModelConfig)
  with pytest.raises(config_lib.ConfigError, match="max_position_embeddings=128"):
    _config(model=config_lib.ModelArgs(_OtherFamily()), data=_data(task_feature_lengths={"inputs": 100, "targets": 29}))


def test_the_model_group_refuses_an_unhashable_config():

  class Unhashable(_OtherFamily):
    __hash__ = None  # as a dataclass that is not frozen has: no compiled step could be cached by it

  assert isinstance(_OtherFamily(), config_lib.ModelConfig)
  with pytest.raises(config_lib.ConfigError, match="ModelArgs.config: .*frozen dataclass"):
    config_lib.ModelArgs(Unhashable())


@dataclasses.dataclass(frozen=True)
class _PackedAttentionFamily(_OtherFamily):
  """A model config whose attention takes packed rows as at most `packed_attention_segments` segments each."""

  packed_attention_segments: int = 4


@pytest.mark.parametrize("cap", [None, 5])
def test_packed_attention_needs_a_cap_on_segments_per_row_within_its_bound(cap):
  model = config_lib.ModelArgs(_PackedAttentionFamily())
  with pytest.raises(config_lib.ConfigError) as error:
    _config(model=model, data=_data(max_segments_per_row=cap))
  message = str(error.value)
  assert message.startswith("DataArgs.max_segments_per_row:")
  assert "packed_attention_segments=4" in message and "set DataArgs.max_segments_per_row to 4" in message


def test_a_cap_within_the_packed_attention_bound_or_no_packing_passes():
  model = config_lib.ModelArgs(_PackedAttentionFamily())
  for cap in (4, 1):
    assert _config(model=model, data=_data(max_segments_per_row=cap)).data.max_segments_per_row == cap
  assert not _config(model=model, data=_data(pack=False)).data.pack  # one example per row: nothing to bound
  off = config_lib.ModelArgs(_PackedAttentionFamily(packed_attention_segments=0))
  assert _config(model=off, data=_data()).data.max_segments_per_row is None  # the kernel is off: no cap needed
  assert _config(data=_data(max_segments_per_row=2)).data.max_segments_per_row == 2  # a cap is allowed anywhere


def test_a_relative_model_dir_is_made_absolute_and_a_bucket_is_kept(tmp_path, monkeypatch):
  # Orbax refuses a relative path at the first save, after every step of the run: the config holds the absolute one.
  monkeypatch.chdir(tmp_path)
  assert config_lib.CheckpointArgs("runs/x").model_dir == str(tmp_path / "runs" / "x")
  assert config_lib.CheckpointArgs("./x/").model_dir == str(tmp_path / "x")
  assert config_lib.CheckpointArgs("/runs/x").model_dir == "/runs/x"
  assert config_lib.CheckpointArgs("gs://bucket/run").model_dir == "gs://bucket/run"
