"""The analytic memory and FLOP model of one training step, per device, without compiling anything.

Sits under the planner (`optiml_jax.plan`), beside `planning.compiled`, whose XLA figures it is checked
against (tests/planning/test_analytic.py). Inputs are plain values: a model config of any family (what it reads
of the model is its `layer_shapes()`, `models/shapes.py`, plus sizes and settings every config has), the step's figures
(`StepShape`) and the per-device bytes of parameters and optimizer state, which the planner reads from the
trainer's sharded state layout (exact: `sharded_bytes`).

Memory at the peak of a step (per device):
  params + optimizer state    float32 master weights and Adam's two float32 moments, sharded by the rule table;
  gradients                   float32, sharded like the params; x2 with microbatches (accumulator + current);
  saved activations           what the forward pass keeps for the backward pass, over all layers; depends on
                              the remat policy: "full" keeps each layer's input only ([rows, seq, hidden]);
                              "dots_with_no_batch_dims_and_attention" adds attention's output (and a fused
                              kernel's softmax statistics) to the weight matmuls' outputs;
  working set                 the larger of (one layer's backward: its recomputed activations, their
                              gradients and its all-gathered weights and weight gradients) and (the LM head:
                              float32 logits, softmax and logit gradients over the local vocabulary slice,
                              and the tied embedding's gradients before their reduce-scatter).
The LM head's logits are over every position of a row, or over `loss_chunk_size` positions at a time (the
chunked loss, trainer/chunked_loss.py). With `lm_head_positions = k` the step runs the head at k gathered
positions or at every position (a `lax.cond`, both branches compiled): the head's working set is the full
branch's, and the cond also keeps each branch's residuals from the forward pass to the backward pass (one
float32 logits tensor per branch; with a chunked loss, each branch's hidden-state gradients and one
output-matrix gradient), which the plain step's compiler fuses away; all of these are counted, so the figure
stays on the safe side of the compiled step's (tests/planning/test_analytic.py).
`rows` is the rows of one microbatch on one device: batch / microbatches / (data x fsdp). Tensors of the
residual stream [rows, seq, hidden] are replicated over the tensor axis unless sequence parallelism shards
them over it; the attention scores [rows, heads, seq, seq] (float32) exist unless the attention is fused
(cuDNN flash attention).

FLOPs per step: model FLOPs 6N + 12·L·d·S per token (PaLM; the config's `flops_per_token`) times the tokens of
the global batch, and hardware FLOPs, which add what rematerialization recomputes (one more forward pass of
the layers but the last projection (fc2, down_proj) under "full") and, with `lm_head_positions = k`, take
off the LM head's work at the positions past k (6 x vocab x width per token), which the step skips whenever
every row's targets fit in k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

ModelConfig = Any  # a family's config (`models/registry.py`): OPTConfig, LlamaConfig

FLOAT32_BYTES = 4
DROPOUT_MASK_BYTES = 1


@dataclasses.dataclass(frozen=True)
class StepShape:
  """The figures of a step that memory depends on, besides the model.

  Attributes:
    batch_size: sequences per step (global).
    seq_len: tokens per sequence.
    num_microbatches: gradient-accumulation passes per step.
    data, fsdp, tensor: mesh axis sizes.
    sequence_parallel: residual-stream activations sharded over the tensor axis too.
    lm_head_positions: `PartitioningArgs.lm_head_positions` (None: the LM head at every position).
    loss_chunk_size: `PartitioningArgs.loss_chunk_size` (None: the LM head and loss in one pass).
  """

  batch_size: int
  seq_len: int
  num_microbatches: int
  data: int
  fsdp: int
  tensor: int
  sequence_parallel: bool = False
  lm_head_positions: int | None = None
  loss_chunk_size: int | None = None

  @property
  def gathers_head_positions(self) -> bool:
    """Whether the step has the `lax.cond` of `lm_head_positions` (a k of at least the length does not)."""
    return self.lm_head_positions is not None and self.lm_head_positions < self.seq_len

  @property
  def devices(self) -> int:
    return self.data * self.fsdp * self.tensor

  @property
  def rows_per_device(self) -> int:
    """Sequences of one microbatch on one device (examples are split over data x fsdp)."""
    return self.batch_size // self.num_microbatches // (self.data * self.fsdp)


def check_step_shape(shape: StepShape) -> None:
  """Raises ValueError naming the figure when the batch cannot be laid out on the mesh."""
  shards = shape.data * shape.fsdp
  if shape.num_microbatches < 1 or shape.batch_size % shape.num_microbatches:
    raise ValueError(f"batch_size {shape.batch_size} is not divisible by num_microbatches="
                     f"{shape.num_microbatches}")
  per_pass = shape.batch_size // shape.num_microbatches
  if per_pass % shards:
    raise ValueError(f"a microbatch of {per_pass} rows (batch_size {shape.batch_size} / num_microbatches "
                     f"{shape.num_microbatches}) does not divide over data x fsdp = {shards} devices; use fewer "
                     "microbatches or a smaller data x fsdp")


def sharded_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs that carry NamedShardings (the largest shard)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def layer_param_count(config: ModelConfig) -> int:
  """Parameters of one decoder layer."""
  two = dataclasses.replace(config, num_hidden_layers=2).num_params()
  return two - dataclasses.replace(config, num_hidden_layers=1).num_params()


def _fused_attention(config: ModelConfig) -> bool:
  return config.attention_impl == "cudnn"


@dataclasses.dataclass(frozen=True)
class LayerTensors:
  """Bytes per device of the tensors one decoder layer produces for one microbatch (see `layer_tensors`)."""

  residual: int  # one [rows, seq, hidden] tensor of the residual stream (sharded over tensor under SP)
  normed: int  # a norm's output fed to tensor-parallel matmuls: whole hidden, replicated over tensor
  heads: int  # q or the attention output: [rows, seq, q_width / tensor]
  kv: int  # k or v: [rows, seq, kv_width / tensor] (smaller than heads under grouped-query attention)
  mlp: int  # one feed-forward inner tensor: [rows, seq, mlp_width / tensor]
  mlp_in: int  # matmuls into the feed-forward width: 1 (fc1) or 2 (SwiGLU's gate and up)
  scores: int  # float32 attention logits [rows, heads / tensor, seq, seq]; 0 when fused
  probs: int  # attention probabilities in the compute dtype; 0 when fused
  softmax_stats: int  # a fused kernel's float32 log-sum-exp per query [rows, heads / tensor, seq]; 0 unfused
  norm_f32: int  # the float32 copy a norm computes in (sharded like the residual stream)
  dropout_mask: int  # one dropout mask on the residual stream, 0 without dropout

  def everything(self) -> int:
    """All a layer's backward needs when nothing is recomputed (remat "none")."""
    return (4 * self.residual  # layer input, attention projection output, the sum after attention, mlp output
            + 2 * self.normed  # the two norm outputs
            + 2 * self.heads + 2 * self.kv  # q, k, v, attention output
            + 2 * self.mlp_in * self.mlp  # fc1 and its ReLU; or gate, up, SiLU(gate) and the product
            + self.scores + self.probs + 2 * self.norm_f32  # each norm computes in float32
            + 2 * self.dropout_mask)  # the attention and feed-forward branches

  def dots(self) -> int:
    """Matmul outputs (remat "dots"): q, k, v, scores, attention output, its projection, the mlp matmuls."""
    return 2 * self.heads + 2 * self.kv + self.scores + 2 * self.normed + self.mlp_in * self.mlp

  def dots_without_batch_dims(self) -> int:
    """Weight matmul outputs only (remat "dots_with_no_batch_dims"): q, k, v, out projection, the mlp matmuls."""
    return self.heads + 2 * self.kv + 2 * self.normed + self.mlp_in * self.mlp

  def dots_without_batch_dims_and_attention(self) -> int:
    """Those and attention's outputs (remat "dots_with_no_batch_dims_and_attention"): its output, and a fused
    kernel's softmax statistics."""
    return self.dots_without_batch_dims() + self.heads + self.softmax_stats

  def largest(self) -> int:
    return max(self.residual, self.normed, self.heads, self.mlp, self.scores, self.probs, self.norm_f32)


def layer_tensors(config: ModelConfig, rows: int, seq_len: int, tensor: int, sequence_parallel: bool) -> LayerTensors:
  """The per-device sizes of one layer's activations for `rows` sequences of `seq_len` tokens."""
  widths = config.layer_shapes()
  item = np.dtype(config.dtype).itemsize
  tokens = rows * seq_len
  hidden = widths.hidden
  residual_shards = tensor if sequence_parallel else 1
  local_heads = max(1, widths.heads // tensor)
  fused = _fused_attention(config)
  return LayerTensors(
      residual=tokens * hidden * item // residual_shards,
      normed=tokens * hidden * item,
      heads=tokens * widths.q_width * item // tensor,
      kv=tokens * widths.kv_width * item // tensor,
      mlp=tokens * widths.mlp_width * item // tensor,
      mlp_in=widths.mlp_in_matmuls,
      scores=0 if fused else rows * local_heads * seq_len * seq_len * FLOAT32_BYTES,
      probs=0 if fused else rows * local_heads * seq_len * seq_len * item,
      softmax_stats=rows * local_heads * seq_len * FLOAT32_BYTES if fused else 0,
      norm_f32=tokens * hidden * FLOAT32_BYTES // residual_shards,
      dropout_mask=tokens * hidden * DROPOUT_MASK_BYTES // residual_shards if config.dropout > 0 else 0,
  )


def saved_per_layer(config: ModelConfig, layer: LayerTensors) -> int:
  """What the forward pass keeps per layer for the backward pass, by remat policy."""
  policy = config.remat_policy
  if policy == "full":
    return layer.residual
  if policy == "dots":
    return layer.residual + layer.dots()
  if policy == "dots_with_no_batch_dims":
    return layer.residual + layer.dots_without_batch_dims()
  if policy == "dots_with_no_batch_dims_and_attention":
    return layer.residual + layer.dots_without_batch_dims_and_attention()
  return layer.everything()


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Per-device bytes at the peak of a step (see the module docstring)."""

  params: int
  opt_state: int
  batch: int
  grads: int
  saved_activations: int
  layer_working: int
  gathered_weights: int
  logits_working: int

  @property
  def working(self) -> int:
    return max(self.layer_working + self.gathered_weights, self.logits_working)

  @property
  def arguments(self) -> int:
    """What the step takes in: the train state and the batch (compare XLA's argument bytes)."""
    return self.params + self.opt_state + self.batch

  @property
  def temporaries(self) -> int:
    """What the step allocates besides its arguments (compare XLA's temp bytes)."""
    return self.grads + self.saved_activations + self.working

  @property
  def total(self) -> int:
    return self.arguments + self.temporaries


def lm_head_working(config: ModelConfig, shape: StepShape) -> int:
  """Per-device bytes of the LM head's working set at its peak (see the module docstring).

  One pass over `positions` per row holds float32 logits, their log-softmax, its exponent and their gradient
  over `loss_chunk_size` of them at a time (all of them without chunks) and the final hidden state and its
  gradient over all of them; add the tied embedding's [vocab / tensor, width] gradients (from the LM head,
  from the lookup, and their sum) before they are reduce-scattered over fsdp. With `lm_head_positions` the full
  branch's pass is the larger, and both branches' residuals are held across the cond.
  """
  rows, seq = shape.rows_per_device, shape.seq_len
  local_vocab = -(-config.vocab_size // shape.tensor)
  embed_width = config.layer_shapes().embed_width
  embed_grads = local_vocab * embed_width * FLOAT32_BYTES

  def logits(positions: int) -> int:
    return rows * positions * local_vocab * FLOAT32_BYTES

  def one_pass(positions: int) -> int:
    at_once = min(positions, shape.loss_chunk_size or positions)
    return 4 * logits(at_once) + 2 * rows * positions * config.hidden_size * FLOAT32_BYTES

  working = one_pass(seq) + 3 * embed_grads
  if shape.gathers_head_positions:
    k = int(shape.lm_head_positions or 0)
    if shape.loss_chunk_size is None:  # each branch's softmax, [rows, positions, vocab / tensor] float32
      working += logits(seq) + logits(k)
    else:  # each branch's hidden-state gradients (compute dtype); the output matrix's (float32) share a buffer
      working += embed_grads + rows * (seq + k) * embed_width * np.dtype(config.dtype).itemsize
  return working


def estimate_memory(config: ModelConfig, shape: StepShape, *, params_bytes: int, opt_state_bytes: int,
                    num_features: int = 5) -> MemoryEstimate:
  """The per-device memory model of one step.

  Args:
    config: the model.
    shape: batch, microbatches and mesh.
    params_bytes, opt_state_bytes: per-device bytes of the master weights and the optimizer state (read
      from the sharded state layout with `sharded_bytes`).
    num_features: int32 [batch, seq] features in a batch (the five decoder_* features when packed).
  """
  check_step_shape(shape)
  rows = shape.rows_per_device
  layer = layer_tensors(config, rows, shape.seq_len, shape.tensor, shape.sequence_parallel)
  layers = config.num_hidden_layers
  saved = layers * saved_per_layer(config, layer)
  # The backward pass of one layer: its activations (recomputed unless all were saved) and their gradients,
  # about as large again at the layer's widest point.
  layer_working = layer.everything() + 2 * layer.largest()
  gathered = 2 * layer_param_count(config) * FLOAT32_BYTES // shape.tensor  # weights + weight gradients
  logits_working = lm_head_working(config, shape)
  grads = params_bytes * (2 if shape.num_microbatches > 1 else 1)
  # Batches are laid out as ("batch", "length"): over data x fsdp, and along the sequence over tensor too
  # under sequence parallelism.
  batch_shards = shape.data * shape.fsdp * (shape.tensor if shape.sequence_parallel else 1)
  batch = num_features * shape.batch_size * shape.seq_len * 4 // batch_shards
  return MemoryEstimate(params=params_bytes, opt_state=opt_state_bytes, batch=batch, grads=grads,
                        saved_activations=saved, layer_working=layer_working, gathered_weights=gathered,
                        logits_working=logits_working)


@dataclasses.dataclass(frozen=True)
class FlopEstimate:
  """FLOPs of one step: `model` (6N + 12LdS per token) and `hardware` (with what remat recomputes)."""

  model_total: float
  hardware_total: float
  devices: int

  @property
  def model_per_device(self) -> float:
    return self.model_total / self.devices

  @property
  def hardware_per_device(self) -> float:
    return self.hardware_total / self.devices


def recompute_flops_per_token(config: ModelConfig, seq_len: int) -> float:
  """FLOPs the backward pass spends recomputing the forward pass, per token, by remat policy."""
  widths, layers = config.layer_shapes(), config.num_hidden_layers
  # The last projection's output (fc2, down_proj) feeds only the residual sum, which the next layer keeps, so its
  # matmul is not recomputed.
  recomputed_matmuls = layers * widths.recomputed_matmul_params()
  attention = 4 * layers * widths.q_width * seq_len  # QK^T and PV, forward
  policy = config.remat_policy
  if policy == "full":
    return 2 * recomputed_matmuls + attention
  if policy == "dots_with_no_batch_dims":
    return attention
  if policy == "dots_with_no_batch_dims_and_attention":  # fused: none; XLA's probabilities need QK^T again
    return 0.0 if _fused_attention(config) else attention / 2
  return 0.0


def estimate_flops(config: ModelConfig, shape: StepShape) -> FlopEstimate:
  tokens = shape.batch_size * shape.seq_len
  model = float(config.flops_per_token(shape.seq_len)) * tokens
  hardware = model + recompute_flops_per_token(config, shape.seq_len) * tokens
  if shape.gathers_head_positions:  # the head's matmul, forward and backward, at the positions past k
    skipped = shape.batch_size * (shape.seq_len - int(shape.lm_head_positions or 0))
    hardware -= 6.0 * config.vocab_size * config.layer_shapes().embed_width * skipped
  return FlopEstimate(model_total=model, hardware_total=hardware, devices=shape.devices)
