"""What MODEL_DIR and the initial checkpoint must be before a run builds or compiles anything.

Sits under `trainer.loop.run` (and `python -m optiml_jax.train`, which calls `check` before it registers the
catalog): each problem is a `ConfigError` naming the binding, which the entry point turns into exit code 2.

  * MODEL_DIR must be a training run's folder, or not exist yet: not a file, not a Hugging Face model folder
    (config.json and weights) and not an Orbax checkpoint of `convert` (or one step folder of a run): a run
    writes config.json and the tokenizer files into MODEL_DIR, which would overwrite those of the model. Such
    a folder is what INITIAL_CHECKPOINT_PATH takes. (Told apart by `checkpoints.discovery`, on local paths; a
    bucket is left to the storage layer.)
  * A run that resumes (MODEL_DIR has step folders) must train the model MODEL_DIR/config.json describes, and
    a run that starts from INITIAL_CHECKPOINT_PATH (MODEL_DIR has no step folder yet) the model of that
    checkpoint's config.json, where it has one. Only the architecture must match: the fields that change the
    function the weights compute. How it is computed (dtypes, scanned layers, remat, the attention kernel,
    packed-attention segments), dropout, the initializer's scale and the special token ids config.json carries
    for generation may differ (`NON_ARCHITECTURE_FIELDS`; also a Llama-family max_position_embeddings). A
    changed head count keeps every tensor's shape, so without this check such a run would restore and train a
    different model, and its config.json would describe the wrong one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from etils import epath

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.models import registry
from optiml_jax.trainer import config as config_lib

MODEL_DIR = "CheckpointArgs.model_dir (MODEL_DIR)"
INITIAL_CHECKPOINT = "ModelArgs.initial_checkpoint_path (INITIAL_CHECKPOINT_PATH)"

# Fields of the model configs (models/*_config.py) a checkpoint and the run that continues from it may disagree on:
# how the model is computed, regularised and initialised, and the token ids config.json carries for generation.
NON_ARCHITECTURE_FIELDS = frozenset({
    "dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl", "packed_attention_segments", "dropout",
    "attention_dropout", "init_std", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id"
})
# Per family, fields that are a limit only: rotary positions have no table, so max_position_embeddings sizes no
# parameter of a Llama-family model (OPT's learned position table it does size).
LIMIT_FIELDS = {"llama": frozenset({"max_position_embeddings"})}
REL_TOLERANCE = 1e-6  # floats as config.json carries them: a GGUF's float32 rms_norm_eps reads 9.999999747e-06


def is_remote(path: str) -> bool:
  """Whether `path` is a bucket or another URL `etils.epath` reads (`gs://...`), not a local path."""
  return "://" in path


def check(config: config_lib.TrainConfig) -> None:
  """Every check of this module (its docstring); raises ConfigError naming the binding and what was expected."""
  model_dir = config.checkpoint.model_dir
  check_model_dir(model_dir)
  if has_steps(model_dir):  # a resume: the initial checkpoint is ignored
    check_resumed_model(model_dir, config.model.config)
  elif config.model.initial_checkpoint_path:
    check_initial_model(config.model.initial_checkpoint_path, config.model.config)


def check_model_dir(model_dir: str) -> None:
  """Raises ConfigError when `model_dir` is a file, a Hugging Face model folder or an Orbax checkpoint."""
  path = epath.Path(model_dir)
  if path.exists() and not path.is_dir():
    raise config_lib.ConfigError(f"{MODEL_DIR}: {model_dir} is a file; expected a folder for the run's checkpoints "
                                 "and logs (a new one, or the MODEL_DIR of the run to resume)")
  if is_remote(model_dir) or not path.is_dir():
    return
  restart = (f"to train from it, give it as INITIAL_CHECKPOINT_PATH (--gin.INITIAL_CHECKPOINT_PATH={model_dir}) "
             "and a new folder as MODEL_DIR")
  if discovery.is_hf_folder(model_dir):
    raise config_lib.ConfigError(
        f"{MODEL_DIR}: {model_dir} is a Hugging Face model folder (config.json and weights), not a training run's "
        f"MODEL_DIR: the run would overwrite its config.json and tokenizer files; {restart}")
  if discovery.has_params(model_dir) or discovery.is_orbax_item(model_dir):
    raise config_lib.ConfigError(
        f"{MODEL_DIR}: {model_dir} is an Orbax checkpoint (a `convert` folder, a run's step folder or its "
        f"'{discovery.PARAMS_ITEM}' item), not a training run's MODEL_DIR: the run would overwrite its config.json "
        f"and tokenizer files; {restart}")


def has_steps(model_dir: str) -> bool:
  """Whether `model_dir` holds a step folder (`<step>/`, committed or not, or set aside as unrestorable)."""
  path = epath.Path(model_dir)
  return path.is_dir() and any(p.name.split(".")[0].isdigit() for p in path.iterdir() if p.is_dir())


def _read_config(path: epath.Path) -> Any | None:
  """The model config a config.json describes; None when it cannot be read or is no model config this package
  builds (the restore or load that follows names such problems: nothing is compared)."""
  try:
    return registry.config_from_hf(json.loads(path.read_text(encoding="utf-8")))
  except (OSError, ValueError, TypeError, AttributeError):
    return None


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
  """Equal, floats within REL_TOLERANCE (also inside dataclasses such as rope_scaling, dicts and sequences)."""
  if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
    return type(a) is type(b) and _same(vars(a), vars(b))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if _is_number(a) and _is_number(b) and (isinstance(a, float) or isinstance(b, float)):
    return math.isclose(a, b, rel_tol=REL_TOLERANCE)
  return a == b


def architecture_differences(configured: Any, saved: Any) -> list[str]:
  """'field: X configured, Y there' for every architecture field two model configs disagree on (family first)."""
  if type(configured) is not type(saved):
    return [
        f"family: {registry.family_of(configured).name} ({type(configured).__name__}) configured, "
        f"{registry.family_of(saved).name} ({type(saved).__name__}) there"
    ]
  ignored = NON_ARCHITECTURE_FIELDS | LIMIT_FIELDS.get(registry.family_of(configured).name, frozenset())
  differences = []
  for field in dataclasses.fields(configured):
    if field.name in ignored:
      continue
    ours, theirs = getattr(configured, field.name), getattr(saved, field.name)
    if not _same(ours, theirs):
      differences.append(f"{field.name}: {ours!r} configured, {theirs!r} there")
  return differences


def check_resumed_model(model_dir: str, configured: Any) -> None:
  """Raises ConfigError when `model_dir` has step folders and its config.json describes another architecture."""
  if not has_steps(model_dir):
    return  # nothing to resume: the run starts from scratch and writes its own config.json
  config_file = epath.Path(model_dir) / hf_lib.CONFIG_NAME
  if not config_file.exists():
    return  # written before the trainer saved config.json: nothing to compare with
  saved = _read_config(config_file)
  if saved is None:
    return
  differences = architecture_differences(configured, saved)
  if differences:
    raise config_lib.ConfigError(
        f"ModelArgs.config: the model differs from the one the run in {model_dir} was trained with "
        f"({config_file}): {'; '.join(differences)}. Resume with that model (dtypes, dropout, remat, scan and the "
        "attention kernel may change), or train the new model into another MODEL_DIR")


def initial_config_file(path: str) -> str | None:
  """The config.json of an initial checkpoint (`checkpoints.discovery`: a Hugging Face folder's own, an Orbax
  folder's beside its params item or in the MODEL_DIR above a step folder), or None."""
  if is_remote(path) or not os.path.isdir(path):
    return None
  try:
    if discovery.kind_of(path) == discovery.HF:
      folders = [epath.Path(path)]
    else:
      _, found = discovery.find_params_item(path)
      folders = [epath.Path(f) for f in found]
  except discovery.CheckpointError:
    return None  # a partial or empty checkpoint: loading it names the problem
  for folder in folders:
    if (folder / hf_lib.CONFIG_NAME).is_file():
      return str(folder / hf_lib.CONFIG_NAME)
  return None


def check_initial_model(path: str, configured: Any) -> None:
  """Raises ConfigError when the initial checkpoint's config.json describes another architecture."""
  config_file = initial_config_file(path)
  if config_file is None:
    return
  saved = _read_config(epath.Path(config_file))
  if saved is None:
    return
  differences = architecture_differences(configured, saved)
  if differences:
    raise config_lib.ConfigError(
        f"{INITIAL_CHECKPOINT}: {path} holds another model than ModelArgs.config ({config_file}): "
        f"{'; '.join(differences)}. Configure the checkpoint's architecture (dtypes, dropout, remat, scan and the "
        "attention kernel may differ)")
