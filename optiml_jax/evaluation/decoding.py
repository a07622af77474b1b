"""Greedy decoding with the key/value cache, batched: OPT-IML's protocol for generation tasks.

Where it sits: `inference.make_predict_fn` (the seqio `predict_fn`) and the evaluator call `greedy_decode`
(re-exported by `inference.py`); it pads prompts into bucket shapes with `batching.py` and runs
`greedy_generate` under jit, on the mesh when one is given. Greedy until an EOS or `max_new_tokens` (256 in
OPT-IML). It uses the decode contract every model family keeps (`models/registry.py`, t5x's): a `prefill=True`
pass writes a whole prompt's keys/values into cache slots 0..T-1 and sets each example's cache index to its own
prompt length; then every `decode=True` call feeds one token per example at position = slot = that example's
cache index.

EOS. A decoding stops at any of several ids (`eos_id` takes one id or a sequence): OPT's </s> = 2, or a
Llama-family model's `config.eos_ids` (config.json may list several, e.g. Llama 3.1 Instruct) together with
its tokenizer's EOS. Prompts start with the tokenizer's BOS where it adds one, else with the first input token.

A worked example, two right-padded prompts (0 = padding), `max_new_tokens` 3, cache of 3 + 3 - 1 = 5 slots
(the last new token is never fed back):

  prompts [[2, 7, 8], [2, 9, 0]]  lengths [3, 2]
  prefill  -> logits at positions 2 and 1 give the first new tokens a0, b0; cache indices [3, 2]
  step 1   feeds [a0, b0] at slots [3, 2] -> a1, b1 (b0 overwrites the padding's slot 2; slots past an
           example's index are never attended)
  step 2   feeds [a1, b1] at slots [4, 3] -> a2, b2
  tokens   [[a0, a1, a2], [b0, b1, b2]]; an example stops at an EOS (later entries are the first EOS id),
           and the loop ends as soon as every example has stopped. Padding is known from `lengths`, never
           from its id (0 is a real token in some vocabularies).

A partial batch is filled up to its bucket's row count with padding rows of length 0: they start stopped, so the
loop ends when the real prompts have, not when a padding row happens to emit an EOS (up to `max_new_tokens`
wasted steps otherwise).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from optiml_jax.data import special_tokens
from optiml_jax.evaluation import batching

Array = jax.Array
DEFAULT_MAX_NEW_TOKENS = 256  # OPT-IML's generation limit
EOS_ID = special_tokens.OPT_EOS_ID  # OPT's </s> (2), from the shipped tokenizer


def eos_tuple(eos_id: int | Sequence[int]) -> tuple[int, ...]:
  """`eos_id` as a non-empty tuple of distinct ints, in order (one id or a sequence of ids)."""
  ids = (eos_id,) if isinstance(eos_id, (int, np.integer)) else tuple(eos_id)
  out = tuple(dict.fromkeys(int(i) for i in ids))
  if not out:
    raise ValueError("greedy decoding needs at least one EOS id; got none (a config with no eos_token_id: pass "
                     "the tokenizer's)")
  return out


def greedy_generate(model: nn.Module, params: Any, prompts: Array, lengths: Array, cache_length: int,
                    max_new_tokens: int, eos_id: int | tuple[int, ...]) -> tuple[Array, Array]:
  """Greedy continuation of right-padded prompts with the KV cache (jit with the last three static).

  Args:
    model: a model of any family (`models.registry.make_model`; t5x decode signature).
    params: its parameters.
    prompts: [batch, prompt_length] int32, each prompt left-aligned and padded with anything after
      `lengths[b]` tokens (padding is never attended by the real tokens: attention is causal).
    lengths: [batch] int32 prompt lengths, each >= 1 for a real prompt; 0 marks a padding row, which is done
      from the start (its tokens are all the first EOS id, and it never keeps the loop running).
    cache_length: cache slots; at least prompt_length and max(lengths) + max_new_tokens - 1, and at most
      the model's context (positions beyond it have no embedding).
    max_new_tokens: tokens to generate at most (>= 1).
    eos_id: the token, or tuple of tokens, that ends an example (OPT's </s> = 2).

  Returns:
    (tokens [batch, max_new_tokens] int32, num_tokens [batch] int32): the greedy tokens, the first EOS id from
    an example's first EOS on; num_tokens counts the tokens before it (the EOS excluded).
  """
  eos = jnp.asarray(eos_tuple(eos_id), jnp.int32)
  fill = eos[0]

  def is_eos(token):
    return jnp.any(token[..., None] == eos, axis=-1)

  batch = prompts.shape[0]
  padding = lengths < 1
  lengths = jnp.maximum(lengths, 1)  # a padding row is run as a 1-token prompt and ignored
  # The LM head runs at each prompt's last position only, and sums into float32 (`float32_logits`): a bfloat16
  # rounding of the logits made the top two tokens an exact tie, broken by the lowest id, at 5% of positions.
  logits, variables = model.apply({"params": params}, prompts, enable_dropout=False, prefill=True,
                                  max_decode_length=cache_length, prefill_lengths=lengths, mutable=["cache"],
                                  logit_positions=(lengths - 1)[:, None], float32_logits=True)
  first = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
  first = jnp.where(padding | is_eos(first), fill, first)
  tokens = jnp.full((batch, max_new_tokens), fill, jnp.int32).at[:, 0].set(first)
  done = first == fill

  def keep_going(state):
    step, _, _, _, done = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def one_token(state):
    step, previous, cache, tokens, done = state
    logits, variables = model.apply({
        "params": params,
        "cache": cache
    }, previous[:, None], enable_dropout=False, decode=True, mutable=["cache"], float32_logits=True)
    token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    token = jnp.where(done | is_eos(token), fill, token)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, step))
    return step + 1, token, variables["cache"], tokens, done | (token == fill)

  state = (jnp.asarray(1, jnp.int32), first, variables["cache"], tokens, done)
  _, _, _, tokens, _ = jax.lax.while_loop(keep_going, one_token, state)
  ended = tokens == fill
  num_tokens = jnp.where(jnp.any(ended, axis=1), jnp.argmax(ended, axis=1), max_new_tokens).astype(jnp.int32)
  return tokens, num_tokens


@functools.cache
def _generate_step(model: nn.Module, mesh: jax.sharding.Mesh | None) -> Callable[..., Any]:
  return batching.jit(functools.partial(greedy_generate, model), mesh,
                      static_argnames=("cache_length", "max_new_tokens", "eos_id"))


def greedy_decode(model: nn.Module, params: Any, prompt_tokens: Sequence[batching.TokenIds],
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, eos_id: int | Sequence[int] = EOS_ID, *,
                  batch_size: int = batching.DEFAULT_BATCH_SIZE, max_length: int | None = None,
                  mesh: jax.sharding.Mesh | None = None, stats: batching.InferenceStats | None = None,
                  progress: bool = False, desc: str = "decoding", bos_id: int | None = None) -> list[list[int]]:
  """Greedy continuations of the prompts, batched, with the KV cache (prefill, then token by token).

  Args:
    model: a model of any family (`models.registry.make_model`); params: its parameters
      (`batching.place_params` places them once).
    prompt_tokens: per example, the tokens to continue, the BOS included where the tokenizer adds one (OPT:
      [2] + inputs; SmolLM2: inputs); each non-empty.
    max_new_tokens: at most this many new tokens per example.
    eos_id: an example stops at this token, or at any of these tokens.
    batch_size: prompts per batch (rounded up to a multiple of the mesh's data-parallel size).
    max_length: the context (default: the model's). A prompt longer than `max_length - max_new_tokens`
      keeps its last tokens (left truncation) and is counted in `stats.truncated`.
    bos_id: the tokenizer's BOS (OPT: 2; None when it adds none): a cut prompt that starts with it keeps it in
      front of its last tokens, as training rows do (`formatting.fit_to_row`).
    mesh: run sharded on this mesh (`partitioning.make_mesh`); None: the default device.
    stats: counters to add to; progress: show a tqdm bar over examples, labelled `desc`.

  Returns:
    per example, the new tokens before the first EOS (which is not included).
  """
  start = time.perf_counter()
  eos = eos_tuple(eos_id)
  max_length = batching.context_length(model, max_length)
  if not 1 <= max_new_tokens < max_length:
    raise ValueError(f"greedy_decode: max_new_tokens must be in [1, {max_length - 1}] (max_length - 1), "
                     f"got {max_new_tokens}")
  stats = stats if stats is not None else batching.InferenceStats()
  params = batching.place_params(model, params, mesh)
  limit = max_length - max_new_tokens
  prompts: list[np.ndarray] = []
  for i, prompt_ids in enumerate(prompt_tokens):
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size == 0:
      raise ValueError(f"greedy_decode: prompt of example {i} is empty; expected at least one token (the "
                       "tokenizer's BOS, OPT's </s> = 2, or else the first input token)")
    if prompt.size > limit:
      stats.truncated += 1
      prompt = batching.cut_from_left(prompt, limit, bos_id)
    prompts.append(prompt)
  stats.examples += len(prompts)
  stats.rows += len(prompts)

  multiple = batching.data_parallel_size(mesh)
  batch_size = batching.round_batch_size(batch_size, multiple)
  plan = batching.plan_batches([p.size for p in prompts], range(len(prompts)), batch_size)
  buckets = batching.length_buckets(limit)
  step = _generate_step(model, mesh)
  outputs: list[list[int]] = [[] for _ in prompts]

  def dispatch(batch: Sequence[int]) -> Any:
    members = [prompts[i] for i in batch]
    length = batching.bucket_for(max(p.size for p in members), buckets)
    size = batching.padded_batch_rows(len(batch), batch_size, multiple)
    tokens = batching.pad_rows(members, size, length, np.int32)
    # Padding rows have length 0: greedy_generate starts them done.
    lengths = batching.pad_rows([[p.size] for p in members], size, 1, np.int32, fill=0)[:, 0]
    # Slots: the longest prompt (<= limit) plus every new token but the last, which is never fed back.
    return step(params, batching.to_device(tokens, mesh), batching.to_device(lengths, mesh),
                cache_length=length + max_new_tokens - 1, max_new_tokens=max_new_tokens, eos_id=eos)

  def collect(batch: Sequence[int], result: Any) -> int:
    tokens, num_tokens = (np.asarray(x) for x in result)
    for row, i in enumerate(batch):
      outputs[i] = tokens[row, :num_tokens[row]].tolist()
      stats.generated_tokens += int(num_tokens[row])
      stats.tokens += int(prompts[i].size + num_tokens[row])
    return len(batch)

  with batching.mesh_context(mesh), tqdm.tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress) as bar:
    batching.run_batches(plan, dispatch, collect, bar)
  stats.seconds += time.perf_counter() - start
  return outputs
