"""Tests for optiml_jax.trainer.runtime: what the loop counts and checks of each batch, and the rows each process
feeds (`process_row_block`) on a TPU slice's device order."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

from optiml_jax.trainer import runtime

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_tokens_are_counted_by_segment_where_a_batch_has_segments():
  # A Llama-family vocabulary's id 0 is a real token (SmolLM2's <|endoftext|>): in a packed row it is counted,
  # and the padding after the last segment is not.
  packed = {
      "decoder_target_tokens": np.array([[5, 0, 7, 0, 0], [0, 3, 0, 0, 0]]),
      "decoder_segment_ids": np.array([[1, 1, 2, 0, 0], [1, 1, 1, 2, 0]]),
  }
  assert runtime.count_tokens(packed) == 7
  assert runtime.count_tokens({"decoder_target_tokens": packed["decoder_target_tokens"]}) == 3  # t5x: 0 pads


# Runs with 64 CPU devices standing in, one for one, for the chips of a TPU v4-128 slice (4x4x4 chips, 16 hosts of
# 2x2x1): the mesh is `jax.make_mesh`'s on that slice (mesh_utils orders v4 chips by physical topology), so each
# host's chips sit where they would on the slice. Prints one JSON line per mesh, then the refusals.
V4_SCRIPT = """
import dataclasses, itertools, json
import jax, numpy as np
from jax.experimental import mesh_utils
from optiml_jax.models import partitioning
from optiml_jax.trainer import config, runtime

@dataclasses.dataclass(frozen=True)
class Chip:  # what jax.devices() says of a v4 chip, as far as mesh_utils reads it
  id: int
  coords: tuple
  process_index: int
  core_on_chip: int = 0
  device_kind: str = "TPU v4"
  platform: str = "tpu"

chips = [Chip(i, (x, y, z), x // 2 + 2 * (y // 2) + 4 * z)
         for i, (z, y, x) in enumerate(itertools.product(range(4), repeat=3))]
cpu = jax.devices()
process_of = {cpu[c.id]: c.process_index for c in chips}
batch = partitioning.jax.sharding.PartitionSpec("batch", "length")
for shape in [(1, 16, 4), (64, 1, 1), (16, 4, 1)]:
  grid = mesh_utils.create_device_mesh(shape, chips, allow_split_physical_axes=False)  # as jax.make_mesh on v4
  mesh = jax.sharding.Mesh(np.vectorize(lambda c: cpu[c.id], otypes=[object])(grid), partitioning.MESH_AXES)
  sharding = partitioning.logical_to_mesh_sharding(batch, mesh)
  blocks = [runtime.process_row_block(sharding, 256, 8, process_of, host) for host in range(16)]
  print(json.dumps({"mesh": shape, "blocks": [[b.rows, b.index, b.count, b.ranges] for b in blocks]}))

def refusal(process_of):
  try:
    runtime.process_row_block(sharding, 8, 8, process_of, 0)
  except config.ConfigError as e:
    return str(e)
mesh = jax.sharding.Mesh(np.asarray(cpu[:8]).reshape(4, 1, 2), partitioning.MESH_AXES)
sharding = partitioning.logical_to_mesh_sharding(batch, mesh)
grid = mesh.devices.reshape(4, 2)  # [data shard, tensor]: 2 rows each
print(json.dumps({"sizes": refusal({d: int(i < 6) for i, d in enumerate(grid.flat)}),
                  "overlap": refusal({d: [0, 0, 0, 1, 1, 2, 2, 2][i] for i, d in enumerate(grid.flat)})}))
"""


def _run_with_devices(script, count):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_each_host_of_a_tpu_slice_feeds_the_rows_its_chips_hold_though_they_are_no_one_block():
  # jax.make_mesh orders a v4 slice's chips by topology, so a host's chips hold rows such as 0-15 and 64-79 of the
  # batch; the trainer used to refuse such a host (ConfigError, exit 2 on every worker of a 30B/175B run).
  *meshes, refusals = _run_with_devices(V4_SCRIPT, 64)
  for result in meshes:
    blocks = result["blocks"]
    assert any(len(ranges) > 1 for *_, ranges in blocks), result["mesh"]  # the case that was refused
    rows, count = blocks[0][0], blocks[0][2]
    assert all(b[0] == rows and b[2] == count for b in blocks) and rows * count == 256, result["mesh"]
    # Hosts feed stream shard `index` (its rows index * rows ... of the stream's global batch) into their ranges,
    # in order; hosts with the same rows share an index. The batch on the devices then holds every row of every
    # shard exactly once.
    on_devices = np.full((256,), -1)
    for _, index, _, ranges in blocks:
      positions = np.concatenate([np.arange(start, stop) for start, stop in ranges])
      assert len(positions) == rows
      shard_rows = np.arange(index * rows, (index + 1) * rows)
      assert (on_devices[positions] == -1).all() or (on_devices[positions] == shard_rows).all(), result["mesh"]
      on_devices[positions] = shard_rows
    np.testing.assert_array_equal(np.sort(on_devices), np.arange(256))
    ranks = {tuple(map(tuple, ranges)): index for _, index, _, ranges in blocks}
    assert sorted(ranks.values()) == list(range(count)) and len(ranks) == count, result["mesh"]
    assert sorted(ranks, key=ranks.get) == sorted(ranks), result["mesh"]  # ranked by first row
  sizes = {tuple(r["mesh"]): (r["blocks"][0][0], r["blocks"][0][2]) for r in meshes}  # (rows, count)
  # optiml_30b.gin's (1, 16, 4): each host's 4 chips hold 2 of the 16 fsdp blocks (tensor = 4 spans 2 hosts), and
  # 2 hosts share each set: 8 sets of 32 rows, where CPU order would give 16 blocks of 16.
  assert sizes == {(1, 16, 4): (32, 8), (64, 1, 1): (16, 16), (16, 4, 1): (16, 16)}
  assert "{0: [(6, 8)], 1: [(0, 6)]} of the 8-row batch, which differ in size" in refusals["sizes"]
  assert "overlap or leave rows out" in refusals["overlap"]
  assert "{0: [(0, 4)], 1: [(2, 6)], 2: [(4, 8)]}" in refusals["overlap"]
