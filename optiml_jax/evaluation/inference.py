"""Inference for evaluation: rank-classification scores and the seqio adapters, batched, jit-ed, sharded.

Where it sits: the evaluator (`evaluation/evaluator.py`) runs `seqio.Evaluator` over the registry's Tasks and
hands it `make_score_fn(...)` / `make_predict_fn(...)` from here; metrics and the report come after. This
module (with `decoding.py` for greedy decoding and `batching.py` for shapes and devices, both re-exported
here) knows the models (any family, through `models/registry.py`), the mesh machinery and seqio's model
features, nothing of catalogs or metrics.

Tokens. A prompt is the exact token sequence the model reads before the continuation, the BOS included where
the tokenizer adds one: OPT's tokenizer and `data/packing.py` start every example with </s> (2), so a registry
example's prompt is [2] + inputs and its option j is scored as the continuation `options[j]` (each ends with
the EOS):

  prompt [2, 7, 8], option [3, 2]  ->  model reads [2, 7, 8, 3]; score = log p(3 | 2 7 8) + log p(2 | 2 7 8 3)

A tokenizer that adds no BOS (SmolLM2, Qwen2) gives the prompt [7, 8]: the first input token is read first.
The converter follows the vocabulary's policy (`feature_converter(vocabulary)`), and the prompt is read back
from the loss weights, so scoring and decoding need no BOS id. Padding is told from lengths and loss weights,
never from `token == 0` (a real token in some vocabularies).

Batches. The options of one example are scored together: by default its prompt is computed once, into the
key/value cache, and all options continue from it (`prompt_sharing.py`); otherwise (share_prompts=False, or
an example with more options than `batch_size`) each option is a full row (prompt + option). Shapes are
padded to buckets (`batching.py`).

Context. What does not fit `max_length` (default: the model's context) loses the start of its prompt (left
truncation): a shared prompt as much as its longest option needs, a full row down to its last `max_length`
tokens; greedy decoding keeps the last `max_length - max_new_tokens` prompt tokens. Given the tokenizer's BOS
(`bos_id`; the seqio adapters get it from the evaluator), a prompt that starts with it keeps it and loses the
tokens after it instead, as a training row keeps its BOS (`formatting.fit_to_row`):

  prompt [2, 7, 8, 9, 10], option [3, 2], max_length 4  ->  model reads [2, 10, 3] (without bos_id: [9, 10, 3])

Each such example is counted once in `InferenceStats.truncated`.

seqio. `make_score_fn` / `make_predict_fn` return the callables `seqio.Evaluator.evaluate(score_fn=...,
predict_fn=...)` calls with the enumerated model dataset. They read the unpacked decoder features of
`feature_converter(vocabulary)` ([BOS] + inputs + targets; OPT's by default) or of
`seqio.PrefixLMFeatureConverter`;
a score is t5x's `DecoderOnlyModel.score_batch`: the sum of the target tokens' log-likelihoods weighted by
`decoder_loss_weights`. Pass the Evaluator `sequence_length={}` (or lengths that fit every example) so that
the Task does not cut prompts itself: then truncation is done, and counted, here.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Hashable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from optiml_jax.evaluation import batching
from optiml_jax.evaluation import decoding
from optiml_jax.evaluation import prompt_sharing
from optiml_jax.models import registry

# Re-exported: the whole inference API is reachable from this module.
DEFAULT_BATCH_SIZE = batching.DEFAULT_BATCH_SIZE
DEFAULT_MAX_NEW_TOKENS = decoding.DEFAULT_MAX_NEW_TOKENS
EOS_ID = decoding.EOS_ID
InferenceStats = batching.InferenceStats
place_params = batching.place_params
greedy_decode = decoding.greedy_decode

IndexedResult = list[tuple[int, Any]]


class ScoreRow(NamedTuple):
  """One scored sequence: the model reads `inputs` and `targets[t]` is scored with `weights[t]`.

  inputs, targets: int32 [n] (targets = inputs shifted left by one); weights: float32 [n];
  group: the example the row belongs to (rows of one group share a prompt and a batch).
  """

  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray
  group: Hashable


def left_truncate(row: ScoreRow, max_length: int, bos_id: int | None = None) -> tuple[ScoreRow, bool]:
  """`row` cut to its last `max_length` positions, and whether anything was cut.

  A row that starts with `bos_id` keeps it in front of its last `max_length - 1` positions, as a training row
  keeps its BOS when its prompt loses its start (`formatting.fit_to_row`); the BOS then predicts the first
  token kept, so the same tokens are scored either way.
  """
  if len(row.inputs) <= max_length:
    return row, False
  first = len(row.inputs) - max_length  # the targets and weights of the last max_length positions are kept
  inputs = batching.cut_from_left(np.asarray(row.inputs), max_length, bos_id)
  return ScoreRow(inputs, row.targets[first:], row.weights[first:], row.group), True


def option_rows(prompt_tokens: Sequence[batching.TokenIds],
                options_tokens: Sequence[Sequence[batching.TokenIds]]) -> list[ScoreRow]:
  """One ScoreRow per (example, option): the prompt read as context, the option's tokens scored."""
  if len(prompt_tokens) != len(options_tokens):
    raise ValueError(f"score_options: {len(prompt_tokens)} prompts but {len(options_tokens)} option lists")
  rows = []
  for i, (prompt_ids, options) in enumerate(zip(prompt_tokens, options_tokens)):
    prompt = np.asarray(prompt_ids, np.int32).reshape(-1)
    if prompt.size == 0:
      raise ValueError(f"score_options: prompt of example {i} is empty; expected at least one token (the "
                       "tokenizer's BOS, OPT's </s> = 2, or else the first input token)")
    for j, option_ids in enumerate(options):
      option = np.asarray(option_ids, np.int32).reshape(-1)
      if option.size == 0:
        raise ValueError(f"score_options: option {j} of example {i} is empty; expected at least one token")
      tokens = np.concatenate([prompt, option])
      weights = np.zeros(tokens.size - 1, np.float32)
      weights[prompt.size - 1:] = 1.0
      rows.append(ScoreRow(tokens[:-1], tokens[1:], weights, i))
  return rows


@functools.cache
def score_step(model: nn.Module, mesh: jax.sharding.Mesh | None = None) -> Callable[..., Any]:
  """jit-ed (params, inputs, targets, weights) -> (weighted log-likelihood sums [B], weight sums [B]).

  The device program of `score_rows` for one padded [B, L] batch (cached per model and mesh).
  """

  def step(params, inputs, targets, weights):
    # Right padding only: causal attention keeps it away from the real tokens, so no mask is needed (and
    # none keeps fused attention kernels usable).
    # float32_logits: log-probabilities from the LM head's float32 sums, not from logits rounded to bfloat16.
    logits = model.apply({"params": params}, inputs, enable_dropout=False, float32_logits=True)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((picked - log_z) * weights, axis=-1), jnp.sum(weights, axis=-1)

  return batching.jit(step, mesh)


def score_rows(model: nn.Module, params: Any, rows: Sequence[ScoreRow], length_normalize: bool = False, *,
               batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None,
               mesh: jax.sharding.Mesh | None = None, stats: InferenceStats | None = None, progress: bool = False,
               desc: str = "scoring", share_prompts: bool = True, bos_id: int | None = None) -> list[float]:
  """Weighted log-likelihood of each row's targets (divided by its weight sum with `length_normalize`).

  Rows of one `group` (an example's options) share a batch. With `share_prompts`, a group whose rows share
  their prompt has it computed once (`prompt_sharing.py`; too long: the prompt loses its start, the same for
  every option); other rows longer than `max_length` keep their last `max_length` positions. A row that
  starts with `bos_id` keeps that BOS in front when cut (`left_truncate`). Each group that was cut counts once
  in `stats.truncated`. The progress bar counts groups (examples). Other arguments: as `score_options`.
  """
  start = time.perf_counter()
  max_length = batching.context_length(model, max_length)
  stats = stats if stats is not None else InferenceStats()
  params = place_params(model, params, mesh)
  multiple = batching.data_parallel_size(mesh)
  batch_size = batching.round_batch_size(batch_size, multiple)
  members: dict[Hashable, list[int]] = {}
  for i, row in enumerate(rows):
    members.setdefault(row.group, []).append(i)
  shared, alone = [], []
  for indices in members.values():
    group = None
    if share_prompts and len(indices) <= batch_size:
      group = prompt_sharing.split_group(rows, indices, max_length, bos_id)
    if group is None:
      alone.extend(indices)
    else:
      shared.append(group)

  cut = {i: left_truncate(rows[i], max_length, bos_id) for i in alone}
  stats.examples += len(members)
  stats.truncated += len({rows[i].group for i, (_, was_cut) in cut.items() if was_cut})
  stats.truncated += sum(group.truncated for group in shared)
  stats.rows += len(rows)
  stats.tokens += sum(len(row.inputs) for row, _ in cut.values())
  stats.tokens += sum(len(g.prefix) + sum(len(x) for x in g.inputs) for g in shared)

  sums, counts = np.zeros(len(rows), np.float64), np.zeros(len(rows), np.float64)
  buckets = batching.length_buckets(max_length)
  finishing = {indices[-1] for indices in members.values()}
  alone_rows = sorted(alone)
  plan = [("rows", batch) for batch in batching.plan_batches([len(cut[i][0].inputs) for i in alone_rows
                                                             ], [rows[i].group for i in alone_rows], batch_size)]
  plan += [("shared", batch) for batch in prompt_sharing.plan_group_batches(shared, batch_size)]
  row_step, shared_step = score_step(model, mesh), prompt_sharing.shared_score_step(model, mesh)

  def dispatch(item: tuple[str, Sequence[int]]) -> Any:
    kind, batch = item
    if kind == "shared":
      row_ids, arrays = prompt_sharing.batch_arrays(shared, batch, batch_size, multiple, buckets)
      return row_ids, shared_step(params, *(batching.to_device(a, mesh) for a in arrays))
    members_ = [cut[alone_rows[i]][0] for i in batch]
    length = batching.bucket_for(max(len(r.inputs) for r in members_), buckets)
    size = batching.padded_batch_rows(len(batch), batch_size, multiple)
    arrays = (batching.pad_rows([r.inputs for r in members_], size, length,
                                np.int32), batching.pad_rows([r.targets for r in members_], size, length, np.int32),
              batching.pad_rows([r.weights for r in members_], size, length, np.float32))
    return [alone_rows[i] for i in batch], row_step(params, *(batching.to_device(a, mesh) for a in arrays))

  def collect(item: tuple[str, Sequence[int]], dispatched: Any) -> int:
    del item
    row_ids, outputs = dispatched
    batch_sums, batch_counts = (np.asarray(x) for x in outputs)
    sums[row_ids] = batch_sums[:len(row_ids)]
    counts[row_ids] = batch_counts[:len(row_ids)]
    return sum(i in finishing for i in row_ids)

  with batching.mesh_context(mesh), tqdm.tqdm(total=len(members), desc=desc, unit="ex", disable=not progress) as bar:
    batching.run_batches(plan, dispatch, collect, bar)
  stats.seconds += time.perf_counter() - start
  if length_normalize:
    return [float(s / c) if c else 0.0 for s, c in zip(sums, counts)]
  return [float(s) for s in sums]


def score_options(model: nn.Module, params: Any, prompt_tokens: Sequence[batching.TokenIds],
                  options_tokens: Sequence[Sequence[batching.TokenIds]], length_normalize: bool = False, *,
                  batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None,
                  mesh: jax.sharding.Mesh | None = None, stats: InferenceStats | None = None, progress: bool = False,
                  desc: str = "scoring", share_prompts: bool = True, bos_id: int | None = None) -> list[list[float]]:
  """Log-likelihood of each option given its example's prompt (rank classification).

  Args:
    model: a model of any family (`models.registry.make_model`); params: its parameters (see `place_params`).
    prompt_tokens: per example, the tokens read before an option, the BOS included where the tokenizer adds
      one (OPT: [2] + inputs; SmolLM2: inputs).
    options_tokens: per example, its options' tokens (each non-empty; the registry's end with the EOS).
    length_normalize: divide each sum by the option's number of tokens.
    batch_size: rows (prompt + one option) per batch, rounded up to a multiple of the mesh's
      data-parallel size.
    max_length: the context (default: the model's); longer rows are left-truncated and counted.
    mesh: run sharded on this mesh (`partitioning.make_mesh`); None: the default device.
    stats: counters to add to; progress: show a tqdm bar over examples, labelled `desc`.
    share_prompts: compute each prompt once for all its options (`prompt_sharing.py`); False: one full row
      per option (each row then left-truncated on its own).
    bos_id: the tokenizer's BOS (OPT: 2; None when it adds none): a prompt that starts with it keeps it when
      left-truncated, as training rows do; the cut is made after it.

  Returns:
    scores[i][j] for option j of example i; argmax over j is the predicted option.
  """
  rows = option_rows(prompt_tokens, options_tokens)
  flat = score_rows(model, params, rows, length_normalize, batch_size=batch_size, max_length=max_length, mesh=mesh,
                    stats=stats, progress=progress, desc=desc, share_prompts=share_prompts, bos_id=bos_id)
  scores, start = [], 0
  for options in options_tokens:
    scores.append(flat[start:start + len(options)])
    start += len(options)
  return scores


# ----------------------------------------------------------------------------------------------------------
# seqio adapters.
# ----------------------------------------------------------------------------------------------------------


def feature_converter(vocabulary: Any = None) -> Any:
  """The converter to give `seqio.Evaluator`: unpacked rows [BOS] + inputs + targets, with the BOS and EOS of
  `vocabulary` (`data.vocab.HFVocabulary`: no BOS when its tokenizer adds none); None: OPT's ([2] + ...)."""
  from optiml_jax.data import packing  # pylint: disable=g-import-not-at-top  (TensorFlow: only when asked)
  if vocabulary is None:
    return packing.OptimlFeatureConverter(pack=False)
  return packing.OptimlFeatureConverter.for_vocabulary(vocabulary, pack=False)


def _examples(dataset: Any) -> Iterator[tuple[int, Mapping[str, np.ndarray]]]:
  """(index, features) pairs of an enumerated seqio model dataset (tf.data or any iterable)."""
  items = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
  for index, features in items:
    yield int(index), features


def _real_length(index: int, features: Mapping[str, np.ndarray]) -> int:
  """One past the last scored position: an example ends with its weighted target (its EOS), and what follows
  is padding. Not read from the tokens: id 0 is a real token in some vocabularies."""
  used = np.flatnonzero(np.asarray(features["decoder_loss_weights"]) != 0)
  if used.size == 0:
    raise ValueError(f"example {index}: decoder_target_tokens are all padding (decoder_loss_weights are all 0: "
                     "an empty example)")
  return int(used[-1]) + 1


def prompt_length(index: int, features: Mapping[str, np.ndarray]) -> int:
  """Tokens of `decoder_input_tokens` read before the first target is predicted (BOS included).

  From `decoder_causal_attention` when present (seqio's prefix-LM convention), else one past the first
  position with a positive `decoder_loss_weights`.
  """
  if "decoder_causal_attention" in features:
    length = int(np.sum(features["decoder_causal_attention"]))
  else:
    weighted = np.flatnonzero(np.asarray(features["decoder_loss_weights"]) > 0)
    length = int(weighted[0]) + 1 if weighted.size else 0
  if length == 0:
    raise ValueError(f"example {index}: decoder_loss_weights are all 0, so its prompt cannot be told "
                     "from its target")
  return length


def row_from_features(index: int, features: Mapping[str, np.ndarray], group: Hashable) -> ScoreRow:
  """A ScoreRow of one unpacked seqio decoder example, padding removed."""
  n = _real_length(index, features)
  return ScoreRow(np.asarray(features["decoder_input_tokens"][:n], np.int32),
                  np.asarray(features["decoder_target_tokens"][:n], np.int32),
                  np.asarray(features["decoder_loss_weights"][:n], np.float32), group)


def score_rows_of(dataset: Any) -> tuple[list[int], list[ScoreRow]]:
  """(indices, rows) of a seqio `score_fn`'s enumerated model dataset: one ScoreRow per example, padding
  removed; consecutive examples with the same prompt (rank classification's one row per option) share a group.

  A row that repeats one of its group's rows starts a new group: the model dataset does not say which instance a
  row belongs to, and two instances next to each other may have the same prompt (duplicate inputs, as BIG-bench's
  winowhy or causal_judgment have), whose options would otherwise be counted as one example (in `stats.examples`
  and `stats.truncated`) and, more options than a batch holds, lose prompt sharing. An instance that lists an
  option twice counts as two examples (its scores are the same either way)."""
  indices: list[int] = []
  rows: list[ScoreRow] = []
  previous, group = None, -1
  seen: set[bytes] = set()  # the rows of the current group
  for index, features in _examples(dataset):
    key = np.asarray(features["decoder_input_tokens"][:prompt_length(index, features)]).tobytes()
    row = row_from_features(index, features, group)
    whole = row.inputs.tobytes() + b"|" + row.targets.tobytes() + b"|" + row.weights.tobytes()
    if key != previous or whole in seen:
      group, previous, seen = group + 1, key, set()
    seen.add(whole)
    indices.append(index)
    rows.append(row._replace(group=group))
  return indices, rows


def prompts_of(dataset: Any) -> tuple[list[int], list[np.ndarray]]:
  """(indices, prompts) of a seqio `predict_fn`'s enumerated model dataset: the tokens each example's greedy
  decoding starts from (`prompt_length`), int32."""
  indices, prompts = [], []
  for index, features in _examples(dataset):
    indices.append(index)
    prompts.append(np.asarray(features["decoder_input_tokens"][:prompt_length(index, features)], np.int32))
  return indices, prompts


def make_score_fn(model: nn.Module, params: Any, *, length_normalize: bool = False,
                  batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None,
                  mesh: jax.sharding.Mesh | None = None, stats: InferenceStats | None = None, progress: bool = True,
                  share_prompts: bool = True, bos_id: int | None = None) -> Callable[..., IndexedResult]:
  """seqio `score_fn`: (enumerated model dataset) -> [(index, score)], t5x's sequence score.

  Consecutive examples with the same prompt (rank classification's one row per option) count as one
  example, share a batch and, with `share_prompts`, one computation of the prompt (see `score_rows`); a row
  that repeats one of them starts the next example (`score_rows_of`).
  `bos_id`: the BOS the feature converter put in front (`feature_converter(...).bos_id`), kept when a row is cut.
  """
  params = place_params(model, params, mesh)

  def score_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> IndexedResult:
    del model_feature_shapes  # Shapes come from the examples themselves (bucketed).
    indices, rows = score_rows_of(dataset)
    scores = score_rows(model, params, rows, length_normalize, batch_size=batch_size, max_length=max_length, mesh=mesh,
                        stats=stats, progress=progress, share_prompts=share_prompts, bos_id=bos_id)
    return list(zip(indices, scores))

  return score_fn


def make_predict_fn(model: nn.Module, params: Any, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    eos_id: int | Sequence[int] = EOS_ID, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_length: int | None = None, mesh: jax.sharding.Mesh | None = None,
                    stats: InferenceStats | None = None, progress: bool = True,
                    bos_id: int | None = None) -> Callable[..., IndexedResult]:
  """seqio `predict_fn`: (enumerated model dataset) -> [(index, greedy tokens)].

  Each prediction is an int32 array of `max_new_tokens` ids: the greedy tokens, then the first EOS id repeated
  (as t5x returns fixed-length decodes). seqio stacks the predictions into one array before its metrics, and
  the vocabulary's `decode` stops at its EOS and drops special tokens. `eos_id`: one id or several (any ends a
  decoding); put the tokenizer's EOS first so that the padding is the one its `decode` stops at. `bos_id`: as
  `make_score_fn`'s (a prompt cut to fit keeps it).
  """
  params = place_params(model, params, mesh)

  def predict_fn(dataset: Any, model_feature_shapes: Mapping[str, Any] | None = None) -> IndexedResult:
    del model_feature_shapes
    indices, prompts = prompts_of(dataset)
    outputs = greedy_decode(model, params, prompts, max_new_tokens, eos_id, batch_size=batch_size,
                            max_length=max_length, mesh=mesh, stats=stats, progress=progress, bos_id=bos_id)
    return list(zip(indices, fixed_length(outputs, max_new_tokens, eos_id)))

  return predict_fn


def fixed_length(outputs: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int | Sequence[int]) -> np.ndarray:
  """Greedy outputs as t5x returns them: int32 [n, max_new_tokens], each padded with the first EOS id."""
  fill = decoding.eos_tuple(eos_id)[0]
  out = np.full((len(outputs), max_new_tokens), fill, np.int32)
  for i, tokens in enumerate(outputs):
    out[i, :len(tokens)] = tokens
  return out


class ModelCalls(Protocol):
  """What the evaluator asks of a scorer: seqio's `score_fn` / `predict_fn`, the context and the counters.

  `Scorer` runs the model; `requests.Recorder` records the calls (its `placeholder_outputs` is true: its
  outputs score nothing) and `requests.Replayer` answers them from an answers folder. `bos_id`: the BOS the
  Task's feature converter puts in front of each row (None: none), kept when a prompt is cut to fit.
  """

  stats: InferenceStats
  max_length: int

  def score_fn(self, length_normalize: bool = False, bos_id: int | None = None) -> Callable[..., IndexedResult]:
    ...

  def predict_fn(self, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, eos_id: int | Sequence[int] | None = None,
                 bos_id: int | None = None) -> Callable[..., IndexedResult]:
    ...


class Scorer:
  """A model, its placed params and the inference settings, with one `stats` for every call.

  `Scorer(config, params)` places the params once; its methods are the module's functions with those
  arguments filled in. `config` is any family's (`models.registry`); `eos_ids` end a greedy decoding (one id or
  several; None: `config.eos_ids`, OPT's </s>). For a Llama-family model pass the tokenizer's EOS first, then
  the config's: `(vocabulary.eos_id, *config.eos_ids)`.
  """

  def __init__(self, config: Any, params: Any, mesh: jax.sharding.Mesh | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None, progress: bool = True,
               share_prompts: bool = True, eos_ids: int | Sequence[int] | None = None):
    self.model = registry.make_model(config)
    self.eos_ids = tuple(config.eos_ids) if eos_ids is None else decoding.eos_tuple(eos_ids)
    self.share_prompts = share_prompts
    self.mesh = mesh
    self.batch_size = batch_size
    self.max_length = batching.context_length(self.model, max_length)
    self.progress = progress
    self.stats = InferenceStats()
    self.params = place_params(self.model, params, mesh)

  def _settings(self) -> dict[str, Any]:
    return dict(batch_size=self.batch_size, max_length=self.max_length, mesh=self.mesh, stats=self.stats,
                progress=self.progress)

  def score_options(self, prompt_tokens: Sequence[batching.TokenIds],
                    options_tokens: Sequence[Sequence[batching.TokenIds]], length_normalize: bool = False,
                    bos_id: int | None = None) -> list[list[float]]:
    return score_options(self.model, self.params, prompt_tokens, options_tokens, length_normalize,
                         share_prompts=self.share_prompts, bos_id=bos_id, **self._settings())

  def greedy_decode(self, prompt_tokens: Sequence[batching.TokenIds], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    eos_id: int | Sequence[int] | None = None, bos_id: int | None = None) -> list[list[int]]:
    eos = self.eos_ids if eos_id is None else eos_id
    return greedy_decode(self.model, self.params, prompt_tokens, max_new_tokens, eos, bos_id=bos_id, **self._settings())

  def score_fn(self, length_normalize: bool = False, bos_id: int | None = None) -> Callable[..., IndexedResult]:
    return make_score_fn(self.model, self.params, length_normalize=length_normalize, share_prompts=self.share_prompts,
                         bos_id=bos_id, **self._settings())

  def predict_fn(self, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, eos_id: int | Sequence[int] | None = None,
                 bos_id: int | None = None) -> Callable[..., IndexedResult]:
    eos = self.eos_ids if eos_id is None else eos_id
    return make_predict_fn(self.model, self.params, max_new_tokens=max_new_tokens, eos_id=eos, bos_id=bos_id,
                           **self._settings())
