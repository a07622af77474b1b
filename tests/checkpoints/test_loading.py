"""Tests of optiml_jax.checkpoints.loading: a checkpoint's config (with or without its params) and params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import convert
from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import loading
from optiml_jax.models import opt


@pytest.fixture(scope="module")
def model():
  config = opt.OPTConfig.preset("tiny", dropout=0.0, max_position_embeddings=512)
  params = jax.jit(lambda key: opt.OPT(config).init(key, jnp.ones((1, 4), jnp.int32))["params"])(jax.random.PRNGKey(0))
  return config, jax.device_get(params)


def test_load_checkpoint_with_config_json_with_the_configured_model_and_partial(model, tmp_path):
  config, params = model
  convert.save_orbax(params, tmp_path / "with_config", config)
  loaded_config, loaded = loading.load_checkpoint(discovery.Checkpoint(str(tmp_path / "with_config"), "orbax"),
                                                  overrides={"dtype": "bfloat16"})
  assert loaded_config.dtype == "bfloat16" and loaded_config.hidden_size == config.hidden_size
  np.testing.assert_array_equal(jax.tree.leaves(loaded)[0], jax.tree.leaves(params)[0])
  convert.save_orbax(params, tmp_path / "run" / "7")  # a trainer step: no config.json
  bare = discovery.Checkpoint(str(tmp_path / "run" / "7"), "orbax", 7)
  with pytest.raises(discovery.CheckpointError, match="no config.json beside the checkpoint .* bind `evaluate.model`"):
    loading.load_checkpoint(bare)
  # A command line without gin says its own remedy (`optiml_jax.answer`), never the gin one.
  with pytest.raises(discovery.CheckpointError, match="which model it holds; copy it here$"):
    loading.load_checkpoint(bare, missing_config_hint="copy it here")
  assert loading.load_checkpoint(bare, model=config)[0].num_hidden_layers == config.num_hidden_layers
  for path in (tmp_path / "run" / "7" / "params").rglob("*"):
    if path.is_file() and path.name != "_METADATA":
      path.unlink()
  with pytest.raises(discovery.CheckpointError, match="cannot read the checkpoint"):
    loading.load_checkpoint(bare, model=config)


def test_load_config_reads_no_params_and_names_a_bad_config(model, tmp_path):
  config, params = model
  convert.save_hf(config, params, tmp_path / "hf")
  (tmp_path / "hf" / "model.safetensors").unlink()  # the config alone is enough
  loaded = loading.load_config(discovery.Checkpoint(str(tmp_path / "hf"), "hf"), overrides={"dtype": "bfloat16"})
  assert loaded.dtype == "bfloat16" and loaded.num_hidden_layers == config.num_hidden_layers
  convert.save_orbax(params, tmp_path / "run" / "3")
  step = discovery.Checkpoint(str(tmp_path / "run" / "3"), "orbax", 3)
  assert loading.load_config(step, model=config) == config
  (tmp_path / "run" / "config.json").write_text('{"model_type": "gpt9"}')
  with pytest.raises(discovery.CheckpointError, match="cannot read the checkpoint.*gpt9"):
    loading.load_config(step, model=config)


def test_relayout_stacks_and_unstacks_layers_anywhere_in_a_tree():
  stacked = {"embed": np.ones(3), "layers": {"fc1": {"kernel": np.arange(12.0).reshape(3, 2, 2)}}}
  state = ({"mu": stacked, "nu": stacked}, 7)  # an optimizer state of params-shaped moments, beside a count
  flat = layout.relayout(state, scan_layers=False)
  assert sorted(flat[0]["mu"]) == ["embed", "layers_0", "layers_1", "layers_2"] and flat[1] == 7
  np.testing.assert_array_equal(flat[0]["nu"]["layers_2"]["fc1"]["kernel"], stacked["layers"]["fc1"]["kernel"][2])
  again = layout.relayout(flat, scan_layers=True)
  np.testing.assert_array_equal(again[0]["mu"]["layers"]["fc1"]["kernel"], stacked["layers"]["fc1"]["kernel"])
  same = layout.relayout(stacked, scan_layers=True)  # already in that layout
  assert same["layers"]["fc1"]["kernel"] is stacked["layers"]["fc1"]["kernel"]
  with pytest.raises(layout.ConversionError, match=r"layers \[0, 2\] are not 0..1"):
    layout.relayout({"layers_0": {"k": np.ones(1)}, "layers_2": {"k": np.ones(1)}}, scan_layers=True)


def test_a_compute_dtype_override_must_name_a_floating_point_dtype():
  # What eval's evaluate.dtype and answer's --dtype accept (both refuse the rest before a model is read).
  assert all(loading.is_compute_dtype(name) for name in ("bfloat16", "float16", "float32"))
  assert not any(loading.is_compute_dtype(name) for name in ("int8", "float17", "", None))
