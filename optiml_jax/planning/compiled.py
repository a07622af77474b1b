"""Ahead-of-time compilation of the trainer's real train step with abstract inputs, and XLA's own figures.

Sits under the planner (`optiml_jax.plan`): `lower_train_step` takes the step and the sharded state layout
from `trainer.loop.build_program` (the same function a training run jit-s, from the same
`trainer.config` groups: the model config, `OptimizerArgs` and `PartitioningArgs`) and lowers it with
ShapeDtypeStructs, so nothing is allocated; `compiled_figures` compiles it and reads
`memory_analysis()` (per-device argument, output, alias, temporary and generated-code bytes) and
`cost_analysis()` FLOPs. The caller provides the devices: the planner simulates a slice with
`--xla_force_host_platform_device_count` on CPU.

FLOPs: XLA's cost analysis counts the body of a while loop once, and the step has two of them (the scan
over layers, the scan over microbatches), so the compiled program's own count is not a step's.
`probe_step_flops` therefore compiles the step twice more with the layers unrolled, for 1 and 2 layers and
one microbatch of the same rows, and extrapolates: flops(1 layer) + (L - 1) x (flops(2) - flops(1)), times
the microbatches. The counts include what rematerialization recomputes.

XLA:CPU keeps some bfloat16 buffers in float32 (it has no native bfloat16 arithmetic), so with a bfloat16
model its temporary bytes are an upper bound of what a TPU or GPU compiler allocates.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, cast

import jax
import jax.numpy as jnp

from optiml_jax.models import partitioning
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
            "decoder_positions")


def abstract_batch(batch_size: int, seq_len: int, sharding: jax.sharding.Sharding) -> dict[str, jax.ShapeDtypeStruct]:
  """The packed int32 `decoder_*` features of a global batch, as ShapeDtypeStructs."""
  return {name: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=sharding) for name in FEATURES}


def lower_train_step(model_config: config_lib.ModelConfig, optimizer: config_lib.OptimizerArgs,
                     partitioning_args: config_lib.PartitioningArgs, *, train_steps: int, batch_size: int, seq_len: int,
                     mesh: jax.sharding.Mesh) -> tuple[jax.stages.Lowered, loop.Program]:
  """Lowers the trainer's jit-ed step for these settings on `mesh` with abstract state, batch and rng."""
  program = loop.build_program(model_config, optimizer, partitioning_args, train_steps, seq_len, mesh)
  batch = abstract_batch(batch_size, seq_len, program.batch_sharding)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  with partitioning.mesh_context(mesh, program.rules):
    lowered = program.train_fn.lower(program.layout.abstract, batch, rng)
  return lowered, program


@dataclasses.dataclass(frozen=True)
class CompiledFigures:
  """Per-device figures XLA reports for a compiled step (bytes; None where the backend gives none)."""

  argument_bytes: int | None
  output_bytes: int | None
  alias_bytes: int | None
  temp_bytes: int | None
  generated_code_bytes: int | None
  flops: float | None  # XLA's count: while-loop bodies once (see the module docstring)
  compile_seconds: float

  @property
  def peak_bytes(self) -> int | None:
    """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
    if self.argument_bytes is None or self.temp_bytes is None:
      return None
    outputs = (self.output_bytes or 0) - (self.alias_bytes or 0)
    return self.argument_bytes + max(outputs, 0) + self.temp_bytes + (self.generated_code_bytes or 0)


def _first(analysis: Any) -> Mapping[str, Any] | None:
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else None
  return analysis


def compiled_figures(lowered: jax.stages.Lowered) -> CompiledFigures:
  """Compiles `lowered` and reads its memory and cost analyses (tolerating backends that give none)."""
  started = time.time()
  compiled = lowered.compile()
  seconds = time.time() - started
  try:
    memory = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    memory = None
  try:
    cost = _first(compiled.cost_analysis())
  except (NotImplementedError, RuntimeError):
    cost = None
  get = lambda name: None if memory is None else int(getattr(memory, name))
  flops = None if not cost or "flops" not in cost else float(cost["flops"])
  return CompiledFigures(argument_bytes=get("argument_size_in_bytes"), output_bytes=get("output_size_in_bytes"),
                         alias_bytes=get("alias_size_in_bytes"), temp_bytes=get("temp_size_in_bytes"),
                         generated_code_bytes=get("generated_code_size_in_bytes"), flops=flops, compile_seconds=seconds)


def probe_step_flops(model_config: config_lib.ModelConfig, optimizer: config_lib.OptimizerArgs,
                     partitioning_args: config_lib.PartitioningArgs, *, train_steps: int, batch_size: int, seq_len: int,
                     mesh: jax.sharding.Mesh) -> float | None:
  """Per-device FLOPs of a whole step by XLA's count, from unrolled 1- and 2-layer compilations.

  None when the backend gives no cost analysis. Counted for the LM head at every position (what a step
  with `lm_head_positions` does when a row holds more targets; in one pass, as XLA counts a chunked loss's
  loop body once): an upper bound. Any family: the probes are the
  model's config with its layer count and `scan_layers` replaced.
  """
  num_microbatches = partitioning_args.num_microbatches
  rows = batch_size // num_microbatches
  one_pass = dataclasses.replace(partitioning_args, num_microbatches=1, lm_head_positions=None, loss_chunk_size=None)
  counts = []
  for layers in (1, 2):
    probe = dataclasses.replace(cast(Any, model_config), num_hidden_layers=layers, scan_layers=False)
    lowered, _ = lower_train_step(probe, optimizer, one_pass, train_steps=train_steps, batch_size=rows, seq_len=seq_len,
                                  mesh=mesh)
    figures = compiled_figures(lowered)
    if figures.flops is None:
      return None
    counts.append(figures.flops)
  per_layer = counts[1] - counts[0]
  return num_microbatches * (counts[0] + (model_config.num_hidden_layers - 1) * per_layer)
