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


@pytest.mark.parametrize("name, shape, physical_name", [
    ("v4-8", (2, 2, 1), "2x2x1"),
    ("v4-32", (2, 2, 4), "2x2x4"),
    ("v4-128", (4, 4, 4), "4x4x4"),
    ("v4-512", (4, 8, 8), "4x8x8"),
    ("v5p-256", (4, 4, 8), "4x4x8"),
    ("v5p-12288", (16, 16, 24), "16x16x24"),
    ("v5e-8", (2, 4, 1), "2x4"),
    ("v5litepod-128", (8, 16, 1), "8x16"),
    ("v6e-256", (16, 16, 1), "16x16"),
    ("v4-24", None, None),
    ("h100:2x8", None, None),
])
def test_physical_shape_is_the_accelerator_types_default_topology(name, shape, physical_name):
  # v4-24 (12 chips) has no default shape known here; GPU clusters have none.
  topo = topology.parse_topology(name)
  assert (topo.physical_shape, topo.physical_name) == (shape, physical_name)


def test_slice_devices_describe_the_chips_as_jax_devices_does_on_the_slice():
  # jax.devices() on a real v4-32 (2x2x4 chips, 4 hosts): process p holds the 2x2 chips at z = p, ids x fastest.
  devices = topology.slice_devices(topology.parse_topology("v4-32"))
  assert [(d.id, d.process_index, d.coords) for d in devices[:6]] == [(0, 0, (0, 0, 0)), (1, 0, (1, 0, 0)),
                                                                      (2, 0, (0, 1, 0)), (3, 0, (1, 1, 0)),
                                                                      (4, 1, (0, 0, 1)), (5, 1, (1, 0, 1))]
  assert {(d.device_kind, d.core_on_chip, d.platform) for d in devices} == {("TPU v4", 0, "tpu")}
  # v4-512: 64 hosts, each a 2x2x1 block of the 4x8x8 chips; ids number the chips x fastest, then y, then z.
  devices = topology.slice_devices(topology.parse_topology("v4-512"))
  assert len(devices) == 256 and sorted(d.id for d in devices) == list(range(256))
  by_host = {}
  for d in devices:
    assert d.id == d.coords[0] + 4 * (d.coords[1] + 8 * d.coords[2])
    by_host.setdefault(d.process_index, set()).add(d.coords)
  assert len(by_host) == 64 and by_host[0] == {(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)}
  assert by_host[1] == {(2, 0, 0), (3, 0, 0), (2, 1, 0), (3, 1, 0)}
  # v5e / v6e (what JAX calls "TPU v5 lite" and "TPU v6 lite"): a 2D torus; a single host holds all its chips.
  assert {d.process_index for d in topology.slice_devices(topology.parse_topology("v5e-8"))} == {0}
  assert topology.slice_devices(topology.parse_topology("v6e-64"))[0].device_kind == "TPU v6 lite"
  assert topology.slice_devices(topology.parse_topology("v5p-128"))[0].device_kind == "TPU v5"
  assert topology.slice_devices(topology.parse_topology("h100:2x8")) is None
