"""Orbax checkpoints of the `params` tree of any model family: write one, and read one back, sharded or as numpy.

Where it sits: in `optiml_jax.checkpoints`, between the in-memory `params` tree (`layout`) and the Orbax
checkpoints that training and evaluation start from; `optiml_jax.convert` re-exports `save_orbax` /
`restore_orbax` and the trainer restores its initial parameters with them.

Layout written by `save_orbax` and read by `restore_orbax`:
  OUT_DIR/config.json   the Hugging Face config of the model (`config.to_hf()`), so nothing else is needed
  OUT_DIR/params/       one Orbax PyTree item holding the `params` tree
The trainer's CheckpointManager writes `ROOT/<step>/params/`; `restore_orbax` accepts `ROOT/<step>` (config.json
looked up in the step folder, then in ROOT) and `ROOT` itself (its latest complete step): `discovery.py` says
which folder is which.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str

PARAMS_ITEM = discovery.PARAMS_ITEM


def save_orbax(params: Mapping[str, Any], path: Path, config: layout.ModelConfig | None = None, overwrite: bool = False,
               tokenizer_dir: Path | None = None) -> pathlib.Path:
  """Writes `path/params` (an Orbax PyTree item), given `config` `path/config.json`, and given `tokenizer_dir` the
  tokenizer files found there (`hf.TOKENIZER_FILES`: the folder then serves as its own TOKENIZER_DIR); returns
  `path`.

  Single-process: it stages into a temporary sibling of `path` and renames it into place when complete.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  params = layout.unwrap(params)
  if config is not None:
    layout.validate_params(config, params, source=f"params for {path}")
  tokenizer_files = [] if tokenizer_dir is None else [
      pathlib.Path(tokenizer_dir) / n for n in hf.TOKENIZER_FILES if (pathlib.Path(tokenizer_dir) / n).is_file()
  ]
  with fileio.staged_dir(path, overwrite) as tmp:
    for source in tokenizer_files:
      shutil.copyfile(source, tmp / source.name)
    if config is not None:
      (tmp / hf.CONFIG_NAME).write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      checkpointer.save(tmp / PARAMS_ITEM, args=ocp.args.PyTreeSave(dict(params)))
  return pathlib.Path(path).absolute()


def _sharding_of(spec: Any) -> Any:
  return getattr(spec, "sharding", spec)


def restore_orbax(path: Path, shardings: Any = None,
                  config: layout.ModelConfig | None = None) -> tuple[layout.ModelConfig, layout.Params]:
  """Reads params written by `save_orbax` or a CheckpointManager; returns (config, params).

  Args:
    path: a save_orbax folder, a step folder, the `params` item or a MODEL_DIR (its latest complete step);
      see `discovery.find_params_item`.
    shardings: None for numpy arrays; one `jax.sharding.Sharding` for every array; or a tree like params
      whose leaves are shardings or `jax.ShapeDtypeStruct`s with a sharding. Arrays then come back as
      jax.Arrays with those shardings.
    config: the model config; by default read from config.json beside the item (its `model_type` picks
      the family).

  The returned config's `scan_layers` follows the stored tree (stacked `layers/` or `layers_{i}/`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item, config_dirs = discovery.find_params_item(path)
  if config is None:
    found = [d / hf.CONFIG_NAME for d in config_dirs if (d / hf.CONFIG_NAME).is_file()]
    if not found:
      raise layout.ConversionError(f"{item}: no {hf.CONFIG_NAME} in {', '.join(map(str, config_dirs))}; pass config=")
    config = hf.config_from_hf_dict(fileio.read_json(found[0]), str(found[0]))
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(item)
  except (OSError, ValueError) as e:
    raise layout.ConversionError(f"{item}: cannot read Orbax metadata: {e}") from e
  metadata = getattr(metadata, "tree", metadata)  # Newer orbax wraps the tree in a TreeMetadata.
  scanned = layout.validate_params(config, metadata, source=str(item))
  if shardings is None:
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), metadata)
    target = None
  else:
    if isinstance(shardings, jax.sharding.Sharding):
      sharding_tree = jax.tree.map(lambda _: shardings, metadata)
    else:
      sharding_tree = dict(layout.unwrap(shardings))
    try:
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_sharding_of(s)), metadata,
                            sharding_tree)
    except ValueError as e:
      raise layout.ConversionError(f"{item}: shardings do not match the stored tree: {e}") from e
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    params = checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  return dataclasses.replace(config, scan_layers=scanned), params
