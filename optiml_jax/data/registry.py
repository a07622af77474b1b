"""SeqIO registration: one Task per catalog task (0-shot and k-shot variants) and the training mixtures.

Where it sits: after the catalog (`catalog.py`, which fixed every task's role, held-out instances and
sampling rate) and before the feature converter (`packing.py`). Each Task streams its instances again from
the original file (`sources.reopen`), formats them (`formatting.py`) and tokenizes them with the vocabulary
it was registered with (`vocab.HFVocabulary` of any Hugging Face tokenizer folder; OPT's by default); nothing
is cached on disk. The feature converter must follow the same tokenizer's BOS policy
(`packing.OptimlFeatureConverter.for_vocabulary`).

Tasks, for a catalog task named `<name>` (e.g. "sni:task1292_yelp_review_full_text_categorization"):
  `<name>`          0-shot;  `<name>.<k>shot`  k demonstrations (the `shots` argument of `register_catalog`).
  splits: "train"       the training stream (`catalog.train_instances`; train-role tasks only),
          "validation"  the held-out instances (`catalog.eval_instances`; every task that has some: `lm`
                        text has none).
  order: source order without shuffling; with it (training), each pass over a task reads its instances in a
         block-shuffled order drawn from (seed, task, pass), then a small per-Task shuffle buffer mixes them.
Features of every example:
  inputs, targets              int32 token ids: BPE(source), the target's tokens after it + [EOS]
                               (`formatting.tokenize_example`; the OUTPUT features;
                               `lm` tasks have empty inputs, so their loss covers the whole text);
                               registered with `chat=` (evaluating a chat model in its own format), the
                               prompt as the model's conversation (each demonstration a user turn and its
                               answer, the input the last user turn) and the target as its answer (`chat.py`);
  inputs_pretokenized, targets_pretokenized   the source and target text;
  references                   every reference output (string list; ROUGE-L / exact match take the best);
  options_pretokenized, options   answer candidates of multiple-choice tasks as text and as ragged int32
                               token ids, each tokenized like a target (for rank classification; empty for
                               other tasks; "validation" split only);
  options_scores               float32 graded score of each option, in option order (BIG-bench's
                               `target_scores`, `records.Instance.option_scores`); empty when the source
                               grades none ("validation" split only);
  instance_id                  the instance's id in its source.
A preprocessor (`truncate`) fits each example to ONE row when a `sequence_length` is given: L =
sequence_length["inputs"] + sequence_length["targets"] positions (t5x's TASK_FEATURE_LENGTHS; only the sum
counts). As in the paper, the prompt loses tokens from the LEFT until the whole target fits (a target longer
than the row by itself is cut from the end, keeping its EOS); pre-training text is split into row-sized chunks,
one example each (so a Task may yield more examples than its source has instances). The Tasks are `OptimlTask`s,
which trim their output to the row as a whole instead of seqio's feature-by-feature trim.
Metrics: each Task carries the metric functions of its kind (`eval_tasks.task_metric_args`: ROUGE-L and
exact match against every reference for generation tasks, from `metrics.py`); multiple-choice tasks are scored
through their rank-classification companion `<name>.score_eval`, registered with them by
`eval_tasks.register_score_eval_task`. The evaluation only runs these Tasks by name.

Mixtures (their rates computed by `sampling.catalog_mixtures`, which the TF-free `cached_stream` reads too):
  `optiml_bench_train`          train-role tasks (0-shot) at the catalog's rates: min(examples, 4096)
                                rescaled to the benchmark shares (`rates.examples_proportional`).
  `optiml_bench_train_uniform`  the same tasks, uniform within each benchmark, same shares.
  Both need the 0-shot Tasks: `register_catalog` registers them only when its `shots` hold 0.
  Your own: `add_mixture(name, ["sni", "flan:some_task"], shares=..., temperature=2.0)`.

Registering from a gin file, as in t5x: put the calls in a module of your own,

    # my_tasks.py
    from optiml_jax.data import registry
    registry.register_catalog("/data/optiml_bench", shots=(0, 5))
    registry.add_mixture("sni_flan", ["sni", "flan"], shares={"sni": 1, "flan": 1})

and start the gin file with `import my_tasks`; `MIXTURE_OR_TASK_NAME = "sni_flan"` then names it.
Registration is idempotent: registering a name again replaces the previous Task or Mixture.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from optiml_jax.data import cache as cache_lib
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import chat as chat_lib
from optiml_jax.data import eval_tasks
from optiml_jax.data import formatting
from optiml_jax.data import packing
from optiml_jax.data import rates
from optiml_jax.data import records
from optiml_jax.data import sampling
from optiml_jax.data import sources
from optiml_jax.data import vocab

TRAIN_SPLIT = cache_lib.TRAIN_SPLIT  # "train"
EVAL_SPLIT = eval_tasks.EVAL_SPLIT  # "validation"
TRAIN_MIXTURE = sampling.TRAIN_MIXTURE
TRAIN_MIXTURE_UNIFORM = sampling.TRAIN_MIXTURE_UNIFORM
DEFAULT_SEED = 0  # formatting seed: delimiters and demonstrations
DEMONSTRATION_POOL_SIZE = 256  # first instances after the eval ones, when a task has no demonstrations
# Each Task's shuffle buffer holds tokenized examples and must fill before the first one comes out, for every
# task of a mixture at once: kept small. The source itself reads instances in a seeded random order within
# blocks of SHUFFLE_BLOCK_SIZE raw instances (cheap: nothing is tokenized until an example is drawn).
SHUFFLE_BUFFER_SIZE = 64
SHUFFLE_BLOCK_SIZE = sampling.SHUFFLE_BLOCK_SIZE
STRATEGIES = ("examples_proportional", "uniform")

# Catalog entries of the registered tasks, by 0-shot task name (for `add_mixture`).
_ENTRIES: dict[str, catalog_lib.CatalogEntry] = {}

# Pure pieces shared with the TF-free cached stream (`sampling.py`), under the names this module has always offered.
variant_name = sampling.variant_name
shuffled_blocks = sampling.shuffled_blocks
config_shares = sampling.config_shares


def default_vocabulary(tokenizer_dir: str | os.PathLike | None = None) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face tokenizer folder; None: OPT's byte-level BPE (the copy in the package)."""
  return vocab.load(tokenizer_dir)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """"inputs" and "targets": int32 ids in `vocabulary`; "targets" end with its EOS."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32),
  }


# ---------------------------------------------------------------------------------------------------
# Examples of one task: plain Python, testable without TF.


def demonstration_pools(entry: catalog_lib.CatalogEntry, task: records.TaskSource, size: int = DEMONSTRATION_POOL_SIZE,
                        fallback: bool = True) -> tuple[tuple[records.Instance, ...], tuple[records.Instance, ...]]:
  """(own, fallback): the demonstrations a k-shot example of the task may draw. `own` are the task's own
  (SNI positive examples); `fallback`, which tops them up when k is larger, the instances among the first `size`
  after its evaluation instances (training instances of a train-role task, unused instances of a held-out one;
  empty when `fallback` is False). Never an evaluation instance; for a train-role task, never a repeat (same input
  and answer, `catalog.repeats_held_out`) of one of its held-out instances, nor a line the catalog left out of its
  training stream as a copy of another task's held-out instance (`entry.excluded_instances`, source indices), nor a
  repeat of such a line: a k-shot training prompt would train on that held-out answer. Sources repeat instances
  (SNI positive examples that are also instances of their task, e.g. task697's)."""
  start = entry.num_eval_instances
  own: tuple[records.Instance, ...] = tuple(task.demonstrations)
  excluded = frozenset(entry.excluded_instances)
  rest: tuple[records.Instance, ...] = ()
  if fallback:
    window = itertools.islice(enumerate(task.instances()), start, start + size)
    rest = tuple(instance for k, instance in window if k not in excluded)
  held_out = catalog_lib.held_out_answers(entry, task)
  if excluded and own:  # the lines themselves may lie past the window
    lines = itertools.islice(enumerate(task.instances()), max(excluded) + 1)
    held_out |= {(i.input.strip(), t.strip()) for k, i in lines if k in excluded for t in i.targets}
  if held_out:
    own = tuple(d for d in own if not catalog_lib.repeats_held_out(d, held_out))
    rest = tuple(d for d in rest if not catalog_lib.repeats_held_out(d, held_out))
  return own, rest


def demonstration_pool(entry: catalog_lib.CatalogEntry, task: records.TaskSource,
                       size: int = DEMONSTRATION_POOL_SIZE) -> tuple[records.Instance, ...]:
  """Every demonstration a k-shot example of the task may draw (`demonstration_pools`): the task's own first,
  then the fallback instances."""
  own, rest = demonstration_pools(entry, task, size)
  return own + rest


def split_instances(entry: catalog_lib.CatalogEntry, task: records.TaskSource,
                    split: str) -> Iterable[records.Instance]:
  """The instances of a split, by the catalog's held-out instances rule."""
  if split == TRAIN_SPLIT:
    return catalog_lib.train_instances(entry, task)
  if split == EVAL_SPLIT:
    return catalog_lib.eval_instances(entry, task)
  raise ValueError(f"task {entry.name}: unknown split {split!r}; expected {TRAIN_SPLIT!r} or {EVAL_SPLIT!r}")


def _tokens(vocabulary: formatting.Encoder, text: str) -> list[int]:
  return list(vocabulary.encode(text)) if text else []


def example_tokens(
    vocabulary: formatting.Encoder, source: str, target: str, options: Sequence[str],
    chat: chat_lib.ChatFormat | None = None, turns: Sequence[tuple[str, str]] = ()
) -> tuple[list[int], list[int], list[list[int]]]:
  """(inputs, targets, one id list per option) of a formatted example: the paper's plain text, the target and
  each option as they continue the source + [EOS] (`formatting`); with `chat`, `source` as the model's last user
  turn after `turns` (the demonstrations as (user, answer) texts, `formatting.chat_turns`), and the target and
  options as its answer, each closed by the end of the turn (`chat.py`); every message's text is stripped
  (`chat.message_tokens`)."""
  if chat is not None and source:
    message = functools.partial(chat_lib.message_tokens, vocabulary)
    answers = [message(a) for a in (target, *options)]
    demonstrations = [(message(u), message(a)) for u, a in turns]
    return chat.inputs(message(source), demonstrations), chat.answer(answers[0]), [chat.answer(a) for a in answers[1:]]
  eos = vocabulary.eos_id
  input_text, target_text = formatting.token_texts(source, target)
  inputs = _tokens(vocabulary, input_text)
  continued = [
      formatting.continuation_tokens(vocabulary, input_text, inputs, text) + [eos]
      for text in (target_text, *(formatting.token_texts(source, o)[1] for o in options))
  ]
  return inputs, continued[0], continued[1:]


def iter_examples(entry: catalog_lib.CatalogEntry, task: records.TaskSource, split: str, shots: int,
                  vocabulary: formatting.Encoder, seed: int = DEFAULT_SEED, pool_size: int = DEMONSTRATION_POOL_SIZE,
                  order_seed: int | None = None, chat: chat_lib.ChatFormat | None = None) -> Iterator[dict[str, Any]]:
  """Formatted, tokenized examples of one task and split (numpy / Python values).

  Source order when `order_seed` is None, else shuffled within blocks of `SHUFFLE_BLOCK_SIZE` instances.
  `seed` is the formatting seed (delimiters, demonstrations): it does not depend on the order. `chat`: the
  prompt as a chat model's conversation, demonstrations as earlier turns (`example_tokens`); the text features
  stay the plain ones.
  """
  own, fallback = demonstration_pools(entry, task, pool_size, fallback=False) if shots else ((), ())
  if shots > len(own):
    own, fallback = demonstration_pools(entry, task, pool_size)
  instances = split_instances(entry, task, split)
  if order_seed is not None:
    instances = sampling.shuffled_blocks(instances, SHUFFLE_BLOCK_SIZE, order_seed)
  for instance in instances:
    delimiter = formatting.choose_delimiter(seed, task.name, instance.id)
    demos = formatting.choose_demonstrations(seed, task.name, instance.id, own, shots, fallback, instance.input)
    source, target = formatting.format_example(task, instance, demos, delimiter)
    turns, query = formatting.chat_turns(task, instance, demos, delimiter) if chat else ((), source)
    inputs, targets, option_ids = example_tokens(vocabulary, query, target, instance.options, chat, turns)
    yield {
        "inputs": np.asarray(inputs, np.int32),
        "targets": np.asarray(targets, np.int32),
        "inputs_pretokenized": source,
        "targets_pretokenized": target,
        "references": np.asarray(instance.targets or ("",), dtype=object),
        "options_pretokenized": np.asarray(instance.options, dtype=object),
        "options_values": np.asarray([t for ids in option_ids for t in ids], np.int32),
        "options_lengths": np.asarray([len(ids) for ids in option_ids], np.int64),
        "options_scores": np.asarray(instance.option_scores, np.float32),
        "instance_id": instance.id,
    }


# ---------------------------------------------------------------------------------------------------
# SeqIO plumbing.

_SIGNATURE = {
    "inputs": tf.TensorSpec([None], tf.int32),
    "targets": tf.TensorSpec([None], tf.int32),
    "inputs_pretokenized": tf.TensorSpec([], tf.string),
    "targets_pretokenized": tf.TensorSpec([], tf.string),
    "references": tf.TensorSpec([None], tf.string),
    "options_pretokenized": tf.TensorSpec([None], tf.string),
    "options_values": tf.TensorSpec([None], tf.int32),
    "options_lengths": tf.TensorSpec([None], tf.int64),
    "options_scores": tf.TensorSpec([None], tf.float32),
    "instance_id": tf.TensorSpec([], tf.string),
}


def _ragged_options(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  out = {k: v for k, v in ex.items() if k not in ("options_values", "options_lengths")}
  out["options"] = tf.RaggedTensor.from_row_lengths(ex["options_values"], ex["options_lengths"])
  return out


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, entry: catalog_lib.CatalogEntry,
                shots: int, vocabulary: seqio.Vocabulary, format_seed: int, pool_size: int,
                chat: chat_lib.ChatFormat | None = None) -> tf.data.Dataset:
  """seqio.FunctionDataSource's dataset_fn: streams the task from its source file.

  With `shuffle_files`, every pass over the task (each repetition calls the generator again) reads the
  instances in a new block-shuffled order drawn from (seed, task name, pass number), so the stream is the
  same on every run with the same seed. Without it: source order.
  """
  passes = itertools.count()

  def generate():
    epoch = next(passes)
    order_seed = formatting.stable_hash("order", seed, entry.name, shots, split, epoch) if shuffle_files else None
    task = reopen_task(entry)
    yield from iter_examples(entry, task, split, shots, vocabulary, format_seed, pool_size, order_seed, chat)

  if split == TRAIN_SPLIT:  # training never ranks options: skip them (and a map per task at start-up)
    signature = {k: v for k, v in _SIGNATURE.items() if not k.startswith("options")}
    return tf.data.Dataset.from_generator(lambda: ({
        k: ex[k] for k in signature
    } for ex in generate()), output_signature=signature)
  ds = tf.data.Dataset.from_generator(generate, output_signature=_SIGNATURE)
  return ds.map(_ragged_options, num_parallel_calls=tf.data.AUTOTUNE)


def reopen_task(entry: catalog_lib.CatalogEntry) -> records.TaskSource:
  """The task's source, read again from its file; refuses a file that now holds another task."""
  task = sources.reopen(entry.format, entry.path, entry.benchmark)
  if task.name != entry.name:
    raise ValueError(f"{entry.path}: the catalog lists task {entry.name!r} but the file now reads as "
                     f"{task.name!r}; rebuild the catalog")
  return task


def _cached_dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, entry: catalog_lib.CatalogEntry,
                       shots: int, cache_dir: str, made_from: Mapping[str, Mapping[str, Any]]) -> tf.data.Dataset:
  """`_dataset_fn` over the task's committed cache shard (`cache.py`): the same examples in the same order.

  The shard holds the examples of `iter_examples` in source order, one per instance, so the block-shuffled order
  of a pass is the same permutation of example indices as the uncached Task's permutation of instances.
  """
  shard = cache_lib.read_shard(cache_dir, entry.name, shots, split, made_from[split])
  passes = itertools.count()
  with_options = split != TRAIN_SPLIT

  def generate():
    epoch = next(passes)
    order: Iterable[int] = range(len(shard))
    if shuffle_files:
      order = sampling.shuffled_blocks(order, SHUFFLE_BLOCK_SIZE,
                                       formatting.stable_hash("order", seed, entry.name, shots, split, epoch))
    order = list(order)
    for i, text in zip(order, shard.texts(order)):
      inputs, targets = shard.tokens_of(i)
      ex = {
          "inputs": np.array(inputs),
          "targets": np.array(targets),
          "inputs_pretokenized": text["inputs_pretokenized"],
          "targets_pretokenized": text["targets_pretokenized"],
          "references": np.asarray(text["references"], dtype=object),
          "instance_id": text["instance_id"],
      }
      if with_options:
        ex["options_pretokenized"] = np.asarray(text["options_pretokenized"], dtype=object)
        ex["options_values"] = np.asarray([t for ids in text["options"] for t in ids], np.int32)
        ex["options_lengths"] = np.asarray([len(ids) for ids in text["options"]], np.int64)
        ex["options_scores"] = np.asarray(text.get("options_scores", ()), np.float32)
      yield ex

  if not with_options:
    signature = {k: v for k, v in _SIGNATURE.items() if not k.startswith("options")}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)
  ds = tf.data.Dataset.from_generator(generate, output_signature=_SIGNATURE)
  return ds.map(_ragged_options, num_parallel_calls=tf.data.AUTOTUNE)


def cached_parts(entry: catalog_lib.CatalogEntry, shots: int, cache_dir: str | os.PathLike,
                 vocabulary: seqio.Vocabulary, seed: int, pool_size: int) -> dict[str, dict[str, Any]]:
  """What each split's shard must be built from (`cache.fingerprint_parts`), after checking that CACHE_DIR holds
  it committed.

  Raises:
    cache.CacheError: a shard is missing, uncommitted or built from something else (names it).
  """
  fingerprint = getattr(vocabulary, "fingerprint", None)
  if fingerprint is None:
    raise cache_lib.CacheError(f"{cache_dir}: a cache needs a Hugging Face tokenizer vocabulary (vocab.HFVocabulary), "
                               f"got {type(vocabulary).__name__}")
  made_from = {}
  for split in _splits(entry):
    parts = cache_lib.fingerprint_parts(entry, shots, split, fingerprint, seed, pool_size)
    path = cache_lib.shard_dir(cache_dir, entry.name, shots, split)
    state = cache_lib.incomplete(path, parts)
    if state is not None:
      raise cache_lib.CacheError(f"{path}: the cache shard of task {entry.name!r} ({shots}-shot, split {split!r}) "
                                 f"{state}; (re)build it with `python -m optiml_jax.bench cache CATALOG_DIR --out "
                                 f"{cache_dir} --shots {shots}`")
    made_from[split] = parts
  return made_from


def truncate(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
             output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Task preprocessor: fits every example into one row of L = sequence_length["inputs"] + ["targets"]
  positions, the paper's way (only the sum counts; a missing one counts 0); no-op without lengths.

  An example with inputs keeps its whole target and loses prompt tokens from the left until it fits
  (`formatting.fit_to_row`; a target longer than the row alone is cut from the end, keeping its EOS). An
  example without inputs is pre-training text (`lm` tasks; every other example has at least its delimiter)
  and becomes one example per row-sized chunk (`formatting.split_text`), each trained on every token. The
  BOS counted is the one the vocabulary's tokenizer adds (`bos_id`; None: none), the one the feature
  converter feeds (`packing.OptimlFeatureConverter.for_vocabulary`). Deterministic: the same examples give
  the same rows in the same order (`formatting.row_examples` is the same in numpy).
  """
  length = packing.row_length(sequence_length)
  if length is None:
    return dataset
  vocabulary = output_features["targets"].vocabulary
  eos, with_bos = vocabulary.eos_id, getattr(vocabulary, "bos_id", None) is not None
  return dataset.flat_map(lambda ex: packing.row_examples_tf(ex, length, eos, with_bos))


class OptimlTask(seqio.Task):
  """A seqio Task whose output is trimmed to the row as a whole, not feature by feature.

  seqio trims each output feature to its own length after the preprocessors (`inputs[:Li]`, `targets[:Lt]`),
  which would cut the end of a prompt that `truncate` left longer than Li; here the example is fitted to
  L = Li + Lt instead (`packing.fit_to_row_tf`, a no-op after `truncate`).
  """

  def _trim_output_features(self, dataset: tf.data.Dataset,
                            sequence_length: Mapping[str, Any] | None) -> tf.data.Dataset:
    length = packing.row_length(sequence_length)
    if length is None:
      return dataset
    vocabulary = self.output_features["targets"].vocabulary
    eos, with_bos = vocabulary.eos_id, getattr(vocabulary, "bos_id", None) is not None
    return dataset.map(lambda ex: packing.fit_to_row_tf(ex, length, eos, with_bos), num_parallel_calls=tf.data.AUTOTUNE)


def _splits(entry: catalog_lib.CatalogEntry) -> dict[str, int]:
  splits = {}
  if entry.role == catalog_lib.TRAIN and entry.num_examples > 0:
    splits[TRAIN_SPLIT] = entry.num_examples
  if entry.num_eval_instances > 0:
    splits[EVAL_SPLIT] = entry.num_eval_instances
  return splits


def register_task(entry: catalog_lib.CatalogEntry, vocabulary: seqio.Vocabulary | None = None, shots: int = 0,
                  seed: int = DEFAULT_SEED, pool_size: int = DEMONSTRATION_POOL_SIZE,
                  shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE, cache_dir: str | os.PathLike | None = None,
                  chat: chat_lib.ChatFormat | None = None) -> seqio.Task | None:
  """Registers (or replaces) the seqio Task of one catalog entry and number of demonstrations.

  With `cache_dir`, the Task reads its committed shards there (`cache.py`; the same examples, in the same order)
  instead of formatting and tokenizing the source file; `cache.CacheError` names a missing shard. With `chat`,
  the prompts are a chat model's user turns (`chat.py`), formatted from the source file: a cache holds plain ones.
  Returns None (and registers nothing) for an entry with neither training examples nor eval instances.
  """
  splits = _splits(entry)
  if not splits:
    return None
  vocabulary = vocabulary or default_vocabulary()
  name = variant_name(entry.name, shots)
  if chat is not None and cache_dir is not None:
    raise ValueError(f"task {entry.name}: a bench cache holds plain prompts, not chat turns; register the chat "
                     "format without cache_dir")
  if cache_dir is None:
    dataset_fn = functools.partial(_dataset_fn, entry=entry, shots=shots, vocabulary=vocabulary, format_seed=seed,
                                   pool_size=pool_size, chat=chat)
  else:
    made_from = cached_parts(entry, shots, cache_dir, vocabulary, seed, pool_size)
    dataset_fn = functools.partial(_cached_dataset_fn, entry=entry, shots=shots, cache_dir=str(cache_dir),
                                   made_from=made_from)
  source = seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=tuple(splits), num_input_examples=splits)
  seqio.TaskRegistry.remove(name)
  _ENTRIES[entry.name] = entry
  task = seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocabulary), task_cls=OptimlTask,
                                preprocessors=[truncate], shuffle_buffer_size=shuffle_buffer_size,
                                **eval_tasks.task_metric_args(entry.kind))
  if entry.kind == records.MULTIPLE_CHOICE:
    eval_tasks.register_score_eval_task(task)  # `<name>.score_eval`: one row per option, for rank classification
  return task


@dataclasses.dataclass(frozen=True)
class Registered:
  """What `register_catalog` registered."""

  tasks: tuple[str, ...]  # every Task name, all variants
  mixtures: tuple[str, ...]


def register_catalog(catalog_dir: str | os.PathLike | None, vocabulary: seqio.Vocabulary | None = None,
                     shots: Sequence[int] = (0,), seed: int = DEFAULT_SEED, pool_size: int = DEMONSTRATION_POOL_SIZE,
                     shuffle_buffer_size: int = SHUFFLE_BUFFER_SIZE, mixtures: bool = True,
                     cache_dir: str | os.PathLike | None = None, chat: chat_lib.ChatFormat | None = None) -> Registered:
  """Registers a Task per catalog task and number of demonstrations, plus the training mixtures.

  Args:
    catalog_dir: folder written by `Catalog.save` (or its catalog.json).
    vocabulary: the tokenizer's (`vocab.HFVocabulary(folder)`); defaults to `vocab.OPTVocabulary()`.
    shots: numbers of demonstrations; 0 registers `<name>`, k registers `<name>.<k>shot`.
    seed: formatting seed (delimiter and demonstrations of each example).
    pool_size: fallback demonstrations of tasks with fewer own ones than shots (see `demonstration_pool`).
    shuffle_buffer_size: each Task's shuffle buffer.
    mixtures: also register `optiml_bench_train` and `optiml_bench_train_uniform`, which mix 0-shot Tasks: only
      when `shots` holds 0 (else they are left out with a logged warning, and `Registered.mixtures` is empty).
    cache_dir: a bench cache (`python -m optiml_jax.bench cache`): every Task whose shards its manifest lists
      reads them there (the others, e.g. a number of shots not cached, read their source files, with a warning);
      with `catalog_dir` None, the catalog is the copy inside the cache.
    chat: register every Task with its prompts in a chat model's turn format (`chat.ChatFormat`; evaluation of
      chat models in their own format). Not with `cache_dir`, whose shards hold plain prompts.

  Idempotent: calling it again re-registers the same names.

  Raises:
    cache.CacheError: the cache was tokenized with another vocabulary, or a shard it lists is missing, partial or
      out of date (another catalog entry, an older rule: the message says which, `cache.mismatch`).
    ValueError: `chat` with `cache_dir`.
  """
  if chat is not None and cache_dir is not None:
    raise ValueError(f"{cache_dir}: a bench cache holds plain prompts, not chat turns; evaluate in the chat format "
                     "from the catalog's source files (no cache_dir)")
  if catalog_dir is None:
    if cache_dir is None:
      raise ValueError("register_catalog needs a catalog_dir, or a cache_dir holding its catalog")
    catalog_dir = cache_dir
  bench = catalog_lib.load(catalog_dir)
  vocabulary = vocabulary or default_vocabulary()
  cached: set[str] = set()
  if cache_dir is not None:
    manifest = cache_lib.read_manifest(cache_dir)
    cache_lib.check_vocabulary(manifest, getattr(vocabulary, "fingerprint", ""), cache_dir)
    cached = set(manifest.shards)
  names, uncached = [], []
  for entry in bench.tasks:
    for k in shots:
      in_cache = all(cache_lib.shard_name(entry.name, k, split) in cached for split in _splits(entry))
      if cache_dir is not None and not in_cache and _splits(entry):
        uncached.append(variant_name(entry.name, k))
      task = register_task(entry, vocabulary, k, seed, pool_size, shuffle_buffer_size, cache_dir if in_cache else None,
                           chat)
      if task is not None:
        names.append(task.name)
  if uncached:
    logging.warning(
        "%s: %d task variant(s) are not in the cache and read their source files: %s%s (build them "
        "with `python -m optiml_jax.bench cache`, --shots for k-shot variants)", cache_dir, len(uncached),
        ", ".join(uncached[:5]), " ..." if len(uncached) > 5 else "")
  mixture_names: list[str] = []
  if mixtures and 0 not in shots:
    logging.warning(
        "%s: the training mixtures (%s, %s) mix 0-shot Tasks and shots=%s registers none: mixtures not registered "
        "(add 0 to shots to register them; mixtures=False silences this)", catalog_dir, TRAIN_MIXTURE,
        TRAIN_MIXTURE_UNIFORM, tuple(shots))
  elif mixtures:
    catalog_mixtures = sampling.catalog_mixtures(bench)
    for name, task_rates in catalog_mixtures.items():
      _replace_mixture(name, task_rates)
    mixture_names = list(catalog_mixtures)
    if not catalog_mixtures:
      logging.warning("%s: no training task with a positive rate: mixtures not registered", catalog_dir)
  return Registered(tuple(names), tuple(mixture_names))


def _replace_mixture(name: str, task_rates: Mapping[str, float]) -> seqio.Mixture:
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, sorted((t, r) for t, r in task_rates.items() if r > 0))


def _base_name(name: str) -> tuple[str, str]:
  """(0-shot task name, variant suffix) of a registered Task name."""
  base, _ = sampling.parse_variant(name, _ENTRIES)
  return base, name[len(base):]


def mixture_rates(items: Sequence[str], shares: Mapping[str, float] | None = None, cap: int = rates.DEFAULT_CAP,
                  temperature: float = 1.0, strategy: str = "examples_proportional",
                  fixed: Sequence[str] = ()) -> dict[str, float]:
  """Rates of a mixture over registered catalog tasks (see `add_mixture`); pure apart from the registry."""
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
  if not items:
    raise ValueError("a mixture needs at least one task or benchmark name")
  benchmarks = {e.benchmark for e in _ENTRIES.values()}
  registered = set(seqio.TaskRegistry.names())
  chosen: dict[str, catalog_lib.CatalogEntry] = {}
  for item in items:
    if item in benchmarks:
      for entry in _ENTRIES.values():
        if entry.benchmark == item and entry.role == catalog_lib.TRAIN and entry.num_examples > 0:
          if entry.name not in registered:
            raise ValueError(f"benchmark {item!r} mixes its training tasks 0-shot, and {entry.name!r} is not "
                             "registered (register_catalog with 0 in shots)")
          chosen[entry.name] = entry
      continue
    base, suffix = _base_name(item)
    if item not in registered or base not in _ENTRIES:
      raise ValueError(f"{item!r} is neither a registered catalog task nor a benchmark of one "
                       f"(benchmarks: {sorted(benchmarks)}; register the catalog first)")
    entry = _ENTRIES[base]
    if entry.num_examples <= 0:
      raise ValueError(f"task {item!r} has no training examples (role {entry.role}): it cannot be mixed")
    chosen[item] = dataclasses.replace(entry, name=base + suffix)
  if not chosen:
    raise ValueError(f"no training task in {list(items)}")
  counts = {n: e.num_examples for n, e in chosen.items()}
  if shares is None:
    benchmark_of = {n: "all" for n in chosen}
    shares, fixed = {"all": 1.0}, ()
  else:
    benchmark_of = {n: e.benchmark for n, e in chosen.items()}
  groups = catalog_lib.template_groups(chosen)
  if strategy == "uniform":
    return rates.uniform(counts, benchmark_of, shares, fixed, groups=groups)
  return rates.examples_proportional(counts, benchmark_of, shares, cap, temperature, fixed, groups=groups)


def add_mixture(name: str, tasks_or_benchmarks: Sequence[str], shares: Mapping[str, float] | None = None,
                cap: int = rates.DEFAULT_CAP, temperature: float = 1.0, strategy: str = "examples_proportional",
                fixed: Sequence[str] = ()) -> seqio.Mixture:
  """Registers (or replaces) a training mixture over registered catalog tasks.

  Args:
    name: the mixture's name.
    tasks_or_benchmarks: Task names (any registered variant, e.g. "sni:task001_x.5shot") and benchmark
      names ("sni": every train-role task of it, 0-shot).
    shares: share per benchmark (see `rates`); None mixes all chosen tasks by their own weight alone.
    cap: examples beyond the cap do not raise a task's weight (OPT-IML: 4096).
    temperature: weight = min(n, cap) ** (1 / temperature).
    strategy: "examples_proportional" or "uniform" (equal weights within each benchmark).
    fixed: benchmarks whose share is an absolute percentage of the mixture (reasoning, pre-training text).
  """
  return _replace_mixture(name, mixture_rates(tasks_or_benchmarks, shares, cap, temperature, strategy, fixed))


def registered_entry(task_name: str) -> catalog_lib.CatalogEntry:
  """The catalog entry behind a registered Task name (any variant)."""
  base, _ = _base_name(task_name)
  if base not in _ENTRIES:
    raise KeyError(f"{task_name!r} is not a registered catalog task")
  return _ENTRIES[base]
