"""One training step: target-only cross-entropy, gradient accumulation, the optimizer update, a NaN guard.

Sits between the batch stream (packed features from `optiml_jax.data.packing`) and the loop, which jit-s
`train_step` over the mesh. Pure functions of plain arguments: the model is any Flax module with t5x's
decoder-only call signature, the optimizer any optax transformation.

Loss = (sum over tokens of cross-entropy x decoder_loss_weights) / (sum of decoder_loss_weights), over the
whole global batch: with `num_microbatches > 1` the sums are accumulated over microbatches and divided once,
so the update equals the one a single large batch would give. Microbatch m takes rows m, m + M, m + 2M, ...
(`_split_microbatches`), so each stays spread over every device that holds the batch: no activations move
between devices inside the accumulation loop.

Instruction tuning puts loss on target tokens only, a small share of a packed row. With `lm_head_positions=k`
the LM head (the float32 logits over 50272 ids) runs only at the first k weighted positions of each row,
whenever no row has more than k; a batch that has more takes the full pass, so the loss and the gradients
are those of the full pass either way (one `lax.cond`, both branches compiled). With `loss_chunk_size=c` the
model returns its final hidden states and the head and loss run c positions at a time
(trainer/chunked_loss.py): the float32 logits of the whole batch are never held; the two combine.

A step whose loss or gradient norm is not finite leaves the parameters and optimizer state as they were. Two ways
give the same state: `nonfinite_guard="select"` computes the update and picks old or new element by element (one
more pass over parameters and AdamW state unless the compiler fuses the pick into the update), "cond" runs the
update under a `lax.cond` on the one flag, so a finite step reads and writes the state once (on XLA's CPU backend
10% fewer bytes a step at opt-125m shapes); a GPU's conditional waits on the host for the flag.
`resolve_nonfinite_guard` picks one per platform for "auto". The gradients reach the update as sums with the
factor 1 / loss weight, applied inside it (`apply_update`), so scaling, clipping, AdamW and the guard can fuse into
one pass over each parameter (tools/benchmarks/update.py).

Rows end in padding (data/packing; target 0, weight 0, segment 0). Causal attention keeps every real token
from the later padding, and packed rows' segment ids keep segments apart, so `padding_mask=False` withholds the
targets from the model (OPT masks keys whose target is 0): only padding positions, which carry no loss, see
other keys. An unpacked batch (no segment ids) then needs no attention mask at all, which lets cuDNN run plain
causal attention instead of reading a dense [batch, 1, length, length] mask. Rows padded elsewhere need the
default.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import chunked_loss
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import optimizer as optimizer_lib

Batch = Mapping[str, jax.Array]


def _weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  with jax.named_scope("cross_entropy"):  # names the loss's ops in a profile (tools/benchmarks/profile_step.py)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(token_loss * weights)


def weighted_positions_first(weights: jax.Array, k: int) -> jax.Array:
  """[batch, k] int32: each row's positions of non-zero weight in order, then the others (in order)."""
  return jnp.argsort(weights <= 0, axis=1, stable=True)[:, :k].astype(jnp.int32)


def loss_sums(params: Any, batch: Batch, model: nn.Module, dropout_rng: jax.Array | None, enable_dropout: bool,
              lm_head_positions: int | None = None, loss_chunk_size: int | None = None,
              padding_mask: bool = True) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Returns (sum of weighted token cross-entropy, (same, sum of weights)) for `jax.value_and_grad`.

  `lm_head_positions`, `loss_chunk_size`, `padding_mask`: see the module docstring (None, None, True: the LM
  head at every position in one pass, padding keys masked).
  """
  targets = batch["decoder_target_tokens"]
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  rngs: Any = {"dropout": dropout_rng} if enable_dropout else None

  def weighted_loss(targets_at: jax.Array, weights_at: jax.Array, **kwargs: Any) -> jax.Array:
    if loss_chunk_size is not None:  # a model of this package's families (t5x's signature has no such flag)
      kwargs["return_hidden"] = True
    out: Any = model.apply({"params": params}, batch["decoder_input_tokens"], targets if padding_mask else None,
                           decoder_segment_ids=batch.get("decoder_segment_ids"),
                           decoder_positions=batch.get("decoder_positions"), enable_dropout=enable_dropout, rngs=rngs,
                           **kwargs)
    if loss_chunk_size is None:
      return _weighted_cross_entropy(out, targets_at, weights_at)
    hidden, head = out
    return chunked_loss.chunked_cross_entropy(hidden, head, targets_at, weights_at, loss_chunk_size)

  def everywhere():
    return weighted_loss(targets, weights)

  if lm_head_positions is None or lm_head_positions >= targets.shape[1]:
    total = everywhere()
  else:

    def at_weighted_positions():
      order = weighted_positions_first(weights, lm_head_positions)
      take = lambda x: jnp.take_along_axis(x, order, axis=1)
      return weighted_loss(take(targets), take(weights), logit_positions=order)

    fits = jnp.max(jnp.sum(weights > 0, axis=1)) <= lm_head_positions
    total = jax.lax.cond(fits, at_weighted_positions, everywhere)
  return total, (total, jnp.sum(weights))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  """[B, ...] -> [M, B / M, ...], strided: microbatch m holds rows m, m + M, m + 2M, ...

  The global batch is laid out over data x fsdp in contiguous blocks of rows, so a strided microbatch takes the
  same number of rows from every device's block and stays on all of them: the scan slices each device's own rows.
  A contiguous split (rows m*B/M .. (m+1)*B/M) would put each microbatch on a subset of the devices and make XLA
  move activations and logits between them in every scan iteration. The loss and gradients are sums over all
  rows either way; only which rows share a pass (and so a dropout key) differs.
  """

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}")
    return x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:]).swapaxes(0, 1)

  return {k: split(v) for k, v in batch.items()}


def gradients(params: Any, batch: Batch, model: nn.Module, dropout_rng: jax.Array, *, enable_dropout: bool = True,
              num_microbatches: int = 1, lm_head_positions: int | None = None, loss_chunk_size: int | None = None,
              padding_mask: bool = True) -> tuple[Any, jax.Array, jax.Array]:
  """Returns (summed float32 gradients, summed loss, summed weights) over the batch's microbatches."""
  grad_fn = jax.value_and_grad(
      functools.partial(loss_sums, lm_head_positions=lm_head_positions, loss_chunk_size=loss_chunk_size,
                        padding_mask=padding_mask), has_aux=True)
  if num_microbatches <= 1:
    (_, (loss, weight)), grads = grad_fn(params, batch, model, dropout_rng, enable_dropout)
    return jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads), loss, weight

  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, xs):
    grad_acc, loss_acc, weight_acc = carry
    index, microbatch = xs
    rng = jax.random.fold_in(dropout_rng, index)
    (_, (loss, weight)), grads = grad_fn(params, microbatch, model, rng, enable_dropout)
    grad_acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
    return (grad_acc, loss_acc + loss, weight_acc + weight), None

  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, loss, weight), _ = jax.lax.scan(body, init, (jnp.arange(num_microbatches), micro))
  return grads, loss, weight


NONFINITE_GUARDS = config_lib.NONFINITE_GUARDS


def resolve_nonfinite_guard(guard: str, platform: str) -> str:
  """"cond" or "select" for `guard` on devices of `platform` ("cpu", "gpu", "tpu"): "auto" is "cond" on the CPU,
  where it was measured to pay, and "select" elsewhere until a measurement there says otherwise."""
  if guard not in NONFINITE_GUARDS:
    raise ValueError(f"nonfinite_guard: expected one of {NONFINITE_GUARDS}, got {guard!r}")
  if guard != "auto":
    return guard
  return "cond" if platform == "cpu" else "select"


def apply_update(params: Any, opt_state: Any, grad_sums: Any, grad_scale: jax.Array, grad_norm: jax.Array,
                 finite: jax.Array, tx: optax.GradientTransformation,
                 nonfinite_guard: str = "select") -> tuple[Any, Any]:
  """(params, opt_state) after `tx`'s update from the gradients `grad_sums` x `grad_scale` (summed gradients and
  1 / the loss weight), or the ones given where `finite` is False.

  The scaling happens inside the update (inside the guard's `lax.cond` too), so the compiler can fuse it, the
  clipping, AdamW and the guard into one pass over each parameter instead of first writing the mean gradients.
  `grad_norm` (the mean gradients' global norm) reaches `tx` as `grad_norm=`, which the recipe's clipping takes
  instead of computing its own (trainer/optimizer.py); other transformations ignore it.
  `nonfinite_guard`: "select" or "cond" (module docstring)."""

  def update(params: Any, opt_state: Any) -> tuple[Any, Any]:
    grads = jax.tree_util.tree_map(lambda g: g * grad_scale, grad_sums)
    updates, new_opt_state = optax.with_extra_args_support(tx).update(grads, opt_state, params, grad_norm=grad_norm)
    return optax.apply_updates(params, updates), new_opt_state

  if nonfinite_guard == "cond":
    return jax.lax.cond(finite, update, lambda p, o: (p, o), params, opt_state)
  if nonfinite_guard == "select":
    new_params, new_opt_state = update(params, opt_state)
    keep = lambda new, old: jnp.where(finite, new, old)
    return jax.tree_util.tree_map(keep, new_params, params), jax.tree_util.tree_map(keep, new_opt_state, opt_state)
  raise ValueError(f"nonfinite_guard: expected 'cond' or 'select', got {nonfinite_guard!r}")


def train_step(state: checkpointing.TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule | None = None, num_microbatches: int = 1,
               enable_dropout: bool = True, lm_head_positions: int | None = None, loss_chunk_size: int | None = None,
               padding_mask: bool = True,
               nonfinite_guard: str = "select") -> tuple[checkpointing.TrainState, dict[str, jax.Array]]:
  """Applies one update. A non-finite loss or gradient leaves params and optimizer state unchanged
  (the step counter and the learning-rate schedule's count still advance, so the schedule and the data stay
  aligned: `optimizer.set_schedule_count`) and reports `finite=0`;
  the loop decides whether to skip on or stop. `nonfinite_guard`: "select" or "cond" (module docstring)."""
  dropout_rng = jax.random.fold_in(rng, state.step)
  grads, loss_sum, weight_sum = gradients(state.params, batch, model, dropout_rng, enable_dropout=enable_dropout,
                                          num_microbatches=num_microbatches, lm_head_positions=lm_head_positions,
                                          loss_chunk_size=loss_chunk_size, padding_mask=padding_mask)
  scale = 1.0 / jnp.maximum(weight_sum, 1.0)  # the mean over the global batch's loss weights
  loss = loss_sum * scale
  grad_norm = optax.global_norm(grads) * scale
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  params, opt_state = apply_update(state.params, state.opt_state, grads, scale, grad_norm, finite, tx, nonfinite_guard)
  # A skipped step still advances the learning-rate schedule (not Adam's moments or bias correction), so the
  # schedule stays the step counter's: the rate applied at step s is schedule(s), as logged.
  opt_state = optimizer_lib.set_schedule_count(opt_state, state.step + 1)
  new_state = checkpointing.TrainState(step=state.step + 1, params=params, opt_state=opt_state)
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "target_tokens": weight_sum,
      "finite": finite.astype(jnp.int32),
  }
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return new_state, metrics
