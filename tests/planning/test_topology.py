"""Topology names -> chips, hosts and HBM (optiml_jax.planning.topology)."""

import pytest

from optiml_jax.planning import topology

GIB = 2**30


@pytest.mark.parametrize("name, family, chips, hosts, hbm_gib", [
    ("v4-8", "v4", 4, 1, 32),
    ("v4-256", "v4", 128, 32, 32),
    ("V4-512", "v4", 256, 64, 32),
    ("v5e-8", "v5e", 8, 1, 16),
    ("v5litepod-256", "v5e", 256, 64, 16),
    ("v5e-1", "v5e", 1, 1, 16),
    ("v5p-128", "v5p", 64, 16, 95),
    ("v6e-8", "v6e", 8, 1, 32),
    ("v6e-64", "v6e", 64, 16, 32),
    ("a100-40gb:8x8", "a100-40gb", 64, 8, 40),
    ("a100-80gb:16x8", "a100-80gb", 128, 16, 80),
    ("h100:2x8", "h100", 16, 2, 80),
    ("h200:1x4", "h200", 4, 1, 141),
])
def test_parse_topology(name, family, chips, hosts, hbm_gib):
  topo = topology.parse_topology(name)
  assert (topo.family, topo.chips, topo.hosts, topo.hbm_bytes) == (family, chips, hosts, hbm_gib * GIB)
  assert topo.chips_per_host * topo.hosts == topo.chips
  assert topo.peak_flops > 1e14
  assert topo.kind == ("gpu" if ":" in name else "tpu")


@pytest.mark.parametrize("name, says", [
    ("v4-12", "multiples of 8"),
    ("v5p-4", "multiples of 8"),
    ("v5e-3", "chips"),
    ("v6e-512", "chips"),
    ("tpu-8", "expected"),
    ("v4", "expected"),
    ("h100:0x8", "positive"),
    ("b200:2x8", "unknown GPU 'b200'"),
])
def test_bad_topologies_say_what_was_expected(name, says):
  with pytest.raises(topology.TopologyError, match=says) as info:
    topology.parse_topology(name)
  assert repr(name.lower()) in str(info.value) or repr(name) in str(info.value)


def test_examples_parse():
  for name in topology.EXAMPLES:
    assert topology.parse_topology(name).describe().startswith(name)
