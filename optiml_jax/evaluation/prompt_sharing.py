"""Rank classification with the prompt computed once per example, not once per option.

Where it sits: `inference.score_rows` hands this module the rows of each example (group) whose options share
a prompt; it prefills the prompt into the model's key/value cache once, copies that cache to every option
row, and runs all option tokens of each row in one multi-token decode call (the decode contract every model
family keeps: models/registry.py). A k-shot prompt of 1,000 tokens with four one-word options then costs
~1,000 + 4 x few token positions instead of ~4,000. The scores are the row-wise ones (the same
log-likelihoods; tested).

Rows and their split. A group's rows are prompt + option sequences (`inference.ScoreRow`): inputs, targets
and weights, with weights zero before the first scored target. The shared prefix is `inputs[:p]`, p being
that first scored position, when every row of the group has the same p and the same `inputs[:p]`; the rest
of each row (`inputs[p:]`, which starts with the prompt's last token) is its continuation. A group that does
not split so, or whose longest continuation alone exceeds the context, is scored row by row instead.

Context. When prefix + longest continuation exceed `max_length`, the prefix loses its start (left
truncation), the same cut for every option of the example, and the example counts once as truncated. A prefix
that starts with the tokenizer's BOS (`bos_id`) keeps it and loses the tokens after it, as training rows do.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from optiml_jax.evaluation import batching
from optiml_jax.models import registry


class SharedGroup(NamedTuple):
  """One example ready for shared-prompt scoring: its prefix and, per row, the continuation to score."""

  rows: tuple[int, ...]  # indices of the rows in the caller's list, in order
  prefix: np.ndarray  # int32 [p]: read once, into the cache
  inputs: tuple[np.ndarray, ...]  # per row, int32 [n]: fed after the prefix
  targets: tuple[np.ndarray, ...]  # per row, int32 [n]
  weights: tuple[np.ndarray, ...]  # per row, float32 [n]
  truncated: bool  # the prefix lost its start to fit max_length


def split_group(rows: Sequence[Any], indices: Sequence[int], max_length: int,
                bos_id: int | None = None) -> SharedGroup | None:
  """The group's shared prefix and continuations (see the module docstring), or None when it has none.

  A prefix cut to fit keeps a leading `bos_id` in front of its last tokens (when there is room for it).
  """
  members = [rows[i] for i in indices]
  starts = [int(np.argmax(r.weights > 0)) if np.any(r.weights > 0) else -1 for r in members]
  p = starts[0]
  if p < 0 or any(s != p for s in starts):
    return None
  prefix = np.asarray(members[0].inputs[:p], np.int32)
  if any(not np.array_equal(r.inputs[:p], prefix) for r in members[1:]):
    return None
  longest = max(len(r.inputs) - p for r in members)
  if longest > max_length:
    return None
  keep = max_length - longest
  truncated = len(prefix) > keep
  if truncated:
    prefix = batching.cut_from_left(prefix, keep, bos_id)
  return SharedGroup(tuple(indices), prefix, tuple(np.asarray(r.inputs[p:], np.int32) for r in members),
                     tuple(np.asarray(r.targets[p:], np.int32) for r in members),
                     tuple(np.asarray(r.weights[p:], np.float32) for r in members), truncated)


def plan_group_batches(groups: Sequence[SharedGroup], batch_size: int) -> list[list[int]]:
  """Group indices per batch: at most `batch_size` rows in all, longest prefix + continuation first."""
  order = sorted(range(len(groups)), key=lambda g: -(len(groups[g].prefix) + max(len(x) for x in groups[g].inputs)))
  batches: list[list[int]] = []
  current: list[int] = []
  rows = 0
  for g in order:
    n = len(groups[g].rows)
    if current and rows + n > batch_size:
      batches.append(current)
      current, rows = [], 0
    current.append(g)
    rows += n
  if current:
    batches.append(current)
  return batches


def select_cache_rows(cache: Any, rows: jax.Array, scan_layers: bool) -> Any:
  """The decode cache of `rows` (an index per new row into the cached batch): the batch axis is 1 for
  the stacked per-layer caches of a scanned model, else 0."""

  def take(path, leaf):
    stacked = scan_layers and any(getattr(k, "key", None) == "layers" for k in path)
    return jnp.take(leaf, rows, axis=1 if stacked else 0)

  return jax.tree_util.tree_map_with_path(take, cache)


@functools.cache
def shared_score_step(model: nn.Module, mesh: jax.sharding.Mesh | None = None) -> Callable[..., Any]:
  """jit-ed (params, prefixes [G, P], prefix_lengths [G], row_group [R], inputs [R, L], targets [R, L],
  weights [R, L]) -> (weighted log-likelihood sums [R], weight sums [R]); cached per model and mesh."""
  config = model.config

  def step(params, prefixes, prefix_lengths, row_group, inputs, targets, weights):
    cache = registry.init_decode_cache(config, prefixes.shape[0], prefixes.shape[1] + inputs.shape[1])
    _, variables = model.apply({
        "params": params,
        "cache": cache
    }, prefixes, enable_dropout=False, prefill=True, prefill_lengths=prefix_lengths, mutable=["cache"],
                               logit_positions=jnp.zeros((prefixes.shape[0], 1), jnp.int32), float32_logits=True)
    cache = select_cache_rows(variables["cache"], row_group, config.scan_layers)
    logits, _ = model.apply({
        "params": params,
        "cache": cache
    }, inputs, enable_dropout=False, decode=True, mutable=["cache"], float32_logits=True)  # as `score_step`
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((picked - log_z) * weights, axis=-1), jnp.sum(weights, axis=-1)

  return batching.jit(step, mesh)


def batch_arrays(groups: Sequence[SharedGroup], batch: Sequence[int], batch_size: int, multiple: int,
                 buckets: Sequence[int]) -> tuple[list[int], tuple[np.ndarray, ...]]:
  """(the caller's row indices in batch order, the padded arrays of `shared_score_step`).

  Shapes come from few buckets: groups and rows padded to powers of two, prefix and continuation lengths
  to length buckets (padding tokens past OPT's position table read its last row: models/opt.py; rotary
  positions need no table).
  """
  members = [groups[g] for g in batch]
  row_ids = [r for group in members for r in group.rows]
  row_group = [i for i, group in enumerate(members) for _ in group.rows]
  num_groups = batching.padded_batch_rows(len(members), batch_size, multiple)
  num_rows = batching.padded_batch_rows(len(row_ids), batch_size, multiple)
  longest_prefix = max(len(group.prefix) for group in members)
  longest = max(len(x) for group in members for x in group.inputs)
  prefix_length = batching.bucket_for(max(longest_prefix, 1), buckets)
  length = batching.bucket_for(longest, buckets)
  lengths = np.zeros(num_groups, np.int32)
  lengths[:len(members)] = [len(group.prefix) for group in members]
  row_groups = np.zeros(num_rows, np.int32)
  row_groups[:len(row_group)] = row_group
  arrays = (batching.pad_rows([group.prefix for group in members], num_groups, prefix_length,
                              np.int32), lengths, row_groups,
            batching.pad_rows([x for group in members for x in group.inputs], num_rows, length, np.int32),
            batching.pad_rows([x for group in members for x in group.targets], num_rows, length, np.int32),
            batching.pad_rows([x for group in members for x in group.weights], num_rows, length, np.float32))
  return row_ids, arrays
