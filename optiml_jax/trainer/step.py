"""One training step: target-only cross-entropy, gradient accumulation, the optimizer update, a NaN guard.

Sits between the batch stream (packed features from `optiml_jax.data.packing`) and the loop, which jit-s
`train_step` over the mesh. Pure functions of plain arguments: the model is any Flax module with t5x's
decoder-only call signature, the optimizer any optax transformation.

Loss = (sum over tokens of cross-entropy x decoder_loss_weights) / (sum of decoder_loss_weights), over the
whole global batch: with `num_microbatches > 1` the sums are accumulated over microbatches and divided once,
so the update equals the one a single large batch would give.

Instruction tuning puts loss on target tokens only, a small share of a packed row. With `lm_head_positions=k`
the LM head (the float32 logits over 50272 ids) runs only at the first k weighted positions of each row,
whenever no row has more than k; a batch that has more takes the full pass, so the loss and the gradients
are those of the full pass either way (one `lax.cond`, both branches compiled).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from optiml_jax.trainer import checkpointing

Batch = Mapping[str, jax.Array]


def _weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  with jax.named_scope("cross_entropy"):  # names the loss's ops in a profile (tools/benchmarks/profile_step.py)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(token_loss * weights)


def weighted_positions_first(weights: jax.Array, k: int) -> jax.Array:
  """[batch, k] int32: each row's positions of non-zero weight in order, then the others (in order)."""
  return jnp.argsort(weights <= 0, axis=1, stable=True)[:, :k].astype(jnp.int32)


def loss_sums(params: Any, batch: Batch, model: nn.Module, dropout_rng: jax.Array | None, enable_dropout: bool,
              lm_head_positions: int | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Returns (sum of weighted token cross-entropy, (same, sum of weights)) for `jax.value_and_grad`.

  `lm_head_positions`: see the module docstring (None: the LM head runs at every position).
  """
  targets = batch["decoder_target_tokens"]
  weights = batch["decoder_loss_weights"].astype(jnp.float32)

  def logits(**kwargs):
    return model.apply({"params": params}, batch["decoder_input_tokens"], targets,
                       decoder_segment_ids=batch.get("decoder_segment_ids"),
                       decoder_positions=batch.get("decoder_positions"), enable_dropout=enable_dropout,
                       rngs={"dropout": dropout_rng} if enable_dropout else None, **kwargs)

  def everywhere():
    return _weighted_cross_entropy(logits(), targets, weights)

  if lm_head_positions is None or lm_head_positions >= targets.shape[1]:
    total = everywhere()
  else:

    def at_weighted_positions():
      order = weighted_positions_first(weights, lm_head_positions)
      take = lambda x: jnp.take_along_axis(x, order, axis=1)
      return _weighted_cross_entropy(logits(logit_positions=order), take(targets), take(weights))

    fits = jnp.max(jnp.sum(weights > 0, axis=1)) <= lm_head_positions
    total = jax.lax.cond(fits, at_weighted_positions, everywhere)
  return total, (total, jnp.sum(weights))


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

  return {k: split(v) for k, v in batch.items()}


def gradients(params: Any, batch: Batch, model: nn.Module, dropout_rng: jax.Array, *, enable_dropout: bool = True,
              num_microbatches: int = 1, lm_head_positions: int | None = None) -> tuple[Any, jax.Array, jax.Array]:
  """Returns (summed float32 gradients, summed loss, summed weights) over the batch's microbatches."""
  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)
  if num_microbatches <= 1:
    (_, (loss, weight)), grads = grad_fn(params, batch, model, dropout_rng, enable_dropout, lm_head_positions)
    return jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads), loss, weight

  micro = _split_microbatches(batch, num_microbatches)

  def body(carry, xs):
    grad_acc, loss_acc, weight_acc = carry
    index, microbatch = xs
    rng = jax.random.fold_in(dropout_rng, index)
    (_, (loss, weight)), grads = grad_fn(params, microbatch, model, rng, enable_dropout, lm_head_positions)
    grad_acc = jax.tree_util.tree_map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
    return (grad_acc, loss_acc + loss, weight_acc + weight), None

  zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (grads, loss, weight), _ = jax.lax.scan(body, init, (jnp.arange(num_microbatches), micro))
  return grads, loss, weight


def train_step(state: checkpointing.TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule | None = None, num_microbatches: int = 1,
               enable_dropout: bool = True,
               lm_head_positions: int | None = None) -> tuple[checkpointing.TrainState, dict[str, jax.Array]]:
  """Applies one update. A non-finite loss or gradient leaves params and optimizer state unchanged
  (the step counter still advances, so the schedule and the data stay aligned) and reports `finite=0`;
  the loop decides whether to skip on or stop."""
  dropout_rng = jax.random.fold_in(rng, state.step)
  grads, loss_sum, weight_sum = gradients(state.params, batch, model, dropout_rng, enable_dropout=enable_dropout,
                                          num_microbatches=num_microbatches, lm_head_positions=lm_head_positions)
  denom = jnp.maximum(weight_sum, 1.0)
  grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
  loss = loss_sum / denom
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jnp.where(finite, new, old)
  new_state = checkpointing.TrainState(
      step=state.step + 1,
      params=jax.tree_util.tree_map(keep, new_params, state.params),
      opt_state=jax.tree_util.tree_map(keep, new_opt_state, state.opt_state),
  )
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "target_tokens": weight_sum,
      "finite": finite.astype(jnp.int32),
  }
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return new_state, metrics
