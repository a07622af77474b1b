"""Parameter trees of every model family and their mapping to Hugging Face tensor names.

Where it sits: the base of `optiml_jax.checkpoints`, beside the models (`models/`); `hf` (folders) and
`orbax_io` (Orbax items) read and write through it, and `optiml_jax.convert` re-exports its public API.
Pure and in memory: no files are read or written here. Each family's names and shapes are tables in
`checkpoints/layouts/` (`opt.py`, `llama.py`), picked by `config.family`; this module is the machinery they share.

  HF state dict {"model.decoder.layers.0.fc1.weight": [out, in], ...}
    --params_from_hf_state_dict--> params {"layers": {"fc1": {"kernel": [layers, in, out]}}, ...}
    --hf_state_dict_from_params--> HF state dict (without a tied `lm_head.weight`)

Parameter names follow Hugging Face's (the family's prefix, "model.decoder." or "model.", stripped and
`.weight` -> kernel/embedding/scale); linear kernels are stored [in, out] where Hugging Face stores [out, in].
Layers are either stacked on a leading axis (`layers/...`, `config.scan_layers`) or one subtree each
(`layers_{i}/...`). A tied LM head is the token embedding `embed_tokens/embedding`, so `lm_head.weight` is then
only checked on reading and never written; an untied one is `lm_head/kernel`. Arrays keep their dtype (bfloat16
as `ml_dtypes.bfloat16`), so a round trip is bitwise identical.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from optiml_jax.checkpoints import layouts

Params = dict[str, Any]
ModelConfig = Any  # an OPTConfig or a LlamaConfig (`models/registry.py`)

LM_HEAD = "lm_head.weight"
EMBEDDING = ("embed_tokens", "embedding")  # What a tied head is, in every family.


class ConversionError(ValueError):
  """A checkpoint does not match what the config implies, or cannot be read or written."""


def family_layout(config: ModelConfig) -> layouts.FamilyLayout:
  """The Hugging Face tables of `config`'s family; ConversionError for a config of no known family."""
  try:
    return layouts.for_config(config)
  except ValueError as e:
    raise ConversionError(str(e)) from e


def _to_hf_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """Linear kernels are [in, out] in Flax and [out, in] in Hugging Face."""
  return tuple(reversed(shape)) if path[-1] == "kernel" else shape


def _outside_layers(config: ModelConfig) -> layouts.Table:
  """Flax path -> (full HF name, shape) of the parameters outside the layers, head included."""
  family = family_layout(config)
  table = {path: (family.prefix + name, shape) for path, (name, shape) in family.top(config).items()}
  table.update(family.head(config))
  return table


def param_shapes(config: ModelConfig, scan_layers: bool | None = None) -> dict[tuple[str, ...], tuple]:
  """Flat Flax path -> shape of every parameter the model of `config` has (scanned layers stacked)."""
  scan = config.scan_layers if scan_layers is None else scan_layers
  shapes = {path: shape for path, (_, shape) in _outside_layers(config).items()}
  for path, (_, shape) in family_layout(config).layer(config).items():
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


def _layer_index(key: Any) -> int | None:
  match = re.fullmatch(r"layers_(\d+)", str(key))
  return int(match.group(1)) if match else None


def relayout(tree: Any, scan_layers: bool, stack: Any = np.stack, unstack: Any = None,
             num_layers: int | None = None) -> Any:
  """`tree` with every layer container in the layout `scan_layers` asks for: stacked `layers/...` (one leading
  axis) or one `layers_{i}/...` subtree a layer. Any pytree: a params tree, or an optimizer state whose moments are
  params trees; a mapping counts as a container when it holds `layers` or `layers_{i}` keys, and other nodes
  (tuples, named tuples, leaves) are rebuilt around them, mappings as dicts. A container already in that layout is
  left as it is.

  `stack(list of leaves)` joins one tensor of every layer (np.stack; jnp.stack under jit); `unstack(leaf)` splits
  one into its layers (by default `leaf[i]` for each i). A checkpoint stored in one layout restores into a run
  that computes in the other (`scan_layers` is how a model is computed, not what it computes). `num_layers`: the
  stacked axis' length, for leaves without a shape (shardings); by default the leaves' leading dimension."""
  if isinstance(tree, Mapping):
    keys = list(tree.keys())
    if scan_layers and any(_layer_index(k) is not None for k in keys) and "layers" not in tree:
      layers = sorted((_layer_index(k), k) for k in keys if _layer_index(k) is not None)
      if [i for i, _ in layers] != list(range(len(layers))):
        raise ConversionError(f"layers {[i for i, _ in layers]} are not 0..{len(layers) - 1}: cannot stack them")
      first = layers[0][1]
      joined = _map_leaves(lambda *xs: stack(list(xs)), *[tree[k] for _, k in layers], like=tree[first])
      rest = {
          k: relayout(v, scan_layers, stack, unstack, num_layers) for k, v in tree.items() if _layer_index(k) is None
      }
      return {**rest, "layers": joined}
    if not scan_layers and "layers" in tree and isinstance(tree["layers"], Mapping):
      num = num_layers or _num_layers(tree["layers"])
      split = unstack or (lambda x: [x[i] for i in range(num)])
      parts = _map_leaves(lambda x: list(split(x)), tree["layers"], like=tree["layers"])
      out = {k: relayout(v, scan_layers, stack, unstack, num_layers) for k, v in tree.items() if k != "layers"}
      for i in range(num):
        out[f"layers_{i}"] = _map_leaves(lambda x, i=i: x[i], parts, like=tree["layers"])
      return out
    return {k: relayout(v, scan_layers, stack, unstack, num_layers) for k, v in tree.items()}
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a named tuple (optax states)
    return type(tree)(*(relayout(v, scan_layers, stack, unstack, num_layers) for v in tree))
  if isinstance(tree, (tuple, list)):
    return type(tree)(relayout(v, scan_layers, stack, unstack, num_layers) for v in tree)
  return tree


def _map_leaves(fn: Any, *trees: Any, like: Any) -> Any:
  """`fn` over the leaves of mappings shaped like `like` (nested mappings down to leaves)."""
  if isinstance(like, Mapping):
    return {k: _map_leaves(fn, *(t[k] for t in trees), like=like[k]) for k in like}
  return fn(*trees)


def _num_layers(stacked: Mapping[str, Any]) -> int:
  leaf: Any = stacked
  while isinstance(leaf, Mapping):
    leaf = next(iter(leaf.values()))
  return int(np.shape(leaf)[0])


def validate_params(config: ModelConfig, params: Mapping[str, Any], source: str = "params") -> bool:
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


def strip_hf_prefix(key: str, config: ModelConfig) -> str:
  """`key` without a prefix of `config`'s family (OPT: `model.decoder.x`, `decoder.x`; Llama: `model.x`) -> `x`.

  Other names (`lm_head.weight`, bare names) are returned unchanged.
  """
  family = family_layout(config)
  for prefix in (family.prefix,) + family.read_prefixes:
    if key.startswith(prefix):
      return key[len(prefix):]
  return key


def _same_tensor(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 22) -> bool:
  """Bitwise equality, dtype and shape included; compared `chunk` elements at a time (no copy of a whole tensor)."""
  if a.shape != b.shape or a.dtype != b.dtype:
    return False
  a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
  bits = np.dtype(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else np.dtype(np.uint8)
  a, b = a.view(bits), b.view(bits)
  return all(np.array_equal(a[i:i + chunk], b[i:i + chunk]) for i in range(0, a.size, chunk))


def params_from_hf_state_dict(config: ModelConfig, state_dict: Mapping[str, np.ndarray],
                              source: str | Mapping[str, str] = "state dict", *, consume: bool = False) -> Params:
  """Hugging Face tensors -> the nested `params` dict of the model of `config` (numpy, dtypes kept).

  Args:
    config: the model config (any family); `config.scan_layers` picks stacked `layers/...` or `layers_{i}/...`.
    state_dict: HF name -> array, names as the family's `*ForCausalLM` writes them (`model.decoder.` for OPT,
      `model.` for Llama), as its bare model does (`decoder.` for OPTModel, none for LlamaModel), or bare.
    source: where the tensors come from, for error messages: one name, or HF name -> file name (a missing
      tensor then names every file).
    consume: empty `state_dict` (a dict) once its tensors are taken, so that each file tensor is freed as soon as
      its parameter is made: the peak is then about the checkpoint's size plus one tensor, instead of twice the
      checkpoint (three times with stacked layers) while the caller still holds the file's tensors.

  Buffers that are no parameter and that transformers skips on loading (`FamilyLayout.ignored_buffers`: the
  per-layer `rotary_emb.inv_freq` of Llama files saved by transformers < 4.31) are skipped; any other tensor the
  config has no parameter for is an error. Every check is made before anything is copied.

  Raises:
    ConversionError: a missing, unexpected or misshapen tensor, or a `lm_head.weight` that differs from the
      embedding it is tied to.
  """
  family = family_layout(config)
  head_names = {name for name, _ in family.head(config).values()} | {LM_HEAD}

  def where(key: str) -> str:
    if not isinstance(source, Mapping):
      return source
    return source.get(key) or ", ".join(sorted(set(source.values()))) or "state dict"

  tensors: dict[str, tuple[str, np.ndarray]] = {}  # full canonical name -> (name as given, array)
  for key, value in state_dict.items():
    if family.ignored_buffers is not None and family.ignored_buffers.search(key):
      continue  # a buffer older files carry (Llama's rotary inv_freq), no parameter: transformers skips it too
    name = key if key in head_names else family.prefix + strip_hf_prefix(key, config)
    if name in tensors:
      raise ConversionError(f"{where(key)}: tensor {key} given twice (also as {tensors[name][0]})")
    tensors[name] = (key, value)
  if consume:
    state_dict.clear()  # type: ignore[attr-defined]  # `tensors` holds the only references now

  outside = _outside_layers(config)
  layer_table = family.layer(config)
  layer_names = {
      path: [f"{family.prefix}layers.{i}.{name}" for i in range(config.num_hidden_layers)]
      for path, (name, _) in layer_table.items()
  }
  # Checks first (names and shapes only), in the order of the parameters, layer by layer.
  wanted = [(name, path, shape) for path, (name, shape) in outside.items()]
  wanted += [(layer_names[path][i], path, shape)
             for i in range(config.num_hidden_layers)
             for path, (_, shape) in layer_table.items()]
  for name, path, shape in wanted:
    hf_shape = _to_hf_shape(path, shape)
    if name not in tensors:
      raise ConversionError(f"{where(name)}: missing tensor {name} (expected shape {hf_shape})")
    key, value = tensors[name]
    if tuple(value.shape) != hf_shape:
      raise ConversionError(f"{where(key)}: tensor {key}: expected shape {hf_shape}, got {tuple(value.shape)}")
  if LM_HEAD in tensors and family.ties_head(config):
    key, head = tensors.pop(LM_HEAD)
    if not _same_tensor(np.asarray(head), np.asarray(tensors[outside[EMBEDDING][0]][1])):
      raise ConversionError(f"{where(key)}: tensor {key} differs from {family.prefix}embed_tokens.weight; "
                            f"this {family.family} config ties the LM head to the token embedding")
    del head
  known = {name for name, _, _ in wanted}
  unexpected = [key for name, (key, _) in tensors.items() if name not in known]
  if unexpected:
    raise ConversionError(f"{where(unexpected[0])}: unexpected tensor {unexpected[0]} for this config; "
                          f"{len(unexpected)} unexpected in all")

  # Each tensor leaves `tensors` as its parameter is made, so that (consumed) it is freed at once.
  def take(name: str, path: tuple[str, ...]) -> np.ndarray:
    value = tensors.pop(name)[1]
    return np.ascontiguousarray(value.T) if path[-1] == "kernel" else np.asarray(value)

  flat = {path: take(name, path) for path, (name, _) in outside.items()}
  for path, names in layer_names.items():
    if not config.scan_layers:
      flat.update({(f"layers_{i}",) + path: take(name, path) for i, name in enumerate(names)})
      continue
    # Stacked: filled layer by layer (np.stack of a list would hold every layer twice).
    shape = layer_table[path][1]
    stacked = np.empty((len(names),) + shape, np.result_type(*(tensors[name][1].dtype for name in names)))
    for i, name in enumerate(names):
      value = tensors.pop(name)[1]
      stacked[i] = value.T if path[-1] == "kernel" else value
      del value
    flat[("layers",) + path] = stacked
  return _unflatten(flat)


def _to_numpy(x: Any) -> np.ndarray:
  if isinstance(x, np.ndarray):
    return x
  if hasattr(x, "addressable_shards") and not getattr(x, "is_fully_addressable", True):
    raise ConversionError("params hold arrays that span several processes; gather them first "
                          "(e.g. jax.experimental.multihost_utils.process_allgather)")
  return np.asarray(x)


def hf_state_dict_from_params(config: ModelConfig, params: Mapping[str, Any],
                              prefix: str | None = None) -> dict[str, np.ndarray]:
  """The `params` of the model of `config` (either layer layout) -> Hugging Face tensors.

  Names are as the family's `*ForCausalLM` has them, with `prefix` (default: the family's, "model.decoder." or
  "model.") in place of the family's prefix; an untied head is `lm_head.weight`. A tied head is left out:
  `from_pretrained` re-ties it.
  """
  family = family_layout(config)
  prefix = family.prefix if prefix is None else prefix
  scanned = validate_params(config, params)
  flat = flatten(unwrap(params))

  def hf_array(path: tuple[str, ...], value: Any) -> np.ndarray:
    value = _to_numpy(value)
    return np.ascontiguousarray(value.T if path[-1] == "kernel" else value)

  state = {prefix + name: hf_array(path, flat[path]) for path, (name, _) in family.top(config).items()}
  layer_table = family.layer(config)
  for i in range(config.num_hidden_layers):
    for path, (name, _) in layer_table.items():
      value = flat[("layers",) + path][i] if scanned else flat[(f"layers_{i}",) + path]
      state[f"{prefix}layers.{i}.{name}"] = hf_array(path, value)
  state.update({name: hf_array(path, flat[path]) for path, (name, _) in family.head(config).items()})
  return state
