"""Hugging Face folders of any model family: read one into (config, params), write params back as one.

Where it sits: in `optiml_jax.checkpoints`, between a Hugging Face checkpoint on disk and the in-memory
`params` tree (`layout`); `optiml_jax.convert` re-exports `load_hf` / `save_hf` and drives them from its CLI.
The config class comes from config.json's `model_type` (`models/registry.py`: opt, llama, mistral, qwen2).

  HF folder (config.json + model.safetensors | sharded safetensors | pytorch_model.bin [+ index])
    --load_hf--> (config, params) --save_hf--> HF folder that `AutoModelForCausalLM.from_pretrained` loads
                                               (OPTForCausalLM, LlamaForCausalLM, MistralForCausalLM, ...)

`save_hf` writes config.json, model.safetensors (sharded with an index above `max_shard_size`) and, if given,
the tokenizer files, into a temporary sibling of the destination renamed into place when complete.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import layout
from optiml_jax.models import registry

Path = pathlib.Path | str

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME)
# What `save_pretrained` of a tokenizer writes: fast tokenizers, GPT-2 BPE files, SentencePiece models, chat templates.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "tokenizer.model", "chat_template.jinja", "chat_template.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"


def config_from_hf_dict(hf_config: Mapping[str, Any], source: str,
                        overrides: Mapping[str, Any] | None = None) -> layout.ModelConfig:
  """The config (OPTConfig, LlamaConfig) of a Hugging Face config dict, by its `model_type`, with `overrides`.

  Raises:
    layout.ConversionError: naming `source`, for an unsupported model_type (the supported ones are named),
      what the family's `from_hf` rejects (an activation it lacks, a missing shape key, ...) or an unknown
      override.
  """
  try:
    return registry.config_from_hf(dict(hf_config), **dict(overrides or {}))
  except (ValueError, TypeError, KeyError) as e:
    message = str(e).removeprefix(f"{CONFIG_NAME}: ")
    raise layout.ConversionError(f"{source}: {message}") from e


def _torch_to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top

  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _read_weight_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one safetensors or torch pickle file, as numpy arrays of the stored dtype."""
  if not path.is_file():
    raise layout.ConversionError(f"{path}: weight file not found")
  if path.suffix == ".safetensors":
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    try:
      with safe_open(str(path), framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open is not a dict)
    except Exception as e:  # safetensors raises its own error types for corrupt files.
      raise layout.ConversionError(f"{path}: cannot read safetensors: {e}") from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise layout.ConversionError(f"{path}: reading PyTorch pickles needs torch (pip install torch)") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or unsafe pickles.
    raise layout.ConversionError(f"{path}: cannot read PyTorch weights: {e}") from e
  return {key: _torch_to_numpy(value) for key, value in state.items()}


def read_hf_weights(hf_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Tensors of a Hugging Face folder and the file each came from (safetensors preferred, index or not)."""
  hf_dir = pathlib.Path(hf_dir)
  for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME)):
    files: Mapping[str, list[str] | None]  # file -> the tensors its index lists (None: a single file, all)
    if (hf_dir / single).is_file():
      files = {single: None}
    elif (hf_dir / index).is_file():
      weight_map = fileio.read_json(hf_dir / index).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise layout.ConversionError(f"{hf_dir / index}: expected a non-empty 'weight_map' of tensor name -> file")
      listed: dict[str, list[str]] = {}
      for key, name in weight_map.items():
        listed.setdefault(name, []).append(key)
      files = listed
    else:
      continue
    state: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}  # tensor name -> the file it came from
    for name, keys in files.items():
      tensors = _read_weight_file(hf_dir / name)
      for key in keys or ():
        if key not in tensors:
          raise layout.ConversionError(f"{hf_dir / name}: missing tensor {key} (listed in the index)")
      for key, value in tensors.items():
        if key in state:
          raise layout.ConversionError(f"{hf_dir / name}: tensor {key} also in {origin[key]}")
        state[key], origin[key] = value, str(hf_dir / name)
    return state, origin
  raise layout.ConversionError(f"{hf_dir}: no weights found (expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
                               f"{TORCH_WEIGHTS_NAME} or {TORCH_WEIGHTS_INDEX_NAME})")


def load_hf(path: Path, config_overrides: Mapping[str, Any] | None = None) -> tuple[layout.ModelConfig, layout.Params]:
  """Reads a local Hugging Face folder of any supported family into (config, params); arrays keep the file's dtype.

  Args:
    path: folder with config.json and model.safetensors, sharded safetensors with an index, or
      pytorch_model.bin (sharded or not).
    config_overrides: config fields to replace, e.g. {"scan_layers": True, "dtype": "bfloat16"}.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise layout.ConversionError(f"{path}: Hugging Face checkpoint folder not found")
  if not (path / CONFIG_NAME).is_file():
    raise layout.ConversionError(f"{path}: no {CONFIG_NAME} in this folder (is it a Hugging Face checkpoint?)")
  hf_config = fileio.read_json(path / CONFIG_NAME)
  if not isinstance(hf_config, dict):
    raise layout.ConversionError(f"{path / CONFIG_NAME}: expected a JSON object")
  config = config_from_hf_dict(hf_config, str(path / CONFIG_NAME), config_overrides)
  state, origin = read_hf_weights(path)
  # OPT always ties its head: a config.json that says otherwise must at least carry one (checked to be tied).
  untied = hf_config.get("tie_word_embeddings", True) is False
  if untied and layout.family_layout(config).ties_head(config) and layout.LM_HEAD not in state:
    raise layout.ConversionError(f"{path / CONFIG_NAME}: tie_word_embeddings is false but there is no {layout.LM_HEAD}")
  return config, layout.params_from_hf_state_dict(config, state, origin)


def parse_size(size: int | str) -> int:
  """Bytes in `size`: an int, or digits with a unit as Hugging Face writes them ("5GB", "500MiB", "10KB")."""
  if isinstance(size, int):
    if size <= 0:
      raise layout.ConversionError(f"max_shard_size: expected a positive size (e.g. 5GB, 500MB), got {size!r}")
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", size.upper())
  if not match:
    raise layout.ConversionError(f"max_shard_size: cannot parse {size!r}; expected e.g. 5GB, 500MB or a byte count")
  unit = match.group(2) or "B"
  base = 1024 if "I" in unit else 1000
  value = int(float(match.group(1)) * base**"BKMGT".index(unit[0]))
  if value <= 0:
    raise layout.ConversionError(f"max_shard_size: expected a positive size (e.g. 5GB, 500MB), got {size!r}")
  return value


def _shards(state: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Tensors in order, cut into groups of at most `max_bytes` (a larger tensor gets a group of its own)."""
  shards: list[dict[str, np.ndarray]] = []
  current: dict[str, np.ndarray] = {}
  size = 0
  for key, value in state.items():
    if current and size + value.nbytes > max_bytes:
      shards.append(current)
      current, size = {}, 0
    current[key] = value
    size += value.nbytes
  shards.append(current)
  return shards


def _dtype_name(state: Mapping[str, np.ndarray]) -> str | None:
  dtypes = {np.dtype(v.dtype) for v in state.values()}
  return str(dtypes.pop()) if len(dtypes) == 1 else None


def save_hf(config: layout.ModelConfig, params: Mapping[str, Any], path: Path, tokenizer_dir: Path | None = None,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False) -> pathlib.Path:
  """Writes a folder that `transformers.AutoModelForCausalLM.from_pretrained` loads; returns its path.

  Contents: config.json (`config.to_hf()`), model.safetensors (or model-0000i-of-0000n.safetensors with
  model.safetensors.index.json when larger than `max_shard_size`), and the tokenizer files of `tokenizer_dir`.
  Written into a temporary sibling and renamed into place when complete.
  """
  state = layout.hf_state_dict_from_params(config, params)
  hf_config = dict(config.to_hf())
  dtype = _dtype_name(state)
  if dtype in ("float32", "float16", "bfloat16"):
    # What the weights are: `from_pretrained(dtype="auto")` reads `dtype` (transformers 5) or `torch_dtype` (4.x).
    hf_config["dtype"] = hf_config["torch_dtype"] = dtype
  tokenizer_files = []
  if tokenizer_dir is not None:
    tokenizer_dir = pathlib.Path(tokenizer_dir)
    tokenizer_files = [tokenizer_dir / n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
    if not tokenizer_files:
      raise layout.ConversionError(
          f"{tokenizer_dir}: no tokenizer files (expected some of {', '.join(TOKENIZER_FILES)})")
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  shards = _shards(state, parse_size(max_shard_size))
  with fileio.staged_dir(path, overwrite) as tmp:
    (tmp / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if len(shards) == 1:
      save_file(shards[0], str(tmp / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    else:
      weight_map = {}
      for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
      index = {"metadata": {"total_size": sum(v.nbytes for v in state.values())}, "weight_map": weight_map}
      (tmp / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for file in tokenizer_files:
      shutil.copyfile(file, tmp / file.name)
  return pathlib.Path(path).absolute()
