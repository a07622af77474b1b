"""What kind of checkpoint a path is, and where its parameters and config.json are.

Where it sits: in `optiml_jax.checkpoints`, under every reader of a checkpoint path: `orbax_io.restore_orbax`
(and so `python -m optiml_jax.convert orbax-to-hf`), the trainer's initial checkpoint (`trainer/state.py`)
and the evaluator's CHECKPOINT_PATH (`evaluation/evaluator.py`, `python -m optiml_jax.eval`). It looks at
folder and file names only; the readers are `hf.load_hf` and `orbax_io.restore_orbax`.

The kinds of path (`kind_of`):
  HF            a Hugging Face folder: config.json and model.safetensors, its index, pytorch_model.bin or its
                index (also a folder with a config.json and nothing else, so that reading it says which
                weight files are missing);
  ORBAX         a folder with a complete `params` item: a `convert` / `save_orbax` folder (config.json beside
                the item) or a trainer step folder MODEL_DIR/<step>/ (config.json one level up);
  PARAMS_ITEM   the Orbax `params` item itself (it holds `_METADATA` or `manifest.ocdbt`);
  MODEL_DIR     a trainer's MODEL_DIR: numbered step folders <step>/params/ (and its model's config.json);
  PARTIAL_STEP  a numbered step folder whose `params` item is missing or empty (a save that never finished).
Anything else (missing, a file, a folder with none of these) raises `CheckpointError` naming the path.

A `params` item is complete when it is a non-empty folder. Orbax writes a step under a temporary name
(`<step>.orbax-checkpoint-tmp-<n>`) and renames it when complete, so such folders are never steps. A step is
committed when its folder holds Orbax's commit marker `commit_success.txt` (written last, before the rename on
local disks, as the commit itself on buckets without atomic rename). A MODEL_DIR where some step folder has the
marker was written by an Orbax that writes it, so a step folder there without it did not commit (or was copied
incompletely): it is skipped, with a problem naming it. (Where no step has one, as with Orbax versions that
write none, the marker is not asked for.) The trainer sets a step it could not restore aside as
`<step>.unrestorable` (`trainer/checkpointing.py`); such folders are listed as problems, never read.

  MODEL_DIR/              kind_of -> MODEL_DIR      find_params_item -> (MODEL_DIR/200/params,
    config.json                                                          [MODEL_DIR/200, MODEL_DIR])
    100/params/           kind_of -> ORBAX          find_checkpoints(MODEL_DIR, "all") -> steps 100, 200
    200/params/           kind_of -> ORBAX            (300 skipped, with a problem naming it)
    300/                  kind_of -> PARTIAL_STEP
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Sequence

from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str | os.PathLike

PARAMS_ITEM = "params"  # the Orbax item holding the parameter tree
ORBAX_ITEM_FILES = ("_METADATA", "manifest.ocdbt")  # one of them is in every Orbax PyTree item
COMMIT_FILE = "commit_success.txt"  # Orbax's commit marker in a finished step folder
UNRESTORABLE_SUFFIX = ".unrestorable"  # a step folder the trainer could not restore, set aside (files unchanged)

TOKENIZER_JSON = "tokenizer.json"  # a tokenizer folder has this, or both BPE_FILES (OPT's GPT-2 style files)
BPE_FILES = ("vocab.json", "merges.txt")

HF = "hf"
ORBAX = "orbax"
PARAMS_ITEM_KIND = "params_item"
MODEL_DIR = "model_dir"
PARTIAL_STEP = "partial_step"
KINDS = (HF, ORBAX, PARAMS_ITEM_KIND, MODEL_DIR, PARTIAL_STEP)


class CheckpointError(layout.ConversionError):
  """A checkpoint path is missing, partial or holds no checkpoint; the message names the path."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One loadable checkpoint: `format` "orbax" (a step or save_orbax folder) or "hf" (Hugging Face OPT)."""

  path: str
  format: str
  step: int | None = None


def is_orbax_item(folder: Path) -> bool:
  """Whether `folder` is an Orbax PyTree item (it holds `_METADATA` or `manifest.ocdbt`)."""
  return any((pathlib.Path(folder) / name).is_file() for name in ORBAX_ITEM_FILES)


def has_params(folder: Path) -> bool:
  """Whether `folder` holds a complete `params` item (a non-empty folder)."""
  item = pathlib.Path(folder) / PARAMS_ITEM
  return item.is_dir() and any(item.iterdir())


def is_hf_folder(folder: Path) -> bool:
  """Whether `folder` holds a Hugging Face model: config.json and a weights file (or index) beside it.

  A trainer's MODEL_DIR also has a config.json (its model's), but its weights are in Orbax step folders.
  """
  folder = pathlib.Path(folder)
  return (folder / hf.CONFIG_NAME).is_file() and any((folder / name).is_file() for name in hf.WEIGHT_FILES)


def step_of(folder: Path) -> int | None:
  """The step a folder's name says (`MODEL_DIR/<step>`), or None when the name is not a number."""
  name = pathlib.Path(folder).name
  return int(name) if name.isdigit() else None


def step_folders(folder: Path) -> list[pathlib.Path]:
  """The numbered sub-folders of `folder` (complete or not), in step order."""
  folder = pathlib.Path(folder)
  return sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def commit_marker_expected(model_dir: Path) -> bool:
  """Whether the step folders of `model_dir` carry Orbax's commit marker (some step folder has one)."""
  return any((p / COMMIT_FILE).is_file() for p in step_folders(model_dir))


# Why a step folder without its commit marker is not a checkpoint (one line).
UNCOMMITTED_REASON = f"not committed (no {COMMIT_FILE}: the save never finished, or the folder was copied incompletely)"


def complete_steps(model_dir: Path) -> dict[int, pathlib.Path]:
  """Step -> folder, for the committed step folders of `model_dir` with a complete `params` item, in step order."""
  marker = commit_marker_expected(model_dir)
  return {
      int(p.name): p for p in step_folders(model_dir) if has_params(p) and (not marker or (p / COMMIT_FILE).is_file())
  }


def unrestorable_folders(model_dir: Path) -> list[pathlib.Path]:
  """The step folders the trainer set aside as unrestorable (`<step>.unrestorable[-n]`), by name."""
  folder = pathlib.Path(model_dir)
  return sorted(
      p for p in folder.iterdir() if p.is_dir() and UNRESTORABLE_SUFFIX in p.name and p.name.split(".")[0].isdigit())


def kind_of(path: Path) -> str:
  """Which of `KINDS` `path` is (see the module docstring).

  Raises:
    CheckpointError: the path does not exist, is not a folder, or is none of the kinds.
  """
  folder = pathlib.Path(path)
  if not folder.exists():
    raise CheckpointError(f"{folder}: checkpoint path not found")
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: expected a folder (an Orbax step folder, a MODEL_DIR or a Hugging Face "
                          "OPT folder)")
  if has_params(folder):
    return ORBAX
  if is_orbax_item(folder):
    return PARAMS_ITEM_KIND
  numbered = step_folders(folder)
  # A trainer's MODEL_DIR has a config.json too (its model's), beside numbered step folders.
  if is_hf_folder(folder) or ((folder / hf.CONFIG_NAME).is_file() and not numbered):
    return HF
  if step_of(folder) is not None and ((folder / PARAMS_ITEM).exists() or not numbered):
    return PARTIAL_STEP
  if numbered:
    return MODEL_DIR
  raise CheckpointError(f"{folder}: no checkpoint here (expected {PARAMS_ITEM}/ (Orbax), numbered step folders "
                        f"<step>/{PARAMS_ITEM}/ (a MODEL_DIR) or config.json + weights (Hugging Face))")


def _partial_step_error(folder: pathlib.Path) -> CheckpointError:
  if (folder / PARAMS_ITEM).exists():
    return CheckpointError(f"{folder}: partial checkpoint (its '{PARAMS_ITEM}' item is empty)")
  return CheckpointError(f"{folder}: partial checkpoint (step folder without a '{PARAMS_ITEM}' item)")


def find_params_item(path: Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
  """The Orbax `params` item a path names and the folders to look for config.json in, nearest first.

  `path` may be an ORBAX folder (a `save_orbax` folder or a step folder), the PARAMS_ITEM itself, or a
  MODEL_DIR (its highest step with a complete `params` item).

  Raises:
    CheckpointError: naming `path`, when it is none of these (a Hugging Face folder, a partial step, ...).
  """
  path = pathlib.Path(path).absolute()
  kind = kind_of(path)
  if kind == ORBAX:
    return path / PARAMS_ITEM, [path, path.parent]
  if kind == PARAMS_ITEM_KIND:
    return path, [path, path.parent, path.parent.parent]
  if kind == MODEL_DIR:
    steps = complete_steps(path)
    if steps:
      step = steps[max(steps)]
      return step / PARAMS_ITEM, [step, path]
  if kind == PARTIAL_STEP:
    raise _partial_step_error(path)
  raise CheckpointError(f"{path}: no Orbax '{PARAMS_ITEM}' item here (expected {path}/{PARAMS_ITEM}/, "
                        f"or step folders <step>/{PARAMS_ITEM}/)")


def tokenizer_folder(path: Path) -> pathlib.Path | None:
  """The folder of a checkpoint path that holds its tokenizer files, or None.

  A Hugging Face folder usually holds its tokenizer, a trainer's MODEL_DIR the one its run tokenized with
  (`trainer.runtime.write_model_config`), an `hf-to-orbax` folder its Hugging Face folder's; a step folder or `params`
  item looks in the folders around it, nearest first. Tokenizer files: tokenizer.json, or vocab.json and
  merges.txt (`data/special_tokens.is_tokenizer_folder`, read here by name only).
  """
  path = pathlib.Path(path).absolute()
  try:
    kind = kind_of(path)
  except CheckpointError:
    return None
  candidates = [path]
  if kind == PARAMS_ITEM_KIND:
    candidates = [path.parent] + ([path.parent.parent] if step_of(path.parent) is not None else [])
  elif kind == ORBAX and step_of(path) is not None:  # a trainer's step folder: its MODEL_DIR
    candidates = [path, path.parent]
  for folder in candidates:
    if (folder / TOKENIZER_JSON).is_file() or all((folder / name).is_file() for name in BPE_FILES):
      return folder
    if (folder / hf.CONFIG_NAME).is_file():  # the checkpoint's own folder: do not look above it
      return None
  return None


def find_checkpoints(path: Path, steps: str | Sequence[int] = "latest") -> tuple[list[Checkpoint], list[str]]:
  """The checkpoints a CHECKPOINT_PATH names, and the problems found on the way (partial step folders).

  Args:
    path: an Orbax step folder (`MODEL_DIR/<step>` with `params/`), a `save_orbax` folder, a `MODEL_DIR`
      (its numbered step folders), or a Hugging Face OPT folder (config.json + weights).
    steps: for a MODEL_DIR, "latest", "all", or a list of step numbers.

  Raises:
    CheckpointError: the path does not exist, holds no checkpoint, or no requested step is complete.
  """
  folder = pathlib.Path(path)
  kind = kind_of(folder)
  if kind in (ORBAX, PARAMS_ITEM_KIND):
    return [Checkpoint(str(folder), "orbax", step_of(folder))], []
  if kind == HF:
    return [Checkpoint(str(folder), "hf", None)], []
  if kind == PARTIAL_STEP:
    raise _partial_step_error(folder)
  numbered = step_folders(folder)
  by_step = complete_steps(folder)
  problems = [
      f"{p}: partial checkpoint (no complete '{PARAMS_ITEM}' item); skipped"
      if not has_params(p) else f"{p}: {UNCOMMITTED_REASON}; skipped" for p in numbered if int(p.name) not in by_step
  ]
  problems += [
      f"{p}: set aside by the trainer, which could not restore it; skipped" for p in unrestorable_folders(folder)
  ]
  if not by_step and not any(has_params(p) for p in numbered):
    raise CheckpointError(f"{folder}: every step folder is partial ({', '.join(p.name for p in numbered)}): "
                          f"none has a '{PARAMS_ITEM}' item")
  if not by_step:
    raise CheckpointError(f"{folder}: no step folder is a complete, committed checkpoint: " + "; ".join(problems))
  if steps == "latest":
    wanted = [max(by_step)]
  elif steps == "all":
    wanted = sorted(by_step)
  elif isinstance(steps, str):
    raise CheckpointError(f"checkpoint steps must be 'latest', 'all' or a list of steps, got {steps!r}")
  else:
    wanted = [int(s) for s in steps if int(s) in by_step]
    problems += [
        f"{folder}: step {s} not found among complete steps {sorted(by_step)}" for s in steps if int(s) not in by_step
    ]
    if not wanted:
      raise CheckpointError(f"{folder}: none of the steps {list(steps)} is a complete checkpoint "
                            f"(complete: {sorted(by_step)})")
  return [Checkpoint(str(by_step[s]), "orbax", s) for s in wanted], problems
