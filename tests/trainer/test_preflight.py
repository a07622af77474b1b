"""trainer/preflight.py: before a run builds anything, MODEL_DIR must be a run's folder (not a file, a Hugging Face
model folder or an Orbax checkpoint), and the model must be the architecture MODEL_DIR/config.json (on resume) and
the initial checkpoint's config.json describe; how it is computed, dropout and initialisation may differ."""

import dataclasses
import json

import pytest

from optiml_jax.models import llama_config
from optiml_jax.models import opt_config
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import preflight
from optiml_jax.trainer import synthetic

TINY = opt_config.OPTConfig.preset("tiny", max_position_embeddings=32)
TINY_LLAMA = llama_config.LlamaConfig.preset("llama-tiny", max_position_embeddings=32)


def _model_dir(path, config, steps=("3",)):
  """A MODEL_DIR as a run leaves it: config.json (the model's Hugging Face config) and step folders."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config.to_hf()), encoding="utf-8")
  for step in steps:
    (path / step / "params").mkdir(parents=True)
    (path / step / "params" / "_METADATA").write_text("{}")
  return path


@pytest.mark.parametrize("config", [TINY, TINY_LLAMA])
def test_how_the_model_is_computed_may_change_but_not_its_architecture(config):
  free = dict(dtype="bfloat16", param_dtype="bfloat16", scan_layers=False, remat_policy="full", attention_impl="xla",
              dropout=0.3, attention_dropout=0.2)
  assert preflight.architecture_differences(config, dataclasses.replace(config, **free)) == []
  assert preflight.architecture_differences(config, dataclasses.replace(
      config, num_attention_heads=8)) == ["num_attention_heads: 4 configured, 8 there"]


def test_float_fields_compare_as_config_json_carries_them():
  # A GGUF's float32 epsilon reads back as 9.999999747e-06 (SmolLM2's converted config.json).
  read_back = dataclasses.replace(TINY_LLAMA, rms_norm_eps=9.999999747378752e-06)
  assert preflight.architecture_differences(TINY_LLAMA, read_back) == []
  assert preflight.architecture_differences(TINY_LLAMA, dataclasses.replace(TINY_LLAMA, rms_norm_eps=1e-6))


def test_max_positions_are_architecture_for_opts_table_but_a_limit_for_rotary_positions():
  assert preflight.architecture_differences(TINY, dataclasses.replace(TINY, max_position_embeddings=64))
  assert preflight.architecture_differences(TINY_LLAMA, dataclasses.replace(TINY_LLAMA,
                                                                            max_position_embeddings=64)) == []
  assert preflight.architecture_differences(
      TINY, TINY_LLAMA) == ["family: opt (OPTConfig) configured, llama (LlamaConfig) there"]


def test_a_model_dir_that_is_a_file_or_a_model_checkpoint_is_refused(tmp_path):
  (tmp_path / "file").write_text("x")
  hf = tmp_path / "hf"
  hf.mkdir()
  for name in ("config.json", "model.safetensors", "vocab.json"):
    (hf / name).write_text("{}")
  converted = tmp_path / "converted"
  (converted / "params").mkdir(parents=True)
  (converted / "params" / "_METADATA").write_text("{}")
  for path, message in ((tmp_path / "file", "is a file"), (hf, "is a Hugging Face model folder"),
                        (converted, "is an Orbax checkpoint"), (converted / "params", "is an Orbax checkpoint")):
    with pytest.raises(config_lib.ConfigError, match="MODEL_DIR") as error:
      preflight.check_model_dir(str(path))
    assert message in str(error.value) and str(path) in str(error.value)
  assert [p.read_text() for p in sorted(hf.iterdir())] == ["{}"] * 3  # nothing written
  # A run's folder (checkpoints or not), a new folder, or an empty one are MODEL_DIRs.
  for path in (_model_dir(tmp_path / "run", TINY), tmp_path / "new", tmp_path):
    preflight.check_model_dir(str(path))


def test_a_resumed_or_initial_model_of_another_architecture_is_refused_naming_the_fields(tmp_path):
  run = _model_dir(tmp_path / "run", TINY)
  heads = dataclasses.replace(TINY, num_attention_heads=8, ffn_dim=128)
  with pytest.raises(config_lib.ConfigError, match="ModelArgs.config") as error:
    preflight.check_resumed_model(str(run), heads)
  message = str(error.value)
  assert "num_attention_heads: 8 configured, 4 there" in message and "ffn_dim: 128 configured, 256 there" in message
  assert str(run / "config.json") in message
  preflight.check_resumed_model(str(run), dataclasses.replace(TINY, dtype="bfloat16", dropout=0.0))
  # Nothing to resume (no step folder yet): the run writes its own config.json.
  preflight.check_resumed_model(str(_model_dir(tmp_path / "fresh", TINY, steps=())), heads)

  # An initial checkpoint: a MODEL_DIR, one of its steps, a Hugging Face folder (config.json beside the weights).
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps(TINY.to_hf()), encoding="utf-8")
  (hf / "model.safetensors").write_bytes(b"")
  for path in (run, run / "3", hf):
    with pytest.raises(config_lib.ConfigError, match="INITIAL_CHECKPOINT_PATH") as error:
      preflight.check_initial_model(str(path), heads)
    assert "num_attention_heads: 8 configured, 4 there" in str(error.value)
    preflight.check_initial_model(str(path), dataclasses.replace(TINY, remat_policy="full"))


def test_the_loop_refuses_before_it_builds_anything(tmp_path, monkeypatch):
  run = _model_dir(tmp_path / "run", TINY)
  monkeypatch.setattr(loop, "build_program", lambda *a, **k: pytest.fail("built a program"))
  config = config_lib.TrainConfig(data=config_lib.DataArgs("synthetic", {
      "inputs": 16,
      "targets": 16
  }, 4), model=config_lib.ModelArgs(dataclasses.replace(TINY, num_attention_heads=8)),
                                  checkpoint=config_lib.CheckpointArgs(str(run)), run=config_lib.RunArgs(6),
                                  optimizer=config_lib.OptimizerArgs(warmup_steps=1))
  with pytest.raises(config_lib.ConfigError, match="num_attention_heads"):
    loop.run(config, synthetic.factory(32, TINY.vocab_size))
  assert json.loads((run / "config.json").read_text()) == TINY.to_hf()
