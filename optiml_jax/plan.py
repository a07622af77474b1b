r"""Entry point: `python -m optiml_jax.plan --gin_file=FILE --topology=NAME [overrides]`: will a run fit?

Plans a training run on a slice without the slice: simulates `--topology`'s chips as CPU devices (the
process sets `XLA_FLAGS=--xla_force_host_platform_device_count=<chips>` and `JAX_PLATFORMS=cpu` before JAX
is imported, re-running itself in a subprocess when JAX already is), builds the trainer's real train step
from the same gin files `python -m optiml_jax.train` reads, lowers and compiles it ahead of time with
abstract inputs (nothing is allocated) and prints, per device: parameter, optimizer-state, gradient and
activation bytes from the analytic model (`planning.analytic`) beside XLA's own memory analysis (argument,
output, temporary and generated-code bytes), FLOPs per step (analytic 6N + 12·L·d·S, and XLA's count with
the layers probed, see `planning.compiled`), and whether the step fits the chip's HBM. Its `data` line says
which rows of each batch a host feeds, with the mesh laid over a TPU slice's chips by `jax.make_mesh` itself, as
the trainer lays it (`slice_hosts`).

    python -m optiml_jax.plan --gin_file=gin/optiml_175b.gin --topology=v4-256 --mesh=1,8,16 \
        --microbatches=16 --sequence_parallel
    python -m optiml_jax.plan --gin_file=gin/optiml_30b.gin --topology=a100-40gb:8x8 --json_out=plan.json

The run's settings are the trainer's own `trainer.config.TrainConfig`, built from the gin files as
`python -m optiml_jax.train` builds it (`gin_registry.configure_training`). The mesh comes from
`PartitioningArgs.mesh_shape` (a -1 takes the remaining chips; a gin mesh for another chip count is rescaled
along fsdp) unless `--mesh=data,fsdp,tensor` is given; `--batch` and `--microbatches` replace BATCH_SIZE and
`PartitioningArgs.num_microbatches`; any `--gin.KEY=VALUE` works too (e.g. `--gin.model_config.remat_policy='dots'`);
`--sequence_parallel` (or `PartitioningArgs.sequence_parallel = True`) plans with
`models.partitioning.SEQUENCE_PARALLEL_RULES`. Macros that only a real run needs (MODEL_DIR, CATALOG_DIR,
INITIAL_CHECKPOINT_PATH) may stay unset. `--no_compile` gives the analytic
figures alone in seconds; `--no_flops_probe` skips the two small extra compiles that count FLOPs.

The verdict uses the compiled peak by default (`--fit_by=analytic` for the model's): XLA:CPU keeps some
bfloat16 buffers in float32, so for bfloat16 models its figure is an upper bound of a TPU's or GPU's. The analytic
model counts the gin's `lm_head_positions` (both branches of its `lax.cond`) and `loss_chunk_size`.
Usable memory is a share of each chip's memory: `--hbm_fraction` when given; else 0.95 on TPUs, and on GPUs what
JAX's allocator lets a run have (`gpu_memory_fraction`): the fraction in XLA_CLIENT_MEM_FRACTION (or the deprecated
XLA_PYTHON_CLIENT_MEM_FRACTION) of the environment the planner runs in, as the run's would be, else JAX's default
pool of 75% (jax 0.6-0.11; the trainer sets none). The report says which.

Exit codes: 0 fits, 1 does not fit, 2 configuration error (topology, gin, mesh, batch that cannot be laid out, a
mesh the trainer cannot lay over the slice's chips, a --json_out in a folder that does not exist, checked before
planning, or that cannot be written: named, without a traceback), 3 anything else that went wrong (the traceback is
printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import traceback
from typing import Any, Sequence

from optiml_jax import gin_utils
from optiml_jax.planning import topology as topology_lib
from optiml_jax.trainer import config as config_lib

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_CONFIG_ERROR, EXIT_INTERNAL_ERROR = 0, 1, 2, 3
TPU_HBM_FRACTION = 0.95  # usable share of a TPU chip's HBM by default
# JAX's GPU pool when no memory fraction is set: 75% of the card (JAX's "GPU memory allocation" page, 0.6 to 0.11).
JAX_GPU_MEM_FRACTION = 0.75
GPU_MEM_FRACTION_VARS = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")  # current, deprecated
# Macros a real run needs that planning does not read; bound to a placeholder unless given.
UNUSED_MACROS = ("MODEL_DIR", "CATALOG_DIR", "INITIAL_CHECKPOINT_PATH")
GIB = 2**30


class PlanError(ValueError):
  """The plan cannot be built (mesh, batch, sharding); the message names the figure."""


def plan_environment(chips: int, environ: dict[str, str] | None = None) -> dict[str, str]:
  """`environ` (default os.environ) with JAX forced onto `chips` CPU devices; other XLA flags kept."""
  env = dict(os.environ if environ is None else environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", "")).split()
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={chips}"])
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ warnings (SPMD notes) would bury the report
  return env


@dataclasses.dataclass(frozen=True)
class MemoryShare:
  """The share of each chip's memory a run can use, and where that figure comes from (for the report)."""

  fraction: float
  source: str
  note: str | None = None  # a step the run must take for the share to hold


def gpu_memory_fraction(environ: dict[str, str] | None = None) -> tuple[float, str]:
  """(the share of each GPU's memory JAX's allocator gives a run with `environ` (default os.environ), where it
  comes from). Raises PlanError naming the variable for a value jaxlib would refuse (both names set, not a number
  in (0, 1])."""
  env = os.environ if environ is None else environ
  given = [name for name in GPU_MEM_FRACTION_VARS if env.get(name)]
  if len(given) > 1:
    raise PlanError(f"{' and '.join(given)} are both set: jaxlib refuses to start a GPU with both (the second is "
                    "the deprecated name); keep one")
  if not given:
    return JAX_GPU_MEM_FRACTION, "JAX's default GPU pool, no XLA_CLIENT_MEM_FRACTION set"
  name = given[0]
  try:
    fraction = float(env[name])
  except ValueError:
    fraction = 0.0
  if not 0 < fraction <= 1:
    raise PlanError(f"{name}={env[name]!r}: expected the share of each GPU's memory JAX may use, in (0, 1]")
  return fraction, name


def memory_share(topo: topology_lib.Topology, hbm_fraction: float | None,
                 environ: dict[str, str] | None = None) -> MemoryShare:
  """The usable share of each chip's memory: `hbm_fraction` when given, else 0.95 of a TPU's HBM, and of a GPU's
  what JAX's allocator gives a run (`gpu_memory_fraction`). A given share above what a GPU run would get comes with
  a note saying how to raise the allocator's."""
  if topo.kind != "gpu":
    if hbm_fraction is None:
      return MemoryShare(TPU_HBM_FRACTION, "default for TPUs")
    return MemoryShare(hbm_fraction, "--hbm_fraction")
  allocator, source = gpu_memory_fraction(environ)
  if hbm_fraction is None:
    return MemoryShare(allocator, source)
  note = None
  if hbm_fraction > allocator:
    name = source if source in GPU_MEM_FRACTION_VARS else GPU_MEM_FRACTION_VARS[0]  # one name only, as jaxlib wants
    note = (f"--hbm_fraction {hbm_fraction:g} is more than the {allocator:.0%} of each GPU a run gets ({source}): "
            f"run it with {name}={hbm_fraction:g} in its environment")
  return MemoryShare(hbm_fraction, "--hbm_fraction", note)


def parse_mesh(text: str) -> tuple[int, int, int]:
  """'data,fsdp,tensor' -> three ints (one may be -1). Raises PlanError naming the flag."""
  try:
    sizes = tuple(int(part) for part in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3 or any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise PlanError(f"--mesh {text!r}: expected data,fsdp,tensor as three positive integers (one may be -1), "
                    "e.g. 1,16,8")
  return sizes


def resolve_mesh(shape: Sequence[int], chips: int, rescale: bool) -> tuple[tuple[int, int, int], str | None]:
  """The (data, fsdp, tensor) sizes for `chips` devices and a note when they differ from `shape`.

  A -1 takes the remaining chips. A fixed shape for another chip count is rescaled along fsdp (keeping
  data and tensor) when `rescale`; otherwise, or when that cannot work, PlanError.
  """
  data, fsdp, tensor = (int(s) for s in shape)
  sizes = [data, fsdp, tensor]
  if -1 in sizes:
    known = abs(data * fsdp * tensor)
    if chips % known:
      raise PlanError(f"mesh {tuple(shape)}: {chips} chips are not divisible by {known}")
    sizes[sizes.index(-1)] = chips // known
    return tuple(sizes), None  # type: ignore[return-value]
  if data * fsdp * tensor == chips:
    return (data, fsdp, tensor), None
  if rescale and chips % (data * tensor) == 0:
    resolved = (data, chips // (data * tensor), tensor)
    return resolved, (f"PartitioningArgs.mesh_shape {tuple(shape)} is for {data * fsdp * tensor} chips; planned as "
                      f"{resolved} for {chips}")
  raise PlanError(f"mesh {tuple(shape)} has {data * fsdp * tensor} devices but the topology has {chips} chips")


@dataclasses.dataclass(frozen=True)
class PlanInputs:
  """Plain figures of one plan, from gin and the flags."""

  model: config_lib.ModelConfig
  optimizer: config_lib.OptimizerArgs
  train_steps: int
  batch_size: int
  seq_len: int
  num_microbatches: int
  mesh: tuple[int, int, int]
  sequence_parallel: bool
  notes: tuple[str, ...]
  lm_head_positions: int | None = None
  loss_chunk_size: int | None = None
  padding_mask: bool = True
  nonfinite_guard: str = "auto"


def load_inputs(args: argparse.Namespace, topo: topology_lib.Topology) -> PlanInputs:
  """Reads the gin files as `python -m optiml_jax.train` does and applies the overrides."""
  import gin  # pylint: disable=g-import-not-at-top

  from optiml_jax import gin_registry  # pylint: disable=g-import-not-at-top  (imports JAX)

  gin.clear_config()
  placeholders = [f"{name} = 'unused-by-plan'" for name in UNUSED_MACROS]
  bindings = placeholders + list(args.gin_bindings)
  if args.batch is not None:
    bindings.append(f"BATCH_SIZE = {args.batch}")
  if args.microbatches is not None:
    bindings.append(f"PartitioningArgs.num_microbatches = {args.microbatches}")
  config = gin_registry.configure_training(args.gin_file, bindings, args.gin_search_paths)
  layout = config.partitioning
  notes = []
  if args.mesh:
    mesh, _ = resolve_mesh(parse_mesh(args.mesh), topo.chips, rescale=False)
  else:
    mesh, note = resolve_mesh(layout.mesh_shape, topo.chips, rescale=True)
    notes += [note] if note else []
  if topo.kind == "gpu" and topo.chips_per_host % mesh[2]:
    notes.append(f"the tensor axis ({mesh[2]}) spans hosts of {topo.chips_per_host} GPUs: its collectives "
                 "cross the inter-host network")
  return PlanInputs(model=config.model.config, optimizer=config.optimizer, train_steps=config.run.train_steps,
                    batch_size=config.data.batch_size, seq_len=config.seq_len, num_microbatches=layout.num_microbatches,
                    mesh=mesh, sequence_parallel=args.sequence_parallel or layout.sequence_parallel, notes=tuple(notes),
                    lm_head_positions=layout.lm_head_positions, loss_chunk_size=layout.loss_chunk_size,
                    padding_mask=layout.padding_mask, nonfinite_guard=layout.nonfinite_guard)


def make_plan(inputs: PlanInputs, topo: topology_lib.Topology, *, compile_step: bool = True, probe_flops: bool = True,
              hbm_fraction: float | None = None, fit_by: str = "compiled", mfu: float = 0.4,
              environ: dict[str, str] | None = None) -> dict[str, Any]:
  """Builds, lowers and (optionally) compiles the step for `inputs` on `topo`; returns the report dict.

  `hbm_fraction`: the usable share of each chip's memory; None: as a run would get it (`memory_share`, which reads
  a GPU's from `environ`, default os.environ).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top
  from optiml_jax.planning import analytic  # pylint: disable=g-import-not-at-top
  from optiml_jax.planning import compiled as compiled_lib  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import step as step_lib  # pylint: disable=g-import-not-at-top

  share = memory_share(topo, hbm_fraction, environ)
  if jax.device_count() != topo.chips:
    raise PlanError(f"{jax.device_count()} devices visible but {topo.name} has {topo.chips} chips: run "
                    "through `python -m optiml_jax.plan` (which sets XLA_FLAGS) or `main()`")
  cfg = inputs.model
  shape = analytic.StepShape(inputs.batch_size, inputs.seq_len, inputs.num_microbatches, *inputs.mesh,
                             sequence_parallel=inputs.sequence_parallel, lm_head_positions=inputs.lm_head_positions,
                             loss_chunk_size=inputs.loss_chunk_size)
  try:
    analytic.check_step_shape(shape)
  except ValueError as e:
    raise PlanError(str(e)) from e
  # The step compiles here on CPU devices standing in for the target's: "auto" resolves for the target's kind.
  guard = step_lib.resolve_nonfinite_guard(inputs.nonfinite_guard, topo.kind)
  layout = config_lib.PartitioningArgs(mesh_shape=inputs.mesh, num_microbatches=inputs.num_microbatches,
                                       sequence_parallel=inputs.sequence_parallel,
                                       lm_head_positions=inputs.lm_head_positions,
                                       loss_chunk_size=inputs.loss_chunk_size, padding_mask=inputs.padding_mask,
                                       nonfinite_guard=guard)
  mesh = partitioning.make_mesh(*inputs.mesh)
  hosts = slice_hosts(topo, inputs.mesh, mesh)  # the hosts of the slice's chips, as the trainer's mesh has them
  try:
    lowered, program = compiled_lib.lower_train_step(cfg, inputs.optimizer, layout, train_steps=inputs.train_steps,
                                                     batch_size=inputs.batch_size, seq_len=inputs.seq_len, mesh=mesh)
  except ValueError as e:  # e.g. a dimension the mesh axis does not divide
    raise PlanError(f"cannot build the step of {describe_model(cfg)} on mesh {inputs.mesh}: {e}") from e
  notes = list(inputs.notes) + ([share.note] if share.note else [])
  host_rows = host_row_blocks(program.batch_sharding, hosts, inputs.batch_size, inputs.seq_len)
  if isinstance(host_rows, str):
    notes.append(host_rows)
  elif host_rows["row_blocks"] < topo.hosts:
    sets, rows = host_rows["row_blocks"], host_rows["rows_per_host"]
    split = (f"split each batch into {sets} sets of {rows} rows over {topo.hosts} hosts: {topo.hosts // sets} hosts "
             "hold each set" if sets > 1 else f"do not split the batch over the {topo.hosts} hosts: each holds it all")
    notes.append(f"the batch axes (data x fsdp) {split} and feed it alike, the same shard of the data "
                 "(trainer.runtime.process_row_block)")
  if topo.kind == "tpu" and topo.hosts > 1 and topo.physical_shape is None:
    notes.append(f"the physical shape of {topo.name} is not known here, so the data line lays its chips out host by "
                 "host; on the slice jax.make_mesh orders them by their place in the torus, and a host's rows can "
                 "differ (the trainer feeds whatever rows a host's chips hold: trainer.runtime.process_row_block)")
  state = program.layout.abstract
  estimate = analytic.estimate_memory(cfg, shape, params_bytes=analytic.sharded_bytes(state.params),
                                      opt_state_bytes=analytic.sharded_bytes((state.opt_state, state.step)))
  flops = analytic.estimate_flops(cfg, shape)
  xla = compiled_lib.compiled_figures(lowered) if compile_step else None
  probed = None
  if compile_step and probe_flops:
    probed = compiled_lib.probe_step_flops(cfg, inputs.optimizer, layout, train_steps=inputs.train_steps,
                                           batch_size=inputs.batch_size, seq_len=inputs.seq_len, mesh=mesh)

  usable = int(topo.hbm_bytes * share.fraction)
  compiled_peak = xla.peak_bytes if xla else None
  verdict_bytes = compiled_peak if fit_by == "compiled" and compiled_peak is not None else estimate.total
  seconds_per_step = flops.model_per_device / (mfu * topo.peak_flops)
  return {
      "topology": dataclasses.asdict(topo),
      "model": {
          "shape": describe_model(cfg),
          "num_params": cfg.num_params(),
          "dtype": str(cfg.dtype),
          "remat_policy": cfg.remat_policy,
          "scan_layers": cfg.scan_layers,
          "attention_impl": cfg.attention_impl
      },
      "plan": {
          "batch_size": inputs.batch_size,
          "seq_len": inputs.seq_len,
          "num_microbatches": inputs.num_microbatches,
          "lm_head_positions": inputs.lm_head_positions,
          "loss_chunk_size": inputs.loss_chunk_size,
          "nonfinite_guard": guard,
          "rows_per_device": shape.rows_per_device,
          "mesh": dict(zip(partitioning.MESH_AXES, inputs.mesh)),
          "sequence_parallel": inputs.sequence_parallel,
          "train_steps": inputs.train_steps,
          "host_rows": host_rows if isinstance(host_rows, dict) else None,
          "notes": notes
      },
      "analytic": {
          **dataclasses.asdict(estimate), "arguments": estimate.arguments,
          "temporaries": estimate.temporaries,
          "working": estimate.working,
          "peak": estimate.total
      },
      "compiled": None if xla is None else {
          **dataclasses.asdict(xla), "peak": compiled_peak,
          "backend": jax.default_backend()
      },
      "flops_per_device": {
          "model_analytic": flops.model_per_device,
          "hardware_analytic": flops.hardware_per_device,
          "compiled_probe": probed
      },
      "hbm_bytes": topo.hbm_bytes,
      "usable_bytes": usable,
      "hbm_fraction": share.fraction,
      "hbm_fraction_source": share.source,
      "fit_by": fit_by if compiled_peak is not None else "analytic",
      "fits_analytic": estimate.total <= usable,
      "fits_compiled": None if compiled_peak is None else compiled_peak <= usable,
      "fits": verdict_bytes <= usable,
      "mfu": mfu,
      "seconds_per_step_at_mfu": seconds_per_step,
      "hours_at_mfu": seconds_per_step * inputs.train_steps / 3600,
  }


@dataclasses.dataclass(frozen=True)
class SliceHosts:
  """Which host holds each simulated device, and how that was worked out (for the report's data line)."""

  process_of: dict[Any, int]
  layout: str


def slice_hosts(topo: topology_lib.Topology, mesh_shape: Sequence[int], mesh: Any) -> SliceHosts:
  """The host of each device of `mesh` (the planner's mesh of simulated CPU devices, `mesh_shape`) when the run
  builds that mesh on `topo`.

  On a TPU slice whose physical shape is known (`Topology.physical_shape`) the trainer's own
  `models.partitioning.make_mesh` (`jax.make_mesh`, splitting a side of the torus where it must) orders the
  chips, described as the slice reports them (`topology.slice_devices`), and each mesh position gets the host of
  the chip placed there: on a multi-host slice that is by the chips' place in the torus, not host by host.
  Elsewhere device i is on host i // chips_per_host: GPU clusters (`jax.make_mesh` orders GPUs by device id) and
  TPU sizes of unknown shape (a note says so).

  Raises:
    PlanError: `partitioning.make_mesh` cannot lay `mesh_shape` over the slice's chips: the trainer would stop
      there too.
  """
  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top

  devices = list(mesh.devices.flat)
  chips = topology_lib.slice_devices(topo)
  if chips is None:
    layout = "host by host" + (", GPUs in device id order" if topo.kind == "gpu" else "")
    return SliceHosts({device: i // topo.chips_per_host for i, device in enumerate(devices)}, layout)
  shape = topo.physical_name
  data, fsdp, tensor = mesh_shape
  try:
    placed = partitioning.make_mesh(data, fsdp, tensor, devices=chips)
  except (NotImplementedError, ValueError) as e:
    raise PlanError(f"mesh {tuple(mesh_shape)} cannot be laid over the {shape} chips of {topo.name}: "
                    f"the trainer's partitioning.make_mesh refuses it ({e})") from e
  layout = f"jax.make_mesh's order of the {shape} chips" + (", 2x2x1 per host" if topo.hosts > 1 else "")
  return SliceHosts({device: chip.process_index for device, chip in zip(devices, placed.devices.flat)}, layout)


def host_row_blocks(batch_sharding: Any, hosts: SliceHosts, batch_size: int, seq_len: int) -> dict[str, Any] | str:
  """The rows of each batch one host feeds, with the simulated devices on the hosts of `hosts` (`slice_hosts`):
  {"rows_per_host", "row_blocks", "host_0_rows", "layout"}: the rows of each host, the number of distinct sets of
  rows the hosts hold (fewer than the hosts when a mesh axis that does not shard the batch, such as tensor, spans
  hosts), host 0's rows as [start, stop) ranges and how the devices were put on hosts; or a note when the hosts'
  rows are sets that no sharding of the data can feed (`trainer.runtime.process_row_block`)."""
  from optiml_jax.trainer import runtime  # pylint: disable=g-import-not-at-top

  try:
    block = runtime.process_row_block(batch_sharding, batch_size, seq_len, process_of=hosts.process_of, process=0)
  except config_lib.ConfigError as e:
    return f"the hosts' chips hold rows that no sharding of the data can feed: {e}"
  return {
      "rows_per_host": block.rows,
      "row_blocks": block.count,
      "host_0_rows": [list(r) for r in block.ranges],
      "layout": hosts.layout
  }


def describe_model(cfg: Any) -> str:
  """'1.3B params (opt, L=24, d=2048, heads=32, ffn=8192)'; GQA models also show their key/value heads."""
  widths = cfg.layer_shapes()
  kv = "" if widths.kv_width == widths.q_width else f", kv_heads={widths.heads * widths.kv_width // widths.q_width}"
  return (f"{cfg.num_params() / 1e9:.1f}B params ({cfg.family}, L={cfg.num_hidden_layers}, d={cfg.hidden_size}, "
          f"heads={cfg.num_attention_heads}{kv}, ffn={widths.mlp_width})")


def _gib(value: float | None) -> str:
  return "-" if value is None else f"{value / GIB:.2f} GiB"


def lm_head_line(plan: dict[str, Any]) -> str:
  """How the step runs its LM head, for the report: 'at 128 gathered positions of 2048 or at all of them (a
  lax.cond, both branches counted); the loss 256 positions at a time'."""
  parts = []
  k, chunk = plan.get("lm_head_positions"), plan.get("loss_chunk_size")
  if k is not None and k < plan["seq_len"]:
    parts.append(f"at {k} gathered positions of {plan['seq_len']} or at all of them (a lax.cond, both branches "
                 "counted)")
  elif k is not None:
    parts.append(f"at every position (lm_head_positions {k} >= the length)")
  if chunk is not None:
    parts.append(f"the loss {min(chunk, plan['seq_len'])} positions at a time")
  return "; ".join(parts)


def data_line(hosts: int, host_rows: dict[str, Any]) -> str:
  """The report's data line: 'each of 64 host(s) feeds 8 rows per step, 16 distinct set(s) of rows (host 0: rows
  0-3, 32-35; layout: jax.make_mesh's order of the 4x8x8 chips, 2x2x1 per host)'."""
  rows = ", ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in host_rows["host_0_rows"])
  return (f"data       each of {hosts} host(s) feeds {host_rows['rows_per_host']} rows per step, "
          f"{host_rows['row_blocks']} distinct set(s) of rows (host 0: rows {rows}; layout: {host_rows['layout']})")


def format_report(report: dict[str, Any]) -> str:
  """The human-readable report of `make_plan`'s dict."""
  topo, plan, est, xla = report["topology"], report["plan"], report["analytic"], report["compiled"]
  mesh = plan["mesh"]
  lines = [
      f"topology   {topo['name']}: {topo['chips']} chips on {topo['hosts']} hosts, "
      f"{topo['hbm_bytes'] / GIB:g} GiB HBM each",
      f"model      {report['model']['shape']}, {report['model']['dtype']} compute, "
      f"remat {report['model']['remat_policy']}",
      f"step       batch {plan['batch_size']} x {plan['seq_len']}, {plan['num_microbatches']} microbatch(es) "
      f"-> {plan['rows_per_device']} row(s) per device per pass; mesh data={mesh['data']} fsdp={mesh['fsdp']} "
      f"tensor={mesh['tensor']}; sequence parallel {'on' if plan['sequence_parallel'] else 'off'}",
      *([f"lm head    {lm_head_line(plan)}"] if plan.get("lm_head_positions") or plan.get("loss_chunk_size") else []),
      *([data_line(topo["hosts"], plan["host_rows"])] if plan.get("host_rows") else []),
      *[f"note       {note}" for note in plan["notes"]],
      "",
      f"{'per device':<34}{'analytic':>14}{'compiled (XLA:CPU)':>22}",
  ]
  get = lambda key: None if xla is None else xla[key]
  rows = [("parameters (float32)", est["params"], None), ("optimizer state (float32)", est["opt_state"], None),
          ("gradients (float32)", est["grads"], None), ("saved activations", est["saved_activations"], None),
          ("working set (layer or LM head)", est["working"], None),
          ("arguments (state + batch)", est["arguments"], get("argument_bytes")),
          ("temporaries", est["temporaries"], get("temp_bytes")),
          ("outputs not aliased to inputs", None, None if xla is None else xla["output_bytes"] - xla["alias_bytes"]),
          ("generated code", None, get("generated_code_bytes")), ("peak", est["peak"], get("peak"))]
  lines += [f"  {name:<32}{_gib(a):>14}{_gib(c):>22}" for name, a, c in rows]
  lines.append(f"  {'usable HBM':<32}{_gib(report['usable_bytes']):>14}  "
               f"({report['hbm_fraction']:.0%} of {topo['hbm_bytes'] / GIB:g} GiB: {report['hbm_fraction_source']})")
  flops = report["flops_per_device"]
  probe = flops["compiled_probe"]
  lines += [
      "",
      f"FLOPs per step per device: {flops['model_analytic']:.3e} model (6N + 12LdS), "
      f"{flops['hardware_analytic']:.3e} with remat (analytic)" +
      (f", {probe:.3e} XLA (layers probed)" if probe else ""),
      f"time at {report['mfu']:.0%} MFU: {report['seconds_per_step_at_mfu']:.2f} s/step, "
      f"{report['hours_at_mfu']:.1f} h for {plan['train_steps']} steps",
  ]
  if xla is not None:
    lines.append(f"compiled in {xla['compile_seconds']:.1f} s")
  verdict = "FITS" if report["fits"] else "DOES NOT FIT"
  used = xla["peak"] if report["fit_by"] == "compiled" else est["peak"]
  lines.append(f"{verdict}: {report['fit_by']} peak {_gib(used)} vs usable {_gib(report['usable_bytes'])} "
               f"(analytic {'fits' if report['fits_analytic'] else 'does not fit'}" +
               ("" if report["fits_compiled"] is
                None else f", compiled {'fits' if report['fits_compiled'] else 'does not fit'}") + ")")
  return "\n".join(lines)


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.plan", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  gin_utils.add_gin_flags(parser)
  parser.add_argument("--topology", required=True,
                      help=f"slice or GPU cluster, e.g. {', '.join(topology_lib.EXAMPLES)}")
  parser.add_argument("--mesh", help="data,fsdp,tensor (one may be -1); default: PartitioningArgs.mesh_shape")
  parser.add_argument("--batch", type=int, help="sequences per step (replaces BATCH_SIZE)")
  parser.add_argument("--microbatches", type=int, help="replaces PartitioningArgs.num_microbatches")
  parser.add_argument("--sequence_parallel", action="store_true",
                      help="shard the residual stream over the tensor axis too (models/partitioning.py)")
  parser.add_argument("--no_compile", action="store_true", help="analytic figures only (no XLA compile)")
  parser.add_argument("--no_flops_probe", action="store_true",
                      help="skip the two small compiles that count FLOPs per layer")
  parser.add_argument("--fit_by", choices=("compiled", "analytic"), default="compiled",
                      help="which peak decides the verdict and exit code (default compiled)")
  parser.add_argument(
      "--hbm_fraction", type=float, default=None,
      help="usable share of each chip's memory (default: 0.95 on TPUs; on GPUs what JAX's allocator "
      "gives a run: XLA_CLIENT_MEM_FRACTION if set, else 0.75)")
  parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization for the time estimate")
  parser.add_argument("--json_out", help="also write the report as JSON to this path ('-': stdout only)")
  return parser.parse_args(gin_utils.rewrite_gin_args(argv))


def _run(args: argparse.Namespace, topo: topology_lib.Topology) -> int:
  try:
    inputs = load_inputs(args, topo)
    report = make_plan(inputs, topo, compile_step=not args.no_compile, probe_flops=not args.no_flops_probe,
                       hbm_fraction=args.hbm_fraction, fit_by=args.fit_by, mfu=args.mfu)
  except (gin_utils.GinConfigError, PlanError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG_ERROR
  except Exception:  # pylint: disable=broad-except  (a crash must not read as "does not fit")
    traceback.print_exc()
    return EXIT_INTERNAL_ERROR
  if args.json_out == "-":
    print(json.dumps(report, indent=1))
  else:
    print(format_report(report))
    if args.json_out:
      try:
        with open(args.json_out, "w", encoding="utf-8") as f:
          json.dump(report, f, indent=1)
      except OSError as e:  # a full disk, a folder removed meanwhile: the verdict above stands, the file does not
        print(f"error: --json_out {args.json_out}: cannot write the report ({e.strerror or e})", file=sys.stderr)
        return EXIT_CONFIG_ERROR
  return EXIT_FITS if report["fits"] else EXIT_DOES_NOT_FIT


def check_json_out(path: str | None) -> None:
  """Raises PlanError naming --json_out when the report could not be written to `path` (a folder, or a file in a
  folder that does not exist or cannot be written): said before the plan is made, not after minutes of it."""
  if not path or path == "-":
    return
  if os.path.isdir(path):
    raise PlanError(f"--json_out {path}: is a folder; name the file to write the JSON report to")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise PlanError(f"--json_out {path}: the folder {folder} does not exist (or is not a folder); create it first")
  if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise PlanError(f"--json_out {path}: cannot write there (permission denied)")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_flags(argv)
  try:
    topo = topology_lib.parse_topology(args.topology)
    if (args.hbm_fraction is not None and not 0 < args.hbm_fraction <= 1) or not 0 < args.mfu <= 1:
      raise PlanError(f"--hbm_fraction and --mfu must be in (0, 1], got {args.hbm_fraction} and {args.mfu}")
    memory_share(topo, args.hbm_fraction)  # a GPU memory fraction jaxlib would refuse: said before planning
    check_json_out(args.json_out)
  except (topology_lib.TopologyError, PlanError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_CONFIG_ERROR
  env = plan_environment(topo.chips)
  if "jax" in sys.modules:  # too late to choose its devices here: plan in a fresh process
    return subprocess.call([sys.executable, "-m", "optiml_jax.plan", *argv], env=env)
  os.environ.update(env)
  return _run(args, topo)


if __name__ == "__main__":
  sys.exit(main())
