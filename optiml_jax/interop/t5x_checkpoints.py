r"""Checkpoints between t5x and optiml-jax: t5x's `checkpoint_<step>/state` <-> our Orbax `params` folders.

Where it sits: beside `checkpoints/orbax_io.py`. A t5x run (`python -m t5x.train` with gin/t5x/) writes
t5x checkpoints; `import` turns one into the folder our evaluator, `convert` and the trainer's
INITIAL_CHECKPOINT_PATH read. `export` turns our checkpoint (a model of any family converted from Hugging Face,
or one our trainer wrote) into a t5x checkpoint that `t5x.train` (fine-tuning), `t5x.eval` and `t5x.infer`
restore. Needs orbax only, not t5x.

Layouts (both Orbax; the parameter trees are the same, since t5x's module is ours: `t5x_model.DecoderForT5x`):
  t5x   MODEL_DIR/checkpoint_<step>/state   one PyTree item {"target": params,
                                            "state": {"step": int32, "param_states": t5x's optimizer state}}
  ours  OUT/config.json + OUT/params        `save_orbax` (the trainer writes MODEL_DIR/<step>/params)
The t5x side may be a bucket (`gs://BUCKET/...`: the checkpoint `import` reads, the T5X_DIR `export` writes),
opened through `etils.epath` as Orbax and t5x do; our side is a local folder.

What carries over: the parameters, bit for bit. `export` writes `--step` as t5x's `state/step`; `import` reads
`target` only and leaves the step behind, since our folder has no place for one (`read_t5x_params` returns it).
What does not: optimizer state (t5x stores optax's state flattened as `param_states/<index>/...` without its
empty members; our trainer stores optax's own tree) and the data-stream position. `export` writes `target`
and `state/step` only, so t5x must restore it with `RestoreCheckpointConfig.fallback_to_scratch = True`, which
creates a fresh optimizer state (gin/t5x/optiml_*.gin set that for INITIAL_CHECKPOINT_PATH).

  python -m optiml_jax.interop.t5x_checkpoints import MODEL_DIR/checkpoint_8000 OUT --preset opt-30b
  python -m optiml_jax.interop.t5x_checkpoints import MODEL_DIR/checkpoint_2000 OUT --preset smollm2-135m
  python -m optiml_jax.interop.t5x_checkpoints import MODEL_DIR/checkpoint_2000 OUT --config HF_DIR
  python -m optiml_jax.interop.t5x_checkpoints export ORBAX_DIR T5X_DIR [--step 0]

`--preset` takes any preset of `models/registry.py` (the MODEL_PRESET the t5x gin file sets), `--overrides`
the fields of that preset's config class; `--config` any Hugging Face config.json of a supported model_type (with
`--overrides`: exit 2, as they would be dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import sys
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import jax
import numpy as np

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io
from optiml_jax.models import registry
from optiml_jax.trainer import preflight

STATE_ITEM = "state"  # t5x's Orbax item name
TARGET_KEY = "target"  # the parameters inside it
STEP_PREFIX = "checkpoint"  # t5x's step folders: checkpoint_<step>
_STEP_DIR = re.compile(rf"{STEP_PREFIX}_(\d+)")
_LAYER = re.compile(r"layers_(\d+)")


def t5x_path(path: str | os.PathLike[str]) -> epath.Path:
  """A t5x folder as `etils.epath.Path`, the way Orbax and t5x open it: a bucket or other URL (`gs://...`) as it
  is, a local path made absolute (`pathlib` would make `gs://b/x` the local folder `<cwd>/gs:/b/x`)."""
  text = os.fspath(path)
  return epath.Path(text) if preflight.is_remote(text) else epath.Path(text).absolute()


def _ask(question: Callable[[], bool], path: epath.Path) -> bool:
  """`question()` (an `exists` or `is_dir` of `path`); ConversionError naming `path` when it cannot be answered:
  epath's backend for buckets (TensorFlow's gfile) raises its own errors, not OSError, e.g. for a bucket that
  cannot be reached or without credentials."""
  try:
    return question()
  except orbax_io.PROGRAMMING_ERRORS:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise layout.ConversionError(f"{path}: cannot be reached: {e}") from e


def find_state_item(path: str | os.PathLike[str]) -> epath.Path:
  """The `state` item of a t5x checkpoint: `path` (local or a bucket URL, `t5x_path`) may be the item, a
  `checkpoint_<step>` folder or a t5x MODEL_DIR (its highest step).

  Raises:
    layout.ConversionError: naming `path`, when none of these is found or `path` cannot be reached.
  """
  folder = t5x_path(path)
  if not _ask(folder.is_dir, folder):
    raise layout.ConversionError(f"{folder}: t5x checkpoint folder not found")
  if folder.name == STATE_ITEM and any((folder / name).is_file() for name in discovery.ORBAX_ITEM_FILES):
    return folder
  if (folder / STATE_ITEM).is_dir():
    return folder / STATE_ITEM
  steps = [(int(m.group(1)), p)
           for p in folder.iterdir()
           if (m := _STEP_DIR.fullmatch(p.name)) and (p / STATE_ITEM).is_dir()]
  if steps:
    return max(steps, key=lambda step: step[0])[1] / STATE_ITEM
  raise layout.ConversionError(f"{folder}: not a t5x checkpoint (expected {STATE_ITEM}/, "
                               f"{STEP_PREFIX}_<step>/{STATE_ITEM}/ or a MODEL_DIR holding them)")


def _tree_metadata(item: epath.Path) -> Any:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(item)
  except (OSError, ValueError) as e:
    raise layout.ConversionError(f"{item}: cannot read Orbax metadata: {e}") from e
  return getattr(metadata, "tree", metadata)


def read_t5x_params(path: str | os.PathLike[str]) -> tuple[layout.Params, int]:
  """(params as numpy arrays, step) of a t5x checkpoint; the optimizer state is not read.

  Raises:
    layout.ConversionError: not a t5x checkpoint, or its state has no `target`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item = find_state_item(path)
  metadata = _tree_metadata(item)
  if TARGET_KEY not in metadata:
    raise layout.ConversionError(f"{item}: no '{TARGET_KEY}' in the t5x state (keys: {sorted(metadata)})")
  wanted = {TARGET_KEY: metadata[TARGET_KEY]}
  if "state" in metadata and "step" in metadata["state"]:
    wanted["state"] = {"step": metadata["state"]["step"]}
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), wanted)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True))
  step = int(np.asarray(restored["state"]["step"])) if "state" in restored else _step_of(item)
  return dict(restored[TARGET_KEY]), step


def _step_of(item: epath.Path) -> int:
  match = _STEP_DIR.fullmatch(item.parent.name)
  return int(match.group(1)) if match else 0


def import_t5x(path: str | os.PathLike[str], out: str | pathlib.Path, config: registry.ModelConfig,
               overwrite: bool = False) -> pathlib.Path:
  """Writes the parameters of a t5x checkpoint as our Orbax folder (`OUT/config.json` + `OUT/params`); its step
  is not kept (the folder records none).

  `config` is the model's config, of any family (`registry.preset`, or read from a Hugging Face config.json).

  Raises:
    fileio.OutDirError: before anything is read, an `out` that cannot be written as asked: a file, a non-empty
      folder without `overwrite`, or a folder that is or holds the t5x checkpoint (`path` or the `state` item it
      resolves to: replacing it would delete the checkpoint), with or without `overwrite`.
    layout.ConversionError: the checkpoint's parameters do not match `config` (names the parameter).
  """
  item = find_state_item(path)
  sources = [path, item]
  fileio.check_out_dir(out, overwrite, sources)
  params, _ = read_t5x_params(item)
  scanned = layout.validate_params(config, params, source=str(item))
  config = dataclasses.replace(config, scan_layers=scanned)
  return orbax_io.save_orbax(params, out, config, overwrite=overwrite, sources=sources)


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """`layers_0/...`, `layers_1/...` (unscanned) -> `layers/...` stacked on a leading axis, in layer order,
  as gin/t5x/ builds the model (scan_layers=True); an already stacked tree is returned as it is."""
  params = dict(layout.unwrap(params))
  numbered = [(int(m.group(1)), k) for k in params if (m := _LAYER.fullmatch(k))]
  names = [k for _, k in sorted(numbered, key=lambda layer: layer[0])]
  if not names:
    return params
  stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *[params.pop(k) for k in names])
  return {**params, "layers": stacked}


def export_t5x(path: str | pathlib.Path, out_dir: str | os.PathLike[str], step: int = 0) -> epath.Path:
  """Writes our checkpoint's parameters as t5x's `OUT_DIR/checkpoint_<step>/state` (no optimizer state).

  `path` is anything `orbax_io.restore_orbax` reads (a `save_orbax` folder, a trainer step folder or
  MODEL_DIR). `out_dir` may be a bucket URL (`gs://...`, `t5x_path`). Unscanned parameters (`layers_{i}`) are
  stacked first (`stack_layers`). The whole tree is held in host memory as numpy (2 bytes a parameter for
  bfloat16/float16 files, 4 for float32). Returns the `checkpoint_<step>` folder.

  `step` may be below a step `OUT_DIR` already holds (exporting into a t5x MODEL_DIR): it is written all the same.

  Raises:
    layout.ConversionError: `path` is unreadable, `OUT_DIR` cannot be reached or already holds that step, or the
      step folder is not there once written.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  _, params = orbax_io.restore_orbax(path)
  t5x_dir = t5x_path(out_dir)
  target = t5x_dir / f"{STEP_PREFIX}_{step}"
  if _ask(target.exists, target):
    raise layout.ConversionError(f"{target}: already exists; choose another --step or folder")
  options = ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(t5x_dir, options=options, item_names=(STATE_ITEM,)) as manager:
    state = {TARGET_KEY: stack_layers(params), "state": {"step": np.asarray(step, np.int32)}}
    # force: Orbax skips (returns False for) a step not above the latest one the folder holds.
    saved = manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(state)}), force=True)
    manager.wait_until_finished()
  if not saved or not (target / STATE_ITEM).is_dir():
    raise layout.ConversionError(f"{target}: Orbax's CheckpointManager did not write this step (save returned "
                                 f"{saved}); nothing was exported")
  return target


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------


def _config_from_args(args: argparse.Namespace) -> registry.ModelConfig:
  try:
    overrides: dict[str, Any] = json.loads(args.overrides) if args.overrides else {}
  except json.JSONDecodeError as e:
    raise layout.ConversionError(f"--overrides: not JSON ({e}): {args.overrides!r}") from e
  if not isinstance(overrides, Mapping):
    raise layout.ConversionError(f"--overrides: expected a JSON object, got {args.overrides!r}")
  if args.config:
    if overrides:  # they would be dropped: the config.json says every field
      raise layout.ConversionError(f"--overrides: replaces fields of a --preset's config; with --config "
                                   f"{args.config}, give a config.json with those fields instead")
    config_path = pathlib.Path(args.config)
    if config_path.is_dir():
      config_path = config_path / hf.CONFIG_NAME
    return hf.config_from_hf_dict(fileio.read_json(config_path), str(config_path))
  try:
    return registry.preset(args.preset, **overrides)
  except (TypeError, ValueError) as e:
    raise layout.ConversionError(f"--preset {args.preset} / --overrides: {e}") from e


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.interop.t5x_checkpoints",
                                   description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  imp = commands.add_parser("import", help="t5x checkpoint -> our Orbax folder (config.json + params)")
  imp.add_argument("t5x_checkpoint", help="checkpoint_<step>/, its state/ item, or a t5x MODEL_DIR (latest)")
  imp.add_argument("out", help="folder to write (config.json + params/)")
  source = imp.add_mutually_exclusive_group(required=True)
  source.add_argument(
      "--preset", help="the model's preset, e.g. opt-30b or smollm2-135m (as MODEL_PRESET in gin); "
      "any of models/registry.py")
  source.add_argument("--config", help="a Hugging Face config.json (or a folder holding one)")
  imp.add_argument("--overrides",
                   help="JSON object of the preset's config fields for --preset, e.g. '{\"vocab_size\": 49152}'")
  imp.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
  exp = commands.add_parser("export", help="our Orbax checkpoint -> t5x checkpoint_<step>/state")
  exp.add_argument("checkpoint", help="a save_orbax folder, a trainer step folder or a trainer MODEL_DIR")
  exp.add_argument("out_dir", help="t5x folder to write checkpoint_<step>/ into (INITIAL_CHECKPOINT_PATH)")
  exp.add_argument("--step", type=int, default=0, help="step number of the written checkpoint (default 0)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    if args.command == "import":
      written = import_t5x(args.t5x_checkpoint, args.out, _config_from_args(args), overwrite=args.overwrite)
    else:
      written = export_t5x(args.checkpoint, args.out_dir, step=args.step)
  except (layout.ConversionError, OSError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {written}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
