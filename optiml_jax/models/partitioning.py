"""Logical axis names -> device mesh axes: the one rule table, mesh construction and parameter sharding.

Where it sits: the family modules (models/opt.py, models/llama.py, built from models/layers.py) name every
parameter axis (the `params_axes` collection) and activation axis logically; the trainer and evaluation build
a ("data", "fsdp", "tensor") mesh with `make_mesh`, turn the logical names into `NamedSharding`s with
`LOGICAL_AXIS_RULES`, place or create the parameters with them, and run the model inside `mesh_context` so
that activation constraints take effect.

How the table reads (rules are tried in order; a mesh axis is used at most once per array, so for
activations [batch, length, embed] "batch" takes data+fsdp first and "embed" stays unsharded):
  q_proj/kernel ("layers", "embed", "joined_kv") -> (None, "fsdp", "tensor")
  fc2/kernel    ("layers", "mlp", "embed")       -> (None, "tensor", "fsdp")
  logits        ("batch", "length", "vocab")     -> (("data", "fsdp"), None, "tensor")
  Llama keys    ("batch", "length", "kv_heads", "kv") -> (("data", "fsdp"), None, "tensor", None)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import flax
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
from jax.experimental import mesh_utils
import numpy as np

MESH_AXES = ("data", "fsdp", "tensor")

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Examples are split over every data-parallel replica: plain data parallelism and FSDP (ZeRO-3).
    ("batch", ("data", "fsdp")),
    # Tensor (Megatron) parallelism: the vocabulary of the embedding / tied LM head and the logits,
    ("vocab", "tensor"),
    # the feed-forward width (fc1 columns, fc2 rows),
    ("mlp", "tensor"),
    # the fused q/k/v output columns and out_proj input rows (whole heads, since heads are contiguous),
    ("joined_kv", "tensor"),
    # the heads of the [batch, length, heads, kv] attention activations,
    ("heads", "tensor"),
    # and the key/value heads of grouped-query attention ([batch, length, kv_heads, kv] keys, values and their
    # decode cache; the Llama family): each tensor shard keeps the kv heads its query heads read, as the
    # k_proj/v_proj columns ("joined_kv") are split the same way. Best with kv_heads a multiple of the tensor
    # size; otherwise (2 kv heads on tensor=4) results are the same but XLA regathers keys and values.
    ("kv_heads", "tensor"),
    # FSDP: the model dimension of every weight; activations' embed loses to "batch" (listed first).
    ("embed", "fsdp"),
    # Kept whole: the narrow token-embedding width of opt-350m (512), the position table rows, the
    # stacked layer axis of scanned params (each scan step needs its layer locally), the sequence (no
    # sequence parallelism), and the per-head width.
    ("proj", None),
    ("abspos", None),
    ("layers", None),
    ("length", None),
    ("kv", None),
)


def sequence_parallel_rules(rules: LogicalRules = LOGICAL_AXIS_RULES) -> tuple[tuple[str, Any], ...]:
  """`rules` with "length" mapped to "tensor", ranked just before the first "embed" rule.

  Megatron-style sequence parallelism (Korthikanti et al. 2022): between the tensor-parallel blocks, the
  residual stream ("batch", "length", "embed") -> (("data", "fsdp"), "tensor", None), so the layer inputs
  that full remat keeps for the backward pass are split over the tensor axis instead of replicated on it;
  heads, feed-forward and logits keep "tensor" on their own axis (it is ranked first). Parameters carry no
  "length" axis, so their shardings do not change. What lets 175B fit 32 GiB chips (`python -m
  optiml_jax.plan`); `PartitioningArgs.sequence_parallel = True` trains with it.

  Raises:
    ValueError: when `rules` has no "embed" rule to rank against.
  """
  kept = tuple((name, target) for name, target in rules if name != "length")
  names = [name for name, _ in kept]
  if "embed" not in names:
    raise ValueError(f"sequence_parallel_rules: the rule table has no 'embed' rule (rules: {names})")
  at = names.index("embed")
  return kept[:at] + (("length", "tensor"),) + kept[at:]


SEQUENCE_PARALLEL_RULES = sequence_parallel_rules()


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all); one size may be -1 (the rest).

  Axes are of type Auto (shardings propagate as in pjit / t5x), on jax 0.10 and 0.11 alike. The devices are
  ordered by `jax.make_mesh` (on a TPU slice, by their place in the torus). It splits no side of a TPU v4, v5p or
  v6e torus, so a mesh axis that is no product of whole sides (tensor = 4 on v6e-64's 8x8 chips) is laid out by
  JAX's mesh utilities splitting one, as `jax.make_mesh` itself does on v5e.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"make_mesh: sizes (data={data}, fsdp={fsdp}, tensor={tensor}) must be positive, "
                     "with at most one -1")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if len(devices) % known:
      raise ValueError(f"make_mesh: {len(devices)} devices are not divisible by {known} "
                       f"(data={data}, fsdp={fsdp}, tensor={tensor})")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"make_mesh: data*fsdp*tensor = {math.prod(sizes)} (data={sizes[0]}, fsdp={sizes[1]}, "
                     f"tensor={sizes[2]}) but there are {len(devices)} devices")
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)
  except NotImplementedError:  # JAX's "failed to find assignment": an axis needs a side of the torus split
    grid = mesh_utils.create_device_mesh(tuple(sizes), devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=auto)


def _is_spec(x: Any) -> bool:
  return isinstance(x, jax.sharding.PartitionSpec)


def check_rules_cover(axes_tree: Any, rules: LogicalRules = LOGICAL_AXIS_RULES) -> None:
  """Raises ValueError naming any logical axis name in `axes_tree` that `rules` does not mention."""
  known = {name for name, _ in rules}
  for path, spec in jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=_is_spec)[0]:
    unknown = [name for name in spec if name is not None and name not in known]
    if unknown:
      raise ValueError(f"logical axes of {jax.tree_util.keystr(path)}: {unknown} not in the rule table "
                       f"(known: {sorted(known)})")


def logical_to_mesh_sharding(axes_tree: Any, mesh: jax.sharding.Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """A tree of logical PartitionSpecs (e.g. `params_logical_axes(...)`) -> a tree of NamedShardings."""
  check_rules_cover(axes_tree, rules)
  return nn.logical_to_mesh_sharding(axes_tree, mesh, tuple(rules))


def params_logical_axes(variables: Mapping[str, Any]) -> Any:
  """Logical PartitionSpecs shaped like the params, from `variables["params_axes"]` (or that collection).

  `variables` is what `model.init` returns (it holds "params" and the t5x-style "params_axes"
  collection that `param_with_axes` sows), or the "params_axes" collection itself.
  """
  axes = variables.get("params_axes", variables)
  return flax.core.unfreeze(nn_partitioning.get_axis_names(axes))


def abstract_variables(model: nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
  """(params as ShapeDtypeStructs, their logical PartitionSpecs) of `model.init(rng, *args, **kwargs)`.

  Nothing is allocated: the init is only traced.
  """
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
  return variables["params"], params_logical_axes(variables)


def shard_params(params: Any, axes_tree: Any, mesh: jax.sharding.Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Any:
  """Places an existing params tree (numpy or jax arrays) onto `mesh` by the rule table."""
  shardings = logical_to_mesh_sharding(axes_tree, mesh, rules)
  return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x)
                                                  if not isinstance(x, jax.Array) else x, s), params, shardings)


def init_sharded_params(model: nn.Module, rng: jax.Array, mesh: jax.sharding.Mesh, *args: Any,
                        rules: LogicalRules = LOGICAL_AXIS_RULES, **kwargs: Any) -> tuple[Any, Any]:
  """Initializes `model`'s params directly in their sharded layout (no full copy on one device).

  Returns (params, logical axes tree). `args`/`kwargs` are example inputs for `model.init`.
  """
  _, axes = abstract_variables(model, *args, **kwargs)
  shardings = logical_to_mesh_sharding(axes, mesh, rules)
  init = jax.jit(lambda key: model.init(key, *args, **kwargs)["params"], out_shardings=shardings)
  with mesh_context(mesh, rules):
    return init(rng), axes


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules: LogicalRules = LOGICAL_AXIS_RULES) -> Iterator[None]:
  """Makes `mesh` current and installs `rules`, so the model's logical activation constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield
