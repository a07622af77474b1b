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
import os
import pathlib
import re
import shutil
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from optiml_jax import tempfiles
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


# safetensors' dtype names -> numpy dtypes (the format is little-endian); others are read by the safetensors library.
_SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8")
}
_READ_CHUNK = 1 << 28  # bytes per read() call (a single read of 2 GiB or more may be cut short)


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file, each read into an array of its own.

  No memory map: the safetensors library maps the file, and the mapped pages it touches count toward the process'
  memory until the file is closed, so reading a file that way peaks at twice its size. Here each tensor is read
  straight into its array (the library still checks the file first, and reads dtypes numpy lacks here).
  """
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  try:
    with safe_open(str(path), framework="np") as f:  # checks the header against the file's size
      keys = list(f.keys())
    tensors: dict[str, np.ndarray] = {}
    with path.open("rb") as file:
      header_size = int.from_bytes(file.read(8), "little")
      header = json.loads(file.read(header_size))
      for key in keys:
        info = header[key]
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
          with safe_open(str(path), framework="np") as f:
            tensors[key] = f.get_tensor(key)
          continue
        begin, end = info["data_offsets"]
        array = np.empty(tuple(info["shape"]), dtype)
        if array.nbytes != end - begin:
          raise layout.ConversionError(f"{path}: cannot read safetensors: tensor {key} has {end - begin} bytes for "
                                       f"shape {tuple(info['shape'])} of {info['dtype']}")
        buffer = array.reshape(-1).view(np.uint8)
        file.seek(8 + header_size + begin)
        for start in range(0, buffer.size, _READ_CHUNK):
          want = min(_READ_CHUNK, buffer.size - start)
          if file.readinto(buffer[start:start + want].data) != want:
            raise layout.ConversionError(f"{path}: cannot read safetensors: tensor {key} is cut short")
        tensors[key] = array
    return tensors
  except layout.ConversionError:
    raise
  except Exception as e:  # safetensors raises its own error types for corrupt files.
    raise layout.ConversionError(f"{path}: cannot read safetensors: {e}") from e


def _read_weight_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one safetensors or torch pickle file, as numpy arrays of the stored dtype."""
  if not path.is_file():
    raise layout.ConversionError(f"{path}: weight file not found")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
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
  return config, layout.params_from_hf_state_dict(config, state, origin, consume=True)  # frees `state` as it goes


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
  from safetensors.numpy import save_file as save_0600  # pylint: disable=g-import-not-at-top

  def save_file(tensors: dict[str, np.ndarray], file: str, metadata: dict[str, str]) -> None:
    save_0600(tensors, file, metadata=metadata)  # safetensors creates its file 0600 whatever the umask
    os.chmod(file, 0o666 & ~tempfiles.umask())  # as config.json beside it: readable by whoever serves the folder

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
