"""The LM head and the weighted cross-entropy in chunks along the length, never holding the whole logits.

Where it sits: under trainer/step.py, which calls `chunked_cross_entropy` instead of the model's LM head when
`PartitioningArgs.loss_chunk_size` is set; the model then returns its final hidden states and its output matrix
(`return_hidden=True`, models/opt.py and models/llama.py).

The plain path holds float32 logits [batch, length, vocab] and their gradient: at opt-1.3b, 8 x 2048 and OPT's
50272 ids that is 3.3 GB each. Here the rows are cut into chunks of `chunk_size` positions (every row's chunk i
together, so a batch sharded over devices stays sharded) and a `lax.scan` runs the head, the loss and the
loss's gradient one chunk at a time. The gradient is formed in the forward pass (softmax - one-hot, times the
weight), so the backward pass only scales what the forward kept: the hidden states' gradient (the size of the
hidden states) and the output matrix's (the size of the matrix, float32). Same FLOPs as the plain path, no
recomputation; memory for the logits falls from the whole batch to one chunk.

Numerics follow the plain path's: the head's matmuls run in the hidden states' dtype, softmax and loss in
float32, the logits' gradient is cast back to that dtype for the two backward matmuls; the matrix's gradient
is summed over chunks in float32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGIT_AXES = ("batch", "length", "vocab")


def _chunked(x: jax.Array, chunk_size: int) -> jax.Array:
  """[batch, length, ...] -> [num_chunks, batch, chunk_size, ...], zero-padded at the end of the length."""
  batch, length = x.shape[:2]
  num_chunks = -(-length // chunk_size)
  pad = num_chunks * chunk_size - length
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((batch, num_chunks, chunk_size) + x.shape[2:]), 1, 0)


def _unchunked(x: jax.Array, length: int) -> jax.Array:
  """The inverse of `_chunked`: [num_chunks, batch, chunk_size, ...] -> [batch, length, ...]."""
  num_chunks, batch, chunk_size = x.shape[:3]
  x = jnp.moveaxis(x, 0, 1).reshape((batch, num_chunks * chunk_size) + x.shape[3:])
  return x[:, :length]


def _chunk_logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
  """float32 logits [batch, chunk, vocab] of hidden [batch, chunk, width] and head [vocab, width] (both in
  the hidden states' dtype, as the model's own LM head computes them)."""
  logits = jnp.einsum("bcd,vd->bcv", hidden, head).astype(jnp.float32)
  return nn.with_logical_constraint(logits, LOGIT_AXES)


def _chunk_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of weighted cross-entropy, log-softmax) of one chunk."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_loss = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_loss * weights), log_probs


def _inputs(hidden, head, targets, weights, chunk_size):
  xs = (_chunked(hidden, chunk_size), _chunked(targets, chunk_size), _chunked(weights, chunk_size))
  return head.astype(hidden.dtype), xs


def _loss_only(hidden, head, targets, weights, chunk_size):
  compute_head, xs = _inputs(hidden, head, targets, weights, chunk_size)

  def body(total, chunk):
    h, t, w = chunk
    loss, _ = _chunk_loss(_chunk_logits(h, compute_head), t, w)
    return total + loss, None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def chunked_cross_entropy(hidden: jax.Array, head: jax.Array, targets: jax.Array, weights: jax.Array,
                          chunk_size: int) -> jax.Array:
  """Sum over positions of weights x cross-entropy(hidden @ head.T, targets), `chunk_size` positions at a time.

  Args:
    hidden: [batch, length, width] final hidden states, in the compute dtype.
    head: [vocab, width] the output matrix (OPT's tied embedding; Llama's `lm_head` kernel transposed), any dtype:
      it is cast to the hidden states' dtype, as the model's head does.
    targets: [batch, length] int ids.
    weights: [batch, length] float32 loss weights (not differentiated).
    chunk_size: positions per chunk; the last chunk is padded with weight 0.

  Returns:
    The float32 sum, equal to the plain path's within float32 rounding.
  """
  with jax.named_scope("cross_entropy"):
    return _loss_only(hidden, head, targets, weights, chunk_size)


def _forward(hidden, head, targets, weights, chunk_size):
  with jax.named_scope("cross_entropy"):
    compute_head, xs = _inputs(hidden, head, targets, weights, chunk_size)

    def body(carry, chunk):
      total, head_grad = carry
      h, t, w = chunk
      logits = _chunk_logits(h, compute_head)
      loss, log_probs = _chunk_loss(logits, t, w)
      # d(sum of w x cross-entropy) / d logits = w x (softmax - one-hot).
      logits_grad = (jnp.exp(log_probs) - jax.nn.one_hot(t, logits.shape[-1], dtype=jnp.float32)) * w[..., None]
      logits_grad = nn.with_logical_constraint(logits_grad, LOGIT_AXES).astype(h.dtype)
      hidden_grad = jnp.einsum("bcv,vd->bcd", logits_grad, compute_head)
      head_grad = head_grad + jnp.einsum("bcv,bcd->vd", logits_grad, h, preferred_element_type=jnp.float32)
      return (total + loss, head_grad), hidden_grad

    init = (jnp.zeros((), jnp.float32), jnp.zeros(head.shape, jnp.float32))
    (total, head_grad), hidden_grad = jax.lax.scan(body, init, xs)
    return total, (_unchunked(hidden_grad, hidden.shape[1]), head_grad.astype(head.dtype))


def _backward(chunk_size, residuals, cotangent):
  del chunk_size
  hidden_grad, head_grad = residuals
  scale = lambda g: (g.astype(jnp.float32) * cotangent).astype(g.dtype)
  return scale(hidden_grad), scale(head_grad), None, None


chunked_cross_entropy.defvjp(_forward, _backward)
