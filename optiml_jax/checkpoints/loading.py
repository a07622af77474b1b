"""One checkpoint -> (model config, params): the loader every consumer of a CHECKPOINT_PATH shares.

Where it sits: in `optiml_jax.checkpoints`, over `discovery.py` (which checkpoint a path names) and the format
readers (`hf.load_hf`, `orbax_io.restore_orbax`). The evaluator (`evaluation/evaluator.py`, with seqio) and the
TF-free answering of recorded evaluation requests (`evaluation/requests.py`, `python -m optiml_jax.answer`) load
their models here, so neither needs the other's dependencies.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io
from optiml_jax.models import registry

# What to do about a checkpoint without config.json, in the evaluator's terms (gin); `optiml_jax.answer` says its own.
MISSING_CONFIG_HINT = ("bind `evaluate.model` (e.g. include 'models/opt_tiny.gin' in the gin file), or copy that "
                       "model's config.json there")


def load_config(checkpoint: discovery.Checkpoint, model: registry.ModelConfig | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                missing_config_hint: str = MISSING_CONFIG_HINT) -> registry.ModelConfig:
  """The model config of a checkpoint, without reading its params: config.json beside the params (Hugging Face
  folders, `save_orbax` folders, a trainer's MODEL_DIR) or else `model`, with `overrides` applied.

  Raises:
    CheckpointError: naming the path, when it holds no checkpoint, or no config.json and no `model` is given
      (the message ends with `missing_config_hint`, what to do), or a config.json that cannot be read.
  """
  overrides = dict(overrides or {})
  try:
    if checkpoint.format == "hf":
      found = [pathlib.Path(checkpoint.path) / hf.CONFIG_NAME]
    else:
      _, config_dirs = discovery.find_params_item(checkpoint.path)
      found = [d / hf.CONFIG_NAME for d in config_dirs if (d / hf.CONFIG_NAME).is_file()]
    if found:
      return hf.config_from_hf_dict(fileio.read_json(found[0]), str(found[0]), overrides)
  except discovery.CheckpointError:
    raise
  except layout.ConversionError as e:  # an unreadable or unsupported config.json
    raise _unreadable(checkpoint, e) from e
  if model is None:
    raise discovery.CheckpointError(f"{checkpoint.path}: no config.json beside the checkpoint to say which model it "
                                    f"holds; {missing_config_hint}")
  return dataclasses.replace(model, **overrides)


def is_compute_dtype(value: Any) -> bool:
  """Whether `value` names a floating-point dtype, as the `{"dtype": ...}` override of a model's compute dtype
  (eval's evaluate.dtype, answer's --dtype) must: 'bfloat16', 'float32'; not 'int8' nor 'float17'."""
  if value is None:  # jnp.dtype(None) is the default float: not a name
    return False
  try:
    return bool(jnp.issubdtype(jnp.dtype(value), jnp.floating))
  except TypeError:
    return False


def load_checkpoint(checkpoint: discovery.Checkpoint, model: registry.ModelConfig | None = None,
                    overrides: Mapping[str, Any] | None = None, *,
                    missing_config_hint: str = MISSING_CONFIG_HINT) -> tuple[registry.ModelConfig, Any]:
  """(model config of its family, params as numpy) of a checkpoint; raises CheckpointError naming the path.

  The config is `load_config`'s; `overrides` replaces config fields that do not change the parameters (e.g.
  {"dtype": "bfloat16"}); `scan_layers` follows the stored tree.
  """
  config = load_config(checkpoint, model, overrides, missing_config_hint=missing_config_hint)
  try:
    if checkpoint.format == "hf":
      return hf.load_hf(checkpoint.path, overrides)
    return orbax_io.restore_orbax(checkpoint.path, config=config)
  except discovery.CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  Orbax and file errors of all kinds.
    raise _unreadable(checkpoint, e) from e


def _unreadable(checkpoint: discovery.Checkpoint, error: Exception) -> discovery.CheckpointError:
  return discovery.CheckpointError(f"{checkpoint.path}: cannot read the checkpoint ({type(error).__name__}: {error})")
