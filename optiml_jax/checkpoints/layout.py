"""The parameter tree of `OPT(config)` and its mapping to Hugging Face OPT tensor names.

Where it sits: the base of `optiml_jax.checkpoints`, beside the model (`models/opt.py`); `hf` (folders) and
`orbax_io` (Orbax items) read and write through it, and `optiml_jax.convert` re-exports its public API.
Pure and in memory: no files are read or written here.

  HF state dict {"model.decoder.layers.0.fc1.weight": [out, in], ...}
    --params_from_hf_state_dict--> params {"layers": {"fc1": {"kernel": [layers, in, out]}}, ...}
    --hf_state_dict_from_params--> HF state dict (without the tied `lm_head.weight`)

Parameter names follow Hugging Face's OPT (`model.decoder.` stripped, `.weight` -> kernel/embedding/scale);
linear kernels are stored [in, out] where Hugging Face stores [out, in]. Layers are either stacked on a
leading axis (`layers/...`, `config.scan_layers`) or one subtree each (`layers_{i}/...`). The LM head is tied
to `embed_tokens/embedding`, so `lm_head.weight` is only checked on reading and never written. Arrays keep
their dtype (bfloat16 as `ml_dtypes.bfloat16`), so a round trip is bitwise identical.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from optiml_jax.models import opt as opt_lib

Params = dict[str, Any]

LM_HEAD = "lm_head.weight"
_HF_PREFIXES = ("model.decoder.", "decoder.")  # OPTForCausalLM, OPTModel.


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
  table: dict[tuple[str, ...], tuple[str, tuple[int, ...]]] = {}

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
  hidden, proj = config.hidden_size, config.embed_dim
  table: dict[tuple[str, ...], tuple[str, tuple[int, ...]]] = {
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


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """A nested mapping -> {path tuple: leaf}, e.g. {("layers", "fc1", "kernel"): array}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, prefix + (str(key),)))
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


def unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  """Accepts `{"params": tree}` (a Flax variables dict) as well as the tree itself."""
  if set(params.keys()) == {"params"} and isinstance(params["params"], Mapping):
    return params["params"]
  return params


def is_scanned(params: Mapping[str, Any]) -> bool | None:
  """True for stacked `layers/...`, False for `layers_{i}/...`, None when the tree has no layers."""
  keys = set(unwrap(params).keys())
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
  flat = flatten(unwrap(params))
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


def strip_hf_prefix(key: str) -> str:
  """`model.decoder.x` or `decoder.x` -> `x`; other names unchanged."""
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
    name = strip_hf_prefix(key)
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
  layers = [{
      path: take(f"layers.{i}.{name}", path, shape) for path, (name, shape) in layer_table.items()
  } for i in range(config.num_hidden_layers)]
  if config.scan_layers:
    for path in layer_table:
      flat[("layers",) + path] = np.stack([layer[path] for layer in layers])
  else:
    for i, layer in enumerate(layers):
      flat.update({(f"layers_{i}",) + path: value for path, value in layer.items()})

  if LM_HEAD in tensors:
    key, head = tensors.pop(LM_HEAD)
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
  flat = flatten(unwrap(params))

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
