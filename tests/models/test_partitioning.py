"""Tests of models/partitioning.py: the rule table covers the model, meshes, and 8-device sharded logits."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from optiml_jax.models import opt
from optiml_jax.models import partitioning

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
             max_position_embeddings=40)
ACTIVATION_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab")


def _abstract(config):
  return partitioning.abstract_variables(opt.OPT(config), jnp.ones((1, 4), jnp.int32), enable_dropout=False)


@pytest.mark.parametrize("overrides", [{}, {"scan_layers": False}, {"word_embed_proj_dim": 16},
                                       {"enable_bias": False, "layer_norm_elementwise_affine": False},
                                       {"remat_policy": "dots"}])
def test_every_param_has_logical_axes_in_the_rule_table(overrides):
  params, axes = _abstract(opt.OPTConfig(**SMALL, **overrides))
  flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  flat_axes = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, P))[0])
  assert flat_params.keys() == flat_axes.keys()
  known = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
  for path, spec in flat_axes.items():
    assert isinstance(spec, P) and len(spec) == len(flat_params[path].shape), jax.tree_util.keystr(path)
    assert set(spec) <= known, (jax.tree_util.keystr(path), spec)
  partitioning.check_rules_cover(axes)


def test_activation_axes_are_in_the_rule_table():
  assert set(ACTIVATION_AXES) <= {name for name, _ in partitioning.LOGICAL_AXIS_RULES}


def test_rule_table_maps_kernels_as_documented():
  _, axes = _abstract(opt.OPTConfig(**SMALL))
  shardings = partitioning.logical_to_mesh_sharding(axes, partitioning.make_mesh(1, 1, 1))
  assert shardings["layers"]["self_attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert shardings["layers"]["self_attn"]["out_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert shardings["layers"]["fc1"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert shardings["layers"]["fc2"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert shardings["embed_tokens"]["embedding"].spec == P("tensor", "fsdp")
  assert shardings["embed_positions"]["embedding"].spec == P(None, "fsdp")
  activations = {"x": P("batch", "length", "embed"), "logits": P("batch", "length", "vocab")}
  specs = partitioning.logical_to_mesh_sharding(activations, partitioning.make_mesh(1, 1, 1))
  assert specs["x"].spec == P(("data", "fsdp"), None, None)  # "batch" took fsdp before "embed".
  assert specs["logits"].spec == P(("data", "fsdp"), None, "tensor")


def test_unknown_logical_axis_is_named():
  with pytest.raises(ValueError, match="mystery"):
    partitioning.check_rules_cover({"w": P("embed", "mystery")})


def test_make_mesh_sizes():
  mesh = partitioning.make_mesh(-1, 1, 1)
  assert mesh.axis_names == partitioning.MESH_AXES
  assert mesh.devices.size == len(jax.devices())
  with pytest.raises(ValueError, match="devices"):
    partitioning.make_mesh(len(jax.devices()) + 1, 1, 1)
  with pytest.raises(ValueError, match="at most one -1"):
    partitioning.make_mesh(-1, -1, 1)


_EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from optiml_jax.models import opt, partitioning

    assert len(jax.devices()) == 8, jax.devices()
    config = opt.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           ffn_dim=64, max_position_embeddings=40, init_std=0.1, dropout=0.0)
    model = opt.OPT(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 96, size=(4, 12)), jnp.int32)
    segments = jnp.asarray(np.repeat([[1] * 7 + [2] * 5], 4, axis=0), jnp.int32)
    variables = jax.jit(lambda r: model.init(r, tokens, enable_dropout=False))(jax.random.PRNGKey(0))
    params, axes = variables["params"], partitioning.params_logical_axes(variables)
    forward = lambda p, x, s: model.apply({"params": p}, x, decoder_segment_ids=s, enable_dropout=False)
    reference = np.asarray(jax.jit(forward)(params, tokens, segments))
    result = {}
    for shape in [(2, 1, 4), (1, 4, 2), (2, 2, 2)]:
      mesh = partitioning.make_mesh(*shape)
      sharded = partitioning.shard_params(params, axes, mesh)
      batch = partitioning.logical_to_mesh_sharding({"b": jax.sharding.PartitionSpec("batch", "length")},
                                                    mesh)["b"]
      out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), None, "tensor"))
      param_shardings = partitioning.logical_to_mesh_sharding(axes, mesh)
      with partitioning.mesh_context(mesh):
        run = jax.jit(forward, in_shardings=(param_shardings, batch, batch), out_shardings=out)
        logits = run(sharded, jax.device_put(tokens, batch), jax.device_put(segments, batch))
        created, _ = partitioning.init_sharded_params(model, jax.random.PRNGKey(0), mesh, tokens,
                                                      enable_dropout=False)
      kernel = sharded["layers"]["self_attn"]["q_proj"]["kernel"]
      result[str(shape)] = {
          "max_diff": float(np.abs(np.asarray(logits) - reference).max()),
          "scale": float(np.abs(reference).max()),
          "kernel_spec": str(kernel.sharding.spec),
          "kernel_replicated": kernel.sharding.is_fully_replicated,
          "kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
          "logits_shards": len({str(s.index) for s in logits.addressable_shards}),
          "created_spec": str(created["layers"]["fc1"]["kernel"].sharding.spec),
          "created_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                              for a, b in zip(jax.tree.leaves(created), jax.tree.leaves(params))),
      }
    print("RESULT " + json.dumps(result))
""")


def test_eight_device_mesh_gives_single_device_logits():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICE_SCRIPT], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  result = json.loads(line[len("RESULT "):])
  for shape, r in result.items():
    data, fsdp, tensor = json.loads(shape.replace("(", "[").replace(")", "]"))
    assert r["scale"] > 0.1
    assert r["max_diff"] < 1e-5, (shape, r)
    assert not r["kernel_replicated"], (shape, r)
    assert r["kernel_spec"] == str(P(None, "fsdp", "tensor")), (shape, r)
    assert r["kernel_shard_shape"] == [2, 32 // fsdp, 32 // tensor], (shape, r)
    assert r["logits_shards"] == data * fsdp * tensor, (shape, r)
    assert r["created_spec"] == str(P(None, "fsdp", "tensor")), (shape, r)
    assert r["created_diff"] < 1e-6, (shape, r)
