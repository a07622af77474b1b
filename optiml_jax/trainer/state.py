"""The sharded train state: its layout on the mesh, and how a run's first state is made.

Sits under the loop: `state_layout(...)` turns the model's logical axis names into the NamedShardings of
every array of the `TrainState` (params, optimizer state, step) with the one rule table
(`models.partitioning.LOGICAL_AXIS_RULES`); `initial_state(...)` then creates the state directly in that
layout, either at random (`model.init` under `jax.jit` with those out_shardings, so no full copy ever lives
on one device) or from an initial checkpoint (an Orbax params folder or a Hugging Face folder of the model's family).

Master weights and the optimizer state are float32 whatever the model's `param_dtype`; the model casts
weights to `config.dtype` (e.g. bfloat16) as it computes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.checkpoints import layout as layout_lib
from optiml_jax.checkpoints import orbax_io
from optiml_jax.models import partitioning
from optiml_jax.trainer import checkpointing

MASTER_DTYPE = jnp.float32


class InitialCheckpointError(ValueError):
  """The initial checkpoint cannot start this run (missing, another model's shapes, NaN); names the path."""


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Where every array of the train state lives.

  Attributes:
    abstract: a TrainState of ShapeDtypeStructs (float32 params) carrying their shardings.
    shardings: the same tree of NamedShardings (for jit in/out_shardings).
    param_axes: the params' logical PartitionSpecs (from the model's `params_axes`).
  """

  abstract: checkpointing.TrainState
  shardings: checkpointing.TrainState
  param_axes: Any


def state_layout(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, seq_len: int,
                 rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES) -> StateLayout:
  """Traces `model.init` and `tx.init` (allocating nothing) and shards them by the rule table.

  Optimizer leaves shaped like a parameter (Adam's mu and nu) follow that parameter's sharding; the others
  (counts) are replicated.
  """
  dummy = jnp.ones((1, seq_len), jnp.int32)
  abstract_params, axes = partitioning.abstract_variables(model, dummy, enable_dropout=False)
  abstract_params = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, MASTER_DTYPE), abstract_params)
  param_shardings = partitioning.logical_to_mesh_sharding(axes, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated)
  shardings = checkpointing.TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  abstract = checkpointing.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                      opt_state=abstract_opt)
  abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                    shardings)
  return StateLayout(abstract=abstract, shardings=shardings, param_axes=axes)


def uneven_param_dims(model: nn.Module, mesh_shape: Mapping[str, int], seq_len: int,
                      rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES) -> list[str]:
  """The parameter dimensions that the mesh axes the rule table gives them do not divide, as
  "path: dimension i (logical) of size n is not divisible by axis=k" lines; empty when every one divides.

  Traces `model.init` as `state_layout` does (allocating nothing) and needs only the mesh's axis sizes, so the
  loop checks a mesh before it lays anything out: an uneven parameter would otherwise stop the jitted init with
  JAX's IndivisibleError, which names neither the parameter nor the mesh. Activations may split unevenly (3 heads
  over tensor = 2); their shardings are not checked.
  """
  dummy = jnp.ones((1, seq_len), jnp.int32)
  abstract_params, axes = partitioning.abstract_variables(model, dummy, enable_dropout=False)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  mesh_axes = nn.logical_to_mesh(axes, tuple(rules))
  uneven = []
  for (path, logical), spec, param in zip(jax.tree_util.tree_leaves_with_path(axes, is_leaf=is_spec),
                                          jax.tree_util.tree_leaves(mesh_axes, is_leaf=is_spec),
                                          jax.tree_util.tree_leaves(abstract_params)):
    for dim, (name, axis) in enumerate(zip(logical, spec)):
      names = () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)
      split = math.prod(mesh_shape[a] for a in names)
      if param.shape[dim] % split:
        where = "/".join(str(getattr(k, "key", k)) for k in path)
        over = " x ".join(f"{a}={mesh_shape[a]}" for a in names)
        uneven.append(f"{where}: dimension {dim} ({name}) of size {param.shape[dim]} is not divisible by {over}")
  return uneven


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation, layout: StateLayout,
                 seq_len: int) -> Callable[[jax.Array], checkpointing.TrainState]:
  """A jit-ed `rng -> TrainState` that creates params (float32) and optimizer state in `layout`'s shardings.

  Call it inside `partitioning.mesh_context(mesh, rules)`.
  """
  dummy = jnp.ones((1, seq_len), jnp.int32)

  def init(rng):
    params = model.init(rng, dummy, enable_dropout=False)["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(MASTER_DTYPE), params)
    return checkpointing.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=layout.shardings)


def initial_state(model: nn.Module, tx: optax.GradientTransformation, layout: StateLayout, mesh: jax.sharding.Mesh, *,
                  seed: int, seq_len: int, initial_checkpoint: str | None = None,
                  rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES,
                  init_fn: Callable[[jax.Array], checkpointing.TrainState] | None = None) -> checkpointing.TrainState:
  """Step 0 in the sharded layout: params from `initial_checkpoint` if given, else random (`seed`).

  `init_fn` is `make_init_fn(model, tx, layout, seq_len)`, made here when not given (pass one to reuse
  its compilation).

  Raises:
    InitialCheckpointError: naming the checkpoint, when its parameter shapes differ from the configured
      model's or when it holds NaN or infinity (nothing would train from it).
  """
  if initial_checkpoint:
    params = load_initial_params(initial_checkpoint, model.config, layout)
    init_opt = jax.jit(tx.init, out_shardings=layout.shardings.opt_state)
    with partitioning.mesh_context(mesh, rules):
      opt_state = init_opt(params)
    step = jax.make_array_from_callback((), layout.shardings.step, lambda _: np.zeros((), np.int32))
    return checkpointing.TrainState(step=step, params=params, opt_state=opt_state)
  init_fn = init_fn or make_init_fn(model, tx, layout, seq_len)
  with partitioning.mesh_context(mesh, rules):
    return init_fn(jax.random.PRNGKey(seed))


def load_initial_params(path: str, config: Any, layout: StateLayout) -> Any:
  """float32 params from an Orbax checkpoint (`orbax_io.restore_orbax`: a save_orbax folder, a MODEL_DIR or one
  of its step folders; read shard by shard into `layout`) or a Hugging Face folder, checked against the
  configured model."""
  if not os.path.isdir(path):
    raise InitialCheckpointError(f"initial checkpoint {path}: folder not found")
  # A Hugging Face folder has weight files; anything else (a convert/save_orbax folder, another run's
  # MODEL_DIR or one of its step folders) is read as Orbax.
  try:
    if discovery.is_hf_folder(path):
      _, params = hf_lib.load_hf(path, config_overrides={"scan_layers": config.scan_layers})
    else:
      _, params = orbax_io.restore_orbax(path, shardings=layout.abstract.params, config=config)
    params = layout_lib.relayout(dict(params), config.scan_layers, stack=jnp.stack)  # stored in the other layout
  except layout_lib.ConversionError as e:
    raise InitialCheckpointError(f"initial checkpoint {path}: {e}") from e
  expected = jax.tree_util.tree_map(lambda a: tuple(a.shape), layout.abstract.params)
  got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), dict(params))
  if expected != got:
    raise InitialCheckpointError(f"initial checkpoint {path}: parameter shapes do not match the configured "
                                 f"model (expected {expected}, got {got})")
  to_master = jax.jit(lambda tree: jax.tree_util.tree_map(lambda x: x.astype(MASTER_DTYPE), tree),
                      out_shardings=layout.shardings.params)
  params = to_master(dict(params))
  if not checkpointing.all_finite(params):
    raise InitialCheckpointError(f"initial checkpoint {path}: parameters hold NaN or infinity; "
                                 "refusing to train from it")
  return params
