"""Accelerator topologies by name: how many chips, how much HBM each, how many per host, peak FLOP/s, and
for TPU slices where each chip sits.

Sits under the planner (`optiml_jax.plan`), which simulates a mesh of `Topology.chips` devices. Pure
functions of strings; imports nothing heavy, so the planner can read the topology before JAX is imported.
`slice_devices` describes a TPU slice's chips as `jax.devices()` does on it (coordinates, process, device
kind), so that the planner can hand them to `jax.make_mesh` and learn which host holds which mesh position.

Names (chips and memory as Google Cloud and NVIDIA publish them; GiB = 2**30 bytes):
  v4-N           TPU v4, N TensorCores = N/2 chips, 32 GiB HBM per chip, 4 chips per host
  v5e-N, v5litepod-N   TPU v5e, N chips, 16 GiB, 8 chips per host up to 8 chips, then 4
  v5p-N          TPU v5p, N TensorCores = N/2 chips, 95 GiB, 4 chips per host
  v6e-N          TPU v6e (Trillium), N chips, 32 GiB, 8 chips per host up to 8 chips, then 4
  a100-40gb:HxG, a100-80gb:HxG, h100:HxG, h200:HxG   H hosts of G GPUs (40 / 80 / 80 / 141 GiB each)

Physical shapes (chips along x, y, z) are those Cloud TPU gives an accelerator type by default: v4 and v5p
2x2x1 (8 TensorCores), 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, 4x8x8, 8x8x8, 8x8x16, 8x16x16, 16x16x16, 16x16x24;
v5e and v6e 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16 (a 2D torus: z = 1). A host of 4 chips holds a 2x2x1
block of them. Other v4 / v5p sizes (e.g. v4-24) plan without a physical shape.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

GIB = 2**30

# family: (HBM GiB per chip, TensorCores per chip in the slice name, peak dense bf16 FLOP/s per chip)
_TPUS: dict[str, tuple[float, int, float]] = {
    "v4": (32, 2, 275e12),
    "v5e": (16, 1, 197e12),
    "v5p": (95, 2, 459e12),
    "v6e": (32, 1, 918e12),
}
_TPU_ALIASES = {"v5litepod": "v5e"}
# Single-host slices of the one-TensorCore-per-chip families hold up to 8 chips; larger slices 4 per host.
_SINGLE_HOST_MAX = {"v5e": 8, "v6e": 8}
_SIZES_V5E_V6E = (1, 4, 8, 16, 32, 64, 128, 256)

# The device_kind jax.devices() reports for a chip of each family (as JAX's tpu_info names them), by which
# `jax.make_mesh` picks how to order a slice's chips and whether it may split a side of the torus.
_DEVICE_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}
# Chips -> (x, y, z) of the default topology of an accelerator type (module docstring).
_DEFAULT_3D = ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8), (8, 8, 16),
               (8, 16, 16), (16, 16, 16), (16, 16, 24))
_SHAPES_3D = {math.prod(shape): shape for shape in _DEFAULT_3D}
_SHAPES_2D = {x * y: (x, y, 1) for x, y in ((1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))}
_HOST_BLOCK = (2, 2, 1)  # the chips of a 4-chip TPU host

# GPU: (HBM GiB, peak dense bf16 FLOP/s (SXM parts))
_GPUS: dict[str, tuple[float, float]] = {
    "a100-40gb": (40, 312e12),
    "a100-80gb": (80, 312e12),
    "h100": (80, 989e12),
    "h200": (141, 989e12),
}

EXAMPLES = ("v4-256", "v5e-256", "v5litepod-64", "v5p-256", "v6e-128", "a100-40gb:8x8", "a100-80gb:16x8", "h100:16x8",
            "h200:8x8")


class TopologyError(ValueError):
  """A topology name that cannot be read; the message says what was expected."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """One slice or cluster.

  Attributes:
    name: as given (lower case).
    family: "v4", "v5e", "v5p", "v6e", "a100-40gb", "a100-80gb", "h100" or "h200".
    chips: accelerators (TPU chips or GPUs); one JAX device each.
    hosts: machines (processes of a multi-host run).
    hbm_bytes: memory of one chip.
    peak_flops: dense bf16 FLOP/s of one chip.
    physical_shape: chips along x, y and z of a TPU slice of the default topology of its accelerator type;
      None for GPU clusters and TPU sizes whose shape is not known here.
  """

  name: str
  family: str
  chips: int
  hosts: int
  hbm_bytes: int
  peak_flops: float
  physical_shape: tuple[int, int, int] | None = None

  @property
  def chips_per_host(self) -> int:
    return self.chips // self.hosts

  @property
  def physical_name(self) -> str | None:
    """The physical shape as Cloud TPU names the topology: '4x8x8' (v4, v5p), '16x16' (v5e, v6e: a 2D torus)."""
    if self.physical_shape is None:
      return None
    sides = self.physical_shape if _TPUS[self.family][1] == 2 else self.physical_shape[:2]
    return "x".join(map(str, sides))

  @property
  def kind(self) -> str:
    return "gpu" if self.family in _GPUS else "tpu"

  def describe(self) -> str:
    unit = "GPUs" if self.kind == "gpu" else "chips"
    return (f"{self.name}: {self.chips} {unit} on {self.hosts} host{'s' if self.hosts > 1 else ''}, "
            f"{self.hbm_bytes / GIB:g} GiB HBM each")


def _expected() -> str:
  return ("expected v4-N or v5p-N (N TensorCores, a multiple of 8), v5e-N / v5litepod-N or v6e-N "
          f"(N chips in {_SIZES_V5E_V6E}), or a GPU cluster HOSTSxGPUS of {sorted(_GPUS)} "
          "(e.g. a100-40gb:8x8)")


def _tpu(name: str, family: str, cores: int) -> Topology:
  hbm, cores_per_chip, peak = _TPUS[family]
  if cores_per_chip == 2:
    if cores < 8 or cores % 8:
      raise TopologyError(f"topology {name!r}: {family} slices count TensorCores in multiples of 8 "
                          f"(v4-8 is 4 chips); {_expected()}")
    chips = cores // 2
  else:
    if cores not in _SIZES_V5E_V6E:
      raise TopologyError(f"topology {name!r}: {family} slices have {_SIZES_V5E_V6E} chips; {_expected()}")
    chips = cores
  per_host = chips if chips <= _SINGLE_HOST_MAX.get(family, 4) else 4
  shape = (_SHAPES_3D if cores_per_chip == 2 else _SHAPES_2D).get(chips)
  return Topology(name=name, family=family, chips=chips, hosts=chips // per_host, hbm_bytes=int(hbm * GIB),
                  peak_flops=peak, physical_shape=shape)


def parse_topology(name: str) -> Topology:
  """Reads a topology name (see the module docstring). Raises TopologyError saying what was expected."""
  text = name.strip().lower()
  gpu = re.fullmatch(r"([a-z0-9-]+):(\d+)x(\d+)", text)
  if gpu:
    family, hosts, per_host = gpu.group(1), int(gpu.group(2)), int(gpu.group(3))
    if family not in _GPUS:
      raise TopologyError(f"topology {name!r}: unknown GPU {family!r}; {_expected()}")
    if hosts < 1 or per_host < 1:
      raise TopologyError(f"topology {name!r}: hosts and GPUs per host must be positive; {_expected()}")
    hbm, peak = _GPUS[family]
    return Topology(name=text, family=family, chips=hosts * per_host, hosts=hosts, hbm_bytes=int(hbm * GIB),
                    peak_flops=peak)
  tpu = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", text)
  if tpu:
    family = _TPU_ALIASES.get(tpu.group(1), tpu.group(1))
    return _tpu(text, family, int(tpu.group(2)))
  raise TopologyError(f"topology {name!r}: {_expected()}")


@dataclasses.dataclass(frozen=True)
class SliceDevice:
  """One chip of a TPU slice as `jax.devices()` describes it there: the attributes `jax.make_mesh` (through
  `jax.experimental.mesh_utils.create_device_mesh`) reads to order a slice's chips."""

  id: int
  coords: tuple[int, int, int]
  process_index: int
  device_kind: str
  core_on_chip: int = 0  # v4 and v5p run one device per chip (megacore)
  platform: str = "tpu"


def slice_devices(topo: Topology) -> list[SliceDevice] | None:
  """The chips of the TPU slice `topo` in `jax.devices()` order (by process, then id), as a slice reports them:
  each host holds a 2x2x1 block of chips (the whole slice when it has one host), processes are numbered over
  the host blocks x fastest, then y, then z, and device ids over the chips' coordinates the same way. None when
  the physical shape is not known (`Topology.physical_shape`): GPU clusters, unusual TPU sizes."""
  if topo.physical_shape is None:
    return None
  shape = topo.physical_shape
  block = shape if topo.hosts == 1 else _HOST_BLOCK
  grid = tuple(side // b for side, b in zip(shape, block))
  if math.prod(block) != topo.chips_per_host or math.prod(grid) != topo.hosts:
    raise ValueError(f"{topo.name}: {topo.chips_per_host} chips per host do not tile its "
                     f"{'x'.join(map(str, shape))} chips in blocks of {'x'.join(map(str, block))}")
  devices: list[SliceDevice] = []
  for z, y, x in itertools.product(range(shape[2]), range(shape[1]), range(shape[0])):
    process = x // block[0] + grid[0] * (y // block[1] + grid[1] * (z // block[2]))
    devices.append(SliceDevice(len(devices), (x, y, z), process, _DEVICE_KINDS[topo.family]))
  return sorted(devices, key=lambda d: (d.process_index, d.id))
