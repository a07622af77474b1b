"""Hugging Face OPT <-> Flax params and Orbax checkpoints, with a command line.

Where it sits: beside the model (`models/opt.py`), before the trainer and evaluation. It turns a Hugging Face
OPT folder into the Flax `params` tree of `OPT(config)` and back, and writes/reads the Orbax checkpoints that
training and evaluation start from:

  HF folder (config.json + model.safetensors | sharded safetensors | pytorch_model.bin [+ index])
    --load_hf--> (OPTConfig, params) --save_orbax--> OUT_DIR/{config.json, params/}
  OUT_DIR, or a CheckpointManager step folder or root
    --restore_orbax--> (OPTConfig, params) --save_hf--> HF folder that `OPTForCausalLM.from_pretrained` loads

Orbax layout written by `save_orbax` and read by `restore_orbax`:
  OUT_DIR/config.json   the Hugging Face config of the model (`OPTConfig.to_hf()`), so nothing else is needed
  OUT_DIR/params/       one Orbax PyTree item holding the `params` tree
The trainer's CheckpointManager writes `ROOT/<step>/params/`; `restore_orbax` accepts `ROOT/<step>` (config.json
looked up in the step folder, then in ROOT) and `ROOT` itself (its latest step).

Parameter names follow Hugging Face's OPT (`model.decoder.` stripped, `.weight` -> kernel/embedding/scale);
linear kernels are stored [in, out] where Hugging Face stores [out, in]. The LM head is tied to
`embed_tokens/embedding`, so `lm_head.weight` is only checked on reading and never written. Arrays keep the
dtype of the file (bfloat16 as `ml_dtypes.bfloat16`), so HF -> Orbax -> HF is bitwise identical.

Command line:
  python -m optiml_jax.convert hf-to-orbax HF_DIR OUT_DIR [--scan_layers | --no-scan_layers] [--overwrite]
  python -m optiml_jax.convert orbax-to-hf CKPT_DIR OUT_DIR [--tokenizer_dir DIR] [--max_shard_size 5GB]
      [--overwrite]
Both write into a temporary sibling of OUT_DIR and rename it into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import re
import shutil
import sys
import uuid
from typing import Any, Iterator, Mapping

import ml_dtypes
import numpy as np

from optiml_jax.models import opt as opt_lib

Params = dict[str, Any]
Path = pathlib.Path | str

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TORCH_WEIGHTS_NAME = "pytorch_model.bin"
TORCH_WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
PARAMS_ITEM = "params"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json")
DEFAULT_MAX_SHARD_SIZE = "5GB"
_HF_PREFIXES = ("model.decoder.", "decoder.")  # OPTForCausalLM, OPTModel.
_LM_HEAD = "lm_head.weight"


class ConversionError(ValueError):
  """A checkpoint does not match what the config implies, or cannot be read or written."""


# ----------------------------------------------------------------------------------------------------------
# The name and shape table: one entry per parameter, for one layer or for the whole decoder.
# ----------------------------------------------------------------------------------------------------------


def _has_final_layer_norm(config: opt_lib.OPTConfig) -> bool:
  return bool(config.do_layer_norm_before and config.layer_norm_elementwise_affine)


def _layer_table(config: opt_lib.OPTConfig) -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
  """Parameters of one decoder layer: Flax path -> (HF name inside `layers.{i}.`, Flax shape)."""
  hidden, ffn = config.hidden_size, config.ffn_dim
  table = {}

  def linear(path: tuple[str, ...], d_in: int, d_out: int) -> None:
    table[path + ("kernel",)] = (".".join(path) + ".weight", (d_in, d_out))
    if config.enable_bias:
      table[path + ("bias",)] = (".".join(path) + ".bias", (d_out,))

  for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
    linear(("self_attn", name), hidden, hidden)
  linear(("fc1",), hidden, ffn)
  linear(("fc2",), ffn, hidden)
  if config.layer_norm_elementwise_affine:
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
      table[(norm, "scale")] = (f"{norm}.weight", (hidden,))
      table[(norm, "bias")] = (f"{norm}.bias", (hidden,))
  return table


def _top_table(config: opt_lib.OPTConfig) -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
  """Parameters outside the layers: Flax path -> (HF name after `model.decoder.`, Flax shape)."""
  hidden, proj = config.hidden_size, config.word_embed_proj_dim
  table = {
      ("embed_tokens", "embedding"): ("embed_tokens.weight", (config.vocab_size, proj)),
      ("embed_positions", "embedding"): ("embed_positions.weight", (config.max_position_embeddings + 2, hidden)),
  }
  if proj != hidden:
    table[("project_in", "kernel")] = ("project_in.weight", (proj, hidden))
    table[("project_out", "kernel")] = ("project_out.weight", (hidden, proj))
  if _has_final_layer_norm(config):
    table[("final_layer_norm", "scale")] = ("final_layer_norm.weight", (hidden,))
    table[("final_layer_norm", "bias")] = ("final_layer_norm.bias", (hidden,))
  return table


def _to_hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Linear kernels are [in, out] in Flax and [out, in] in Hugging Face."""
  return tuple(reversed(shape)) if path[-1] == "kernel" else shape


def param_shapes(config: opt_lib.OPTConfig, scan_layers: bool | None = None) -> dict[tuple[str, ...], tuple]:
  """Flat Flax path -> shape of every parameter that `OPT(config)` has (scanned layers stacked)."""
  scan = config.scan_layers if scan_layers is None else scan_layers
  shapes = {path: shape for path, (_, shape) in _top_table(config).items()}
  for path, (_, shape) in _layer_table(config).items():
    if scan:
      shapes[("layers",) + path] = (config.num_hidden_layers,) + shape
    else:
      for i in range(config.num_hidden_layers):
        shapes[(f"layers_{i}",) + path] = shape
  return shapes


# ----------------------------------------------------------------------------------------------------------
# Trees.
# ----------------------------------------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (str(key),)))
    else:
      flat[prefix + (str(key),)] = value
  return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> Params:
  tree: Params = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts `{"params": tree}` (a Flax variables dict) as well as the tree itself."""
  if set(params.keys()) == {"params"} and isinstance(params["params"], Mapping):
    return params["params"]
  return params


def is_scanned(params: Mapping[str, Any]) -> bool | None:
  """True for stacked `layers/...`, False for `layers_{i}/...`, None when the tree has no layers."""
  keys = set(_unwrap(params).keys())
  if "layers" in keys:
    return True
  if any(re.fullmatch(r"layers_\d+", k) for k in keys):
    return False
  return None


def validate_params(config: opt_lib.OPTConfig, params: Mapping[str, Any], source: str = "params") -> bool:
  """Checks that `params` has exactly the paths and shapes `config` implies; returns whether it is scanned.

  The layer layout (stacked or not) is read from the tree, so either layout validates. Leaves only need a
  `.shape` (numpy arrays, jax.Arrays, jax.ShapeDtypeStruct, Orbax array metadata).

  Raises:
    ConversionError: naming `source`, the path and the expected vs. actual shape.
  """
  scanned = is_scanned(params)
  expected = param_shapes(config, config.scan_layers if scanned is None else scanned)
  flat = _flatten(_unwrap(params))
  missing = [p for p in expected if p not in flat]
  if missing:
    raise ConversionError(f"{source}: missing parameter {'/'.join(missing[0])} (expected shape "
                          f"{expected[missing[0]]}); {len(missing)} missing in all")
  unexpected = [p for p in flat if p not in expected]
  if unexpected:
    raise ConversionError(f"{source}: unexpected parameter {'/'.join(unexpected[0])} for this config; "
                          f"{len(unexpected)} unexpected in all")
  for path, shape in expected.items():
    actual = tuple(np.shape(flat[path]))
    if actual != shape:
      raise ConversionError(f"{source}: parameter {'/'.join(path)}: expected shape {shape}, got {actual}")
  return bool(config.scan_layers if scanned is None else scanned)


# ----------------------------------------------------------------------------------------------------------
# State dicts <-> params.
# ----------------------------------------------------------------------------------------------------------


def _normalize_key(key: str) -> str:
  for prefix in _HF_PREFIXES:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def _same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
  """Bitwise equality, dtype and shape included."""
  if a.shape != b.shape or a.dtype != b.dtype:
    return False
  return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def params_from_hf_state_dict(config: opt_lib.OPTConfig, state_dict: Mapping[str, np.ndarray],
                              source: str | Mapping[str, str] = "state dict") -> Params:
  """Hugging Face OPT tensors -> the nested `params` dict of `OPT(config)` (numpy, dtypes kept).

  Args:
    config: the model config; `config.scan_layers` picks stacked `layers/...` or `layers_{i}/...`.
    state_dict: HF name -> array, names as in OPTForCausalLM (`model.decoder.`), OPTModel (`decoder.`) or bare.
    source: where the tensors come from, for error messages: one name, or HF name -> file name (a missing
      tensor then names every file).

  Raises:
    ConversionError: a missing, unexpected or misshapen tensor, or an untied `lm_head.weight`.
  """
  def where(key: str) -> str:
    if not isinstance(source, Mapping):
      return source
    return source.get(key) or ", ".join(sorted(set(source.values()))) or "state dict"

  tensors: dict[str, tuple[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    name = _normalize_key(key)
    if name in tensors:
      raise ConversionError(f"{where(key)}: tensor {key} given twice (also as {tensors[name][0]})")
    tensors[name] = (key, value)

  def take(name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
      raise ConversionError(f"{where('model.decoder.' + name)}: missing tensor model.decoder.{name} "
                            f"(expected shape {_to_hf_shape(path, shape)})")
    key, value = tensors.pop(name)
    hf_shape = _to_hf_shape(path, shape)
    if tuple(value.shape) != hf_shape:
      raise ConversionError(f"{where(key)}: tensor {key}: expected shape {hf_shape}, got {tuple(value.shape)}")
    return np.ascontiguousarray(value.T) if path[-1] == "kernel" else np.asarray(value)

  flat = {path: take(name, path, shape) for path, (name, shape) in _top_table(config).items()}
  layer_table = _layer_table(config)
  layers = [{path: take(f"layers.{i}.{name}", path, shape) for path, (name, shape) in layer_table.items()}
            for i in range(config.num_hidden_layers)]
  if config.scan_layers:
    for path in layer_table:
      flat[("layers",) + path] = np.stack([layer[path] for layer in layers])
  else:
    for i, layer in enumerate(layers):
      flat.update({(f"layers_{i}",) + path: value for path, value in layer.items()})

  if _LM_HEAD in tensors:
    key, head = tensors.pop(_LM_HEAD)
    if not _same_tensor(np.asarray(head), flat[("embed_tokens", "embedding")]):
      raise ConversionError(f"{where(key)}: tensor {key} differs from model.decoder.embed_tokens.weight; "
                            "this OPT ties the LM head to the token embedding")
  if tensors:
    key = next(iter(tensors.values()))[0]
    raise ConversionError(f"{where(key)}: unexpected tensor {key} for this config; "
                          f"{len(tensors)} unexpected in all")
  return _unflatten(flat)


def _to_numpy(x: Any) -> np.ndarray:
  if isinstance(x, np.ndarray):
    return x
  if hasattr(x, "addressable_shards") and not getattr(x, "is_fully_addressable", True):
    raise ConversionError("params hold arrays that span several processes; gather them first "
                          "(e.g. jax.experimental.multihost_utils.process_allgather)")
  return np.asarray(x)


def hf_state_dict_from_params(config: opt_lib.OPTConfig, params: Mapping[str, Any],
                              prefix: str = "model.decoder.") -> dict[str, np.ndarray]:
  """The `params` of `OPT(config)` (either layer layout) -> Hugging Face tensors named `{prefix}...`.

  `lm_head.weight` is left out: OPT ties it to the token embedding and `from_pretrained` re-ties it.
  """
  scanned = validate_params(config, params)
  flat = _flatten(_unwrap(params))

  def hf_array(path: tuple[str, ...], value: Any) -> np.ndarray:
    value = _to_numpy(value)
    return np.ascontiguousarray(value.T if path[-1] == "kernel" else value)

  state = {prefix + name: hf_array(path, flat[path]) for path, (name, _) in _top_table(config).items()}
  layer_table = _layer_table(config)
  for i in range(config.num_hidden_layers):
    for path, (name, _) in layer_table.items():
      value = flat[("layers",) + path][i] if scanned else flat[(f"layers_{i}",) + path]
      state[f"{prefix}layers.{i}.{name}"] = hf_array(path, value)
  return state


# ----------------------------------------------------------------------------------------------------------
# Hugging Face folders.
# ----------------------------------------------------------------------------------------------------------


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path}: cannot read JSON: {e}") from e


def config_from_hf_dict(hf_config: Mapping[str, Any], source: str,
                        overrides: Mapping[str, Any] | None = None) -> opt_lib.OPTConfig:
  """An OPTConfig from a Hugging Face config dict, with `overrides` (OPTConfig fields) applied.

  Raises:
    ConversionError: naming `source`, for what `OPTConfig.from_hf` rejects (another model_type, an activation
      other than relu, a missing shape key, ...) or an unknown override.
  """
  try:
    return opt_lib.OPTConfig.from_hf(dict(hf_config), **dict(overrides or {}))
  except (ValueError, TypeError, KeyError) as e:
    message = str(e).removeprefix(f"{CONFIG_NAME}: ")
    raise ConversionError(f"{source}: {message}") from e


def _torch_to_numpy(tensor: Any) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top

  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


def _read_weight_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """All tensors of one safetensors or torch pickle file, as numpy arrays of the stored dtype."""
  if not path.is_file():
    raise ConversionError(f"{path}: weight file not found")
  if path.suffix == ".safetensors":
    from safetensors import safe_open  # pylint: disable=g-import-not-at-top

    try:
      with safe_open(str(path), framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files.
      raise ConversionError(f"{path}: cannot read safetensors: {e}") from e
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError(f"{path}: reading PyTorch pickles needs torch (pip install torch)") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or unsafe pickles.
    raise ConversionError(f"{path}: cannot read PyTorch weights: {e}") from e
  return {key: _torch_to_numpy(value) for key, value in state.items()}


def read_hf_weights(hf_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Tensors of a Hugging Face folder and the file each came from (safetensors preferred, index or not)."""
  hf_dir = pathlib.Path(hf_dir)
  for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (TORCH_WEIGHTS_NAME, TORCH_WEIGHTS_INDEX_NAME)):
    if (hf_dir / single).is_file():
      files = {single: None}
    elif (hf_dir / index).is_file():
      weight_map = _read_json(hf_dir / index).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{hf_dir / index}: expected a non-empty 'weight_map' of tensor name -> file")
      files = {}
      for key, name in weight_map.items():
        files.setdefault(name, []).append(key)
    else:
      continue
    state, origin = {}, {}
    for name, keys in files.items():
      tensors = _read_weight_file(hf_dir / name)
      for key in keys or ():
        if key not in tensors:
          raise ConversionError(f"{hf_dir / name}: missing tensor {key} (listed in the index)")
      for key, value in tensors.items():
        if key in state:
          raise ConversionError(f"{hf_dir / name}: tensor {key} also in {origin[key]}")
        state[key], origin[key] = value, str(hf_dir / name)
    return state, origin
  raise ConversionError(f"{hf_dir}: no weights found (expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME}, "
                        f"{TORCH_WEIGHTS_NAME} or {TORCH_WEIGHTS_INDEX_NAME})")


def load_hf(path: Path, config_overrides: Mapping[str, Any] | None = None
            ) -> tuple[opt_lib.OPTConfig, Params]:
  """Reads a local Hugging Face OPT folder into (OPTConfig, params); arrays keep the file's dtype.

  Args:
    path: folder with config.json and model.safetensors, sharded safetensors with an index, or
      pytorch_model.bin (sharded or not).
    config_overrides: OPTConfig fields to replace, e.g. {"scan_layers": True, "dtype": "bfloat16"}.
  """
  path = pathlib.Path(path)
  if not path.is_dir():
    raise ConversionError(f"{path}: Hugging Face checkpoint folder not found")
  if not (path / CONFIG_NAME).is_file():
    raise ConversionError(f"{path}: no {CONFIG_NAME} in this folder (is it a Hugging Face OPT checkpoint?)")
  hf_config = _read_json(path / CONFIG_NAME)
  config = config_from_hf_dict(hf_config, str(path / CONFIG_NAME), config_overrides)
  state, origin = read_hf_weights(path)
  if hf_config.get("tie_word_embeddings", True) is False and _LM_HEAD not in {_normalize_key(k) for k in state}:
    raise ConversionError(f"{path / CONFIG_NAME}: tie_word_embeddings is false but there is no {_LM_HEAD}")
  return config, params_from_hf_state_dict(config, state, origin)


def parse_size(size: int | str) -> int:
  """Bytes in `size`: an int, or digits with a unit as Hugging Face writes them ("5GB", "500MiB", "10KB")."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", size.upper())
  if not match:
    raise ConversionError(f"max_shard_size: cannot parse {size!r}; expected e.g. 5GB, 500MB or a byte count")
  unit = match.group(2) or "B"
  base = 1024 if "I" in unit else 1000
  return int(float(match.group(1)) * base ** "BKMGT".index(unit[0]))


def _shards(state: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Tensors in order, cut into groups of at most `max_bytes` (a larger tensor gets a group of its own)."""
  shards, current, size = [], {}, 0
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


def check_out_dir(path: Path, overwrite: bool = False) -> None:
  """Raises ConversionError unless `path` is absent, an empty folder, or a folder to overwrite."""
  path = pathlib.Path(path)
  if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not overwrite)):
    raise ConversionError(f"{path}: exists and is not an empty folder (pass overwrite=True / --overwrite)")


@contextlib.contextmanager
def _staged_dir(path: Path, overwrite: bool = False) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary sibling of `path`, renamed to `path` when the block completes.

  On any failure the temporary folder (and any parent folder made for it) is removed and `path` is untouched.
  """
  path = pathlib.Path(path).absolute()
  check_out_dir(path, overwrite)
  made = [p for p in reversed(path.parents) if not p.exists()]
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:8]}"
  tmp.mkdir()
  try:
    yield tmp
    if path.exists():
      old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
      path.rename(old)
      tmp.rename(path)
      shutil.rmtree(old)
    else:
      tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for parent in reversed(made):
      with contextlib.suppress(OSError):
        parent.rmdir()
    raise


def save_hf(config: opt_lib.OPTConfig, params: Mapping[str, Any], path: Path, tokenizer_dir: Path | None = None,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False) -> pathlib.Path:
  """Writes a folder that `transformers.OPTForCausalLM.from_pretrained` loads; returns its path.

  Contents: config.json (`config.to_hf()`), model.safetensors (or model-0000i-of-0000n.safetensors with
  model.safetensors.index.json when larger than `max_shard_size`), and the tokenizer files of `tokenizer_dir`.
  Written into a temporary sibling and renamed into place when complete.
  """
  state = hf_state_dict_from_params(config, params)
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
      raise ConversionError(f"{tokenizer_dir}: no tokenizer files (expected some of {', '.join(TOKENIZER_FILES)})")
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  shards = _shards(state, parse_size(max_shard_size))
  with _staged_dir(path, overwrite) as tmp:
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


# ----------------------------------------------------------------------------------------------------------
# Orbax.
# ----------------------------------------------------------------------------------------------------------


def save_orbax(params: Mapping[str, Any], path: Path, config: opt_lib.OPTConfig | None = None,
               overwrite: bool = False) -> pathlib.Path:
  """Writes `path/params` (an Orbax PyTree item) and, given `config`, `path/config.json`; returns `path`.

  Single-process: it stages into a temporary sibling of `path` and renames it into place when complete.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  params = _unwrap(params)
  if config is not None:
    validate_params(config, params, source=f"params for {path}")
  with _staged_dir(path, overwrite) as tmp:
    if config is not None:
      (tmp / CONFIG_NAME).write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      checkpointer.save(tmp / PARAMS_ITEM, args=ocp.args.PyTreeSave(dict(params)))
  return pathlib.Path(path).absolute()


def _is_orbax_item(path: pathlib.Path) -> bool:
  return (path / "_METADATA").is_file() or (path / "manifest.ocdbt").is_file()


def find_params_item(path: Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
  """The Orbax `params` item under `path` and the folders to look for config.json in, nearest first.

  `path` may be a `save_orbax` folder, the `params` item itself, a CheckpointManager step folder, or a
  CheckpointManager root (its highest numbered step that has a `params` item).
  """
  path = pathlib.Path(path).absolute()
  if not path.is_dir():
    raise ConversionError(f"{path}: checkpoint folder not found")
  if (path / PARAMS_ITEM).is_dir():
    return path / PARAMS_ITEM, [path, path.parent]
  if _is_orbax_item(path):
    return path, [path, path.parent, path.parent.parent]
  steps = [p for p in path.iterdir() if p.name.isdigit() and (p / PARAMS_ITEM).is_dir()]
  if steps:
    step = max(steps, key=lambda p: int(p.name))
    return step / PARAMS_ITEM, [step, path]
  raise ConversionError(f"{path}: no Orbax '{PARAMS_ITEM}' item here (expected {path}/{PARAMS_ITEM}/, "
                        f"or step folders <step>/{PARAMS_ITEM}/)")


def _sharding_of(spec: Any) -> Any:
  return getattr(spec, "sharding", spec)


def restore_orbax(path: Path, shardings: Any = None, config: opt_lib.OPTConfig | None = None
                  ) -> tuple[opt_lib.OPTConfig, Params]:
  """Reads params written by `save_orbax` or a CheckpointManager; returns (OPTConfig, params).

  Args:
    path: see `find_params_item`.
    shardings: None for numpy arrays; one `jax.sharding.Sharding` for every array; or a tree like params
      whose leaves are shardings or `jax.ShapeDtypeStruct`s with a sharding. Arrays then come back as
      jax.Arrays with those shardings.
    config: the model config; by default read from config.json beside the item.

  The returned config's `scan_layers` follows the stored tree (stacked `layers/` or `layers_{i}/`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item, config_dirs = find_params_item(path)
  if config is None:
    found = [d / CONFIG_NAME for d in config_dirs if (d / CONFIG_NAME).is_file()]
    if not found:
      raise ConversionError(f"{item}: no {CONFIG_NAME} in {', '.join(map(str, config_dirs))}; pass config=")
    config = config_from_hf_dict(_read_json(found[0]), str(found[0]))
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(item)
  except (OSError, ValueError) as e:
    raise ConversionError(f"{item}: cannot read Orbax metadata: {e}") from e
  metadata = getattr(metadata, "tree", metadata)  # Newer orbax wraps the tree in a TreeMetadata.
  scanned = validate_params(config, metadata, source=str(item))
  if shardings is None:
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), metadata)
    target = None
  else:
    if isinstance(shardings, jax.sharding.Sharding):
      sharding_tree = jax.tree.map(lambda _: shardings, metadata)
    else:
      sharding_tree = dict(_unwrap(shardings))
    try:
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_sharding_of(s)),
                            metadata, sharding_tree)
    except ValueError as e:
      raise ConversionError(f"{item}: shardings do not match the stored tree: {e}") from e
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    params = checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  return dataclasses.replace(config, scan_layers=scanned), params


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  to_orbax = commands.add_parser("hf-to-orbax", help="Hugging Face OPT folder -> OUT_DIR/{config.json,params}")
  to_orbax.add_argument("hf_dir", help="folder with config.json and safetensors or pytorch_model.bin weights")
  to_orbax.add_argument("out_dir", help="Orbax checkpoint folder to create")
  to_orbax.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=None,
                        help="stack layers on a leading axis (default: OPTConfig's default)")
  to_hf = commands.add_parser("orbax-to-hf", help="Orbax checkpoint -> Hugging Face OPT folder")
  to_hf.add_argument("ckpt_dir", help="save_orbax folder, CheckpointManager step folder or root")
  to_hf.add_argument("out_dir", help="Hugging Face folder to create")
  to_hf.add_argument("--tokenizer_dir", default=None, help="copy tokenizer files from this folder")
  to_hf.add_argument("--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB, 500MB")
  for sub in (to_orbax, to_hf):
    sub.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    check_out_dir(args.out_dir, args.overwrite)  # Before the (possibly long) read.
    if args.command == "hf-to-orbax":
      overrides = {} if args.scan_layers is None else {"scan_layers": args.scan_layers}
      config, params = load_hf(args.hf_dir, overrides)
      out = save_orbax(params, args.out_dir, config, overwrite=args.overwrite)
    else:
      config, params = restore_orbax(args.ckpt_dir)
      out = save_hf(config, params, args.out_dir, args.tokenizer_dir, args.max_shard_size, args.overwrite)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
