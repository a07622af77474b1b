"""Formatting: a task record + an instance -> the (source, target) text pair, then its tokens.

Where it sits: `sources/` readers yield `TaskSource`/`Instance` records, the catalog decides which
instances are for training and which for evaluation, and `registry.py` calls the functions here for every
example before handing tokens to `packing.py`. Everything here is a pure function of its arguments.

The recipe (OPT-IML, Iyer et al. 2022, "Formatting and tokens"):

  source = [definition] [demonstrations] instance + delimiter        (blocks separated by a blank line)
  tokens = [BOS] + BPE(source.rstrip(" ") + " " + target.rstrip()) + [EOS]

  Each tokenizer's own conventions (`vocab.HFVocabulary`): OPT's BOS and EOS are both </s>; a Llama-family
  tokenizer ends the target with its own EOS (SmolLM2-Instruct `<|im_end|>`, Llama 3 `<|end_of_text|>`) and
  gets its BOS only where it adds one (Llama 3 `<|begin_of_text|>`; SmolLM2 and Qwen2 add none, so the
  sequence starts with the first input token).

* The delimiter is drawn per example from `DELIMITERS` by a hash of (seed, task name, instance id), so it is
  the same on every run, host and epoch; none is added when the text already ends with ":".
* SNI places demonstrations after the task definition; FLAN and PromptSource put them before the example
  (their prompts carry the instruction inline). Each demonstration is formatted like the example itself,
  with the same delimiter, followed by its first reference output.
* Demonstrations come from the task's own `demonstrations` (SNI positive examples), topped up from its
  training instances when it has fewer than k, never from its evaluation instances: the caller passes both
  pools (see `registry.py`). A candidate with the example's own input text is never drawn (sources repeat
  instances under other ids), and one prompt never shows the same worked example twice (input and answer
  compared, `demonstration_content`).
* `lm` tasks (pre-training text) have no source: the whole text is the target and is trained on.
* Token ids are split into `inputs` = BPE(source) and `targets` = the target's tokens as they follow the
  source + [EOS]; the BOS is the packer's to add (`packing.py`). The target's tokens are the tail of
  BPE(source + " " + target) past the source's own tokens (`continuation_tokens`, lm-evaluation-harness's
  rule), so inputs + targets equals BPE of the joined text. For byte-level BPE (OPT, SmolLM2, Llama 3, Qwen2)
  that tail is BPE(" " + target) itself, as their pre-tokenizers always cut before the space that starts the
  target (the source never ends in whitespace); sentencepiece-style tokenizers (Llama 2, Mistral: "▁" prepended
  to the text) would give a stray "▁" token to a target encoded alone. Checked against the Hugging Face
  tokenizers in tests/data/test_formatting.py.
* Truncation is the paper's: one sequence length L (positions per row), and an example that does not fit
  loses tokens from the LEFT of its inputs, so the target is kept whole (`fit_to_row`). Only a target longer
  than the row by itself is cut, then from the end, keeping its final EOS (and no input token is left).
  Pre-training text (`lm`: no inputs) is not cut but split into row-sized chunks (`split_text`), each trained
  on every token. `truncate_tokens` keeps the older two-budget cut, for decoding, where the budget after the
  prompt is room for the generated tokens.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, Sequence

import numpy as np

from optiml_jax.data import records

# The paper's delimiter list; one is drawn per example.
DELIMITERS: tuple[str, ...] = (
    "\nAnswer:",
    " Answer:",
    "\nA:",
    " A:",
    "\nOutput:",
    " Output:",
    "\nanswer:",
    "\noutput:",
)
# Between the definition, each demonstration and the example.
BLOCK_SEPARATOR = "\n\n"
# Benchmarks whose prompts carry the instruction inline: demonstrations go before the whole example.
DEMONSTRATIONS_FIRST_BENCHMARKS = frozenset({"promptsource", "p3", "flan"})


class Encoder(Protocol):
  """What tokenization needs from a vocabulary (a `seqio.Vocabulary` has both)."""

  def encode(self, s: str) -> Sequence[int]:
    ...

  @property
  def eos_id(self) -> int:
    ...


def stable_hash(*parts: object) -> int:
  """A stable 64-bit integer from the parts (Python's `hash` is salted per process)."""
  digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little")


def choose_delimiter(seed: int, task_name: str, instance_id: str, delimiters: Sequence[str] = DELIMITERS) -> str:
  """The delimiter of one example: a deterministic draw from (seed, task name, instance id)."""
  if not delimiters:
    raise ValueError("choose_delimiter: the delimiter list is empty")
  return delimiters[stable_hash("delimiter", seed, task_name, instance_id) % len(delimiters)]


def demonstration_content(demo: records.Instance) -> tuple[str, str]:
  """What a demonstration shows: its input and first reference output, surrounding whitespace aside (the ids of
  two records of one worked example differ; their blocks in a prompt do not)."""
  return demo.input.strip(), demo.targets[0].strip() if demo.targets else ""


def choose_demonstrations(seed: int, task_name: str, instance_id: str, pool: Sequence[records.Instance], k: int,
                          fallback: Sequence[records.Instance] = (),
                          instance_input: str | None = None) -> tuple[records.Instance, ...]:
  """k demonstrations drawn without replacement from `pool`, topped up from `fallback` when `pool` is short.

  The draw depends only on (seed, task name, instance id) and the pools, so an example is formatted the same
  way wherever and whenever it is read. The instance itself and entries without a reference output are
  passed over: the instance by its id and, given `instance_input`, by its text too (leading and trailing
  whitespace aside), since sources repeat instances under other ids (an SNI positive example that is also one
  of the task's instances, a P3 prompt on two lines), and such a demonstration would show the example's
  own answer in its prompt. The demonstrations are distinct worked examples (`demonstration_content`): a drawn
  candidate that repeats one already chosen (such a repeat in either pool) is dropped and another drawn from the
  candidates left, so a draw without repeats is the plain draw of k. Returns fewer than k when the pools together
  hold fewer distinct ones (an empty tuple for k=0).
  """
  if k < 0:
    raise ValueError(f"task {task_name}: number of demonstrations must be >= 0, got {k}")
  rng = np.random.default_rng(stable_hash("demonstrations", seed, task_name, instance_id))
  same_text = None if instance_input is None else instance_input.strip()
  chosen: list[records.Instance] = []
  shown: set[tuple[str, str]] = set()
  for candidates in (pool, fallback):
    candidates = [
        d for d in candidates
        if d.id != instance_id and d.targets and (same_text is None or d.input.strip() != same_text)
    ]
    while (want := min(k - len(chosen), len(candidates))) > 0:
      picks = rng.choice(len(candidates), size=want, replace=False)
      for i in picks:
        if demonstration_content(candidates[i]) not in shown:
          shown.add(demonstration_content(candidates[i]))
          chosen.append(candidates[i])
      drawn = set(picks.tolist())
      candidates = [d for j, d in enumerate(candidates) if j not in drawn and demonstration_content(d) not in shown]
  return tuple(chosen)


def with_delimiter(text: str, delimiter: str) -> str:
  """`text` (trailing whitespace removed) + delimiter, or just `text` when it already ends with ":"."""
  text = text.rstrip()
  if text.endswith(":"):
    return text
  return text + delimiter


def _demonstration_block(demo: records.Instance, delimiter: str) -> str:
  return with_delimiter(demo.input, delimiter) + " " + demo.targets[0].strip()


def demonstrations_first(task: records.TaskSource) -> bool:
  """Whether demonstrations go before the example (FLAN, PromptSource) rather than after the definition."""
  return task.benchmark in DEMONSTRATIONS_FIRST_BENCHMARKS or task.format in ("p3", "promptsource", "flan")


def format_example(task: records.TaskSource, instance: records.Instance,
                   demonstrations: Sequence[records.Instance] = (), delimiter: str = "") -> tuple[str, str]:
  """The (source_text, target_text) of one example.

  Args:
    task: the task record (its definition, kind and benchmark decide the layout).
    instance: the example to format; `instance.targets[0]` is the target.
    demonstrations: worked examples to show first (from `choose_demonstrations`).
    delimiter: appended to the instance (and to each demonstration) unless the text ends with ":".

  Returns:
    (source_text, target_text). For `lm` tasks the source is "" and the target is the whole text.

  Raises:
    ValueError: the instance (or a demonstration) of a non-`lm` task has no reference output.
  """
  if task.kind == records.LANGUAGE_MODELING:
    return "", instance.input
  if not instance.targets:
    raise ValueError(f"{task.path}: task {task.name}, instance {instance.id}: field 'targets' is empty; "
                     "expected at least one reference output")
  for demo in demonstrations:
    if not demo.targets:
      raise ValueError(f"{task.path}: task {task.name}, demonstration {demo.id}: field 'targets' is empty; "
                       "expected at least one reference output")
  demo_blocks = [_demonstration_block(d, delimiter) for d in demonstrations]
  definition = task.definition.strip()
  query = with_delimiter(instance.input, delimiter)
  first = demonstrations_first(task)
  blocks = demo_blocks + [definition, query] if first else [definition] + demo_blocks + [query]
  return BLOCK_SEPARATOR.join(b for b in blocks if b), instance.targets[0]


def chat_turns(task: records.TaskSource, instance: records.Instance, demonstrations: Sequence[records.Instance] = (),
               delimiter: str = "") -> tuple[list[tuple[str, str]], str]:
  """The example of `format_example` as chat turns: ([(user text, assistant answer)] per demonstration, the last
  user message). Each demonstration is a user turn (its input and the delimiter) answered by its first reference;
  the task's definition opens the first user message, or, where demonstrations come first (FLAN, PromptSource),
  the last one. Joined with their answers, the texts are `format_example`'s blocks."""
  source, _ = format_example(task, instance, demonstrations, delimiter)  # its checks: every reference present
  if not demonstrations:
    return [], source
  definition = task.definition.strip()
  users = [with_delimiter(d.input, delimiter) for d in demonstrations]
  query = with_delimiter(instance.input, delimiter)
  if definition and demonstrations_first(task):
    query = definition + BLOCK_SEPARATOR + query
  elif definition:
    users[0] = definition + BLOCK_SEPARATOR + users[0]
  return [(u, d.targets[0].strip()) for u, d in zip(users, demonstrations)], query


def token_texts(source_text: str, target_text: str) -> tuple[str, str]:
  """The two strings whose BPE are the `inputs` and (before the EOS) the `targets` of an example.

  Their concatenation is `source.rstrip(" ") + " " + target.rstrip()` (no space when the source is empty,
  as for `lm` tasks; nothing for an empty target).
  """
  source = source_text.rstrip(" ")
  target = target_text.rstrip()
  if not target:
    return source, ""
  if not source:
    return "", target
  return source, " " + target


def continuation_tokens(vocabulary: Encoder, source: str, source_ids: Sequence[int], text: str) -> list[int]:
  """The tokens of `text` as it follows `source` (whose own tokens are `source_ids`): BPE(source + text) past
  its first len(source_ids) tokens when those are `source_ids`, else BPE(text) alone (a token merged across
  the boundary, which byte-level BPE never makes there: see the module docstring).

  A vocabulary whose `continuations_encode_alone` is true (`vocab.HFVocabulary`: byte-level BPE, OPT's among
  them) gives the same tokens from BPE(text) alone, which is what is computed then (half the work).
  """
  if not text:
    return []
  if not source or getattr(vocabulary, "continuations_encode_alone", False):
    return list(vocabulary.encode(text))
  joined = list(vocabulary.encode(source + text))
  if joined[:len(source_ids)] == list(source_ids):
    return joined[len(source_ids):]
  return list(vocabulary.encode(text))


def tokenize_example(vocabulary: Encoder, source_text: str, target_text: str) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) token ids of an example: BPE(source), the target's tokens after it + [EOS] (int32).

  The leading BOS (OPT: </s>), when the tokenizer adds one, is not included here: the feature converter adds it
  to each example.
  """
  source, target = token_texts(source_text, target_text)
  inputs = list(vocabulary.encode(source)) if source else []
  targets = continuation_tokens(vocabulary, source, inputs, target) + [vocabulary.eos_id]
  return np.asarray(inputs, dtype=np.int32), np.asarray(targets, dtype=np.int32)


def row_token_budget(length: int, with_bos: bool = True) -> int:
  """How many tokens (inputs + targets, the BOS not counted) fill a row of `length` positions.

  A row reads every token of an example but its last and predicts every token but its first
  (`packing.example_features`): with a BOS in front that is `length` tokens; without one the first input token
  takes the BOS's place, so `length + 1` (the paper's 2049-token blocks for 2048 positions).
  """
  if length < 1:
    raise ValueError(f"sequence length must be >= 1, got {length}")
  return length + (0 if with_bos else 1)


def fit_to_row(inputs: np.ndarray, targets: np.ndarray, length: int, eos_id: int,
               with_bos: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Fits an example into a row of `length` positions, the paper's way (left truncation of the prompt).

  The target is kept whole and the inputs keep their LAST tokens, as many as the row has room for after the
  target (BOS counted when `with_bos`: see `row_token_budget`). A target that alone is longer than the row is
  cut from the end to its first budget - 1 tokens plus `eos_id`, and the inputs are then dropped. An example
  that fits is returned as it is (the same arrays).

  >>> fit_to_row(np.arange(10, 20), np.asarray([5, 6, 2]), length=8, eos_id=2)
  (array([15, 16, 17, 18, 19]), array([5, 6, 2]))
  """
  budget = row_token_budget(length, with_bos)
  if len(targets) > budget:
    return inputs[:0], np.concatenate([targets[:budget - 1], np.asarray([eos_id], dtype=targets.dtype)])
  keep = budget - len(targets)
  if len(inputs) > keep:
    inputs = inputs[len(inputs) - keep:]
  return inputs, targets


def split_text(targets: np.ndarray, length: int, with_bos: bool = True) -> list[np.ndarray]:
  """Row-sized chunks of a pre-training text's tokens (an `lm` example: no inputs, loss on every token).

  A text that fits one row is one chunk, itself. A longer one is cut every `length` tokens into chunks of
  `row_token_budget(length, with_bos)` tokens, the last one shorter: with a BOS each chunk starts at the next
  token; without one each starts with the last token of the chunk before, which is read again but not
  predicted again. Either way every token of the text is predicted exactly once (but the first without a BOS);
  only the final chunk ends with the EOS. Each chunk is a whole example for the packer, so short final chunks
  pack with other examples.

  >>> [c.tolist() for c in split_text(np.arange(1, 8), 3)]
  [[1, 2, 3], [4, 5, 6], [7]]
  >>> [c.tolist() for c in split_text(np.arange(1, 8), 3, with_bos=False)]
  [[1, 2, 3, 4], [4, 5, 6, 7]]
  """
  budget = row_token_budget(length, with_bos)
  if len(targets) <= budget:
    return [targets]
  overlap = budget - length
  return [targets[start:start + budget] for start in range(0, len(targets) - overlap, length)]


def row_examples(inputs: np.ndarray, targets: np.ndarray, length: int, eos_id: int,
                 with_bos: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
  """What the Task preprocessor makes of one example for rows of `length` positions (`registry.truncate`):
  pre-training text (no inputs) split into row-sized chunks (`split_text`), any other example fitted to the
  row by cutting its prompt from the left (`fit_to_row`)."""
  if len(inputs) == 0:
    return [(inputs, chunk) for chunk in split_text(targets, length, with_bos)]
  return [fit_to_row(inputs, targets, length, eos_id, with_bos)]


def truncate_tokens(inputs: np.ndarray, targets: np.ndarray, inputs_length: int | None, targets_length: int | None,
                    eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Fits an example into two budgets, for decoding (training uses `fit_to_row`): inputs keep their LAST
  `inputs_length` tokens (left truncation), targets their first `targets_length - 1` tokens plus the final EOS
  (`eos_id`), so `targets_length` positions stay free after the prompt. `None` leaves a side untouched.
  """
  if inputs_length is not None:
    if inputs_length < 0:
      raise ValueError(f"inputs length must be >= 0, got {inputs_length}")
    inputs = inputs[len(inputs) - inputs_length:] if len(inputs) > inputs_length else inputs
  if targets_length is not None and len(targets) > targets_length:
    if targets_length < 1:
      raise ValueError(f"targets length must be >= 1 to hold the EOS, got {targets_length}")
    targets = np.concatenate([targets[:targets_length - 1], np.asarray([eos_id], dtype=targets.dtype)])
  return inputs, targets
