"""Metric functions of the evaluation, and the seqio glue that attaches them to the catalog's Tasks.

Where it sits: the registry (`data/registry.py`) attaches these functions to every catalog Task when it
registers it, so `seqio.Evaluator` (ours in `evaluator.py`, or t5x's) computes them from the model's outputs:

  generation tasks       predict metrics `rouge_l` and `exact_match` on the greedy decoding, against every
                         reference of the instance (the maximum over references), as Super-NaturalInstructions
                         computes them;
  multiple-choice tasks  a companion Task `<name>.score_eval` (split "validation" only) expands each instance
                         into one row per answer candidate (t5's rank-classification convention: features
                         `idx` = [instance, option], `inputs`, `targets` = the option's tokens, `is_correct`);
                         the score metric `rank_classification` takes the log-likelihood of every row (what
                         t5x's `score_fn` returns: the sum over target tokens) and scores the argmax per
                         instance, as accuracy; `rank_classification_length_normalized` divides each
                         log-likelihood by the option's token count first.

Metric functions follow seqio's conventions: `fn(targets, predictions)` or `fn(targets, scores)` returning a
dict of floats, on a 0-100 scale. The module imports no JAX: it is data-side code.

Formulas (checked by hand in tests/evaluation/test_metrics.py):
  exact_match  100 * mean_i max_r [normalize(prediction_i) == normalize(reference_ir)], where normalize
               lower-cases, deletes ASCII punctuation and collapses white space (SQuAD's rule without the
               article removal, as in SNI);
  rougeL       100 * mean_i max_r ROUGE-L F1(reference_ir, prediction_i), `rouge_score` with the Porter
               stemmer and its default tokenizer (lower-cased [a-z0-9] words: text in other scripts has no
               tokens and scores 0, like SNI without its cross-lingual tokenizer); an empty prediction or
               reference scores 0;
  accuracy     100 * mean_i [target_i == prediction_i].
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from typing import Any, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
from rouge_score import rouge_scorer

SCORE_EVAL_SUFFIX = ".score_eval"
EVAL_SPLIT = "validation"

_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------------------------------
# Metric functions.


def normalize_answer(text: str) -> str:
  """Lower-cases, removes ASCII punctuation and collapses white space (SNI's exact-match normalisation)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(text.split())


def _reference_lists(targets: Sequence[Any], predictions: Sequence[Any]) -> list[list[str]]:
  """Each target as a non-empty list of reference strings; checks the lengths agree."""
  if len(targets) != len(predictions):
    raise ValueError(f"metrics: {len(targets)} targets but {len(predictions)} predictions; expected one "
                     "prediction per target")
  out = []
  for i, target in enumerate(targets):
    refs = [target] if isinstance(target, (str, bytes)) else list(target)
    refs = [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in refs]
    if not refs:
      raise ValueError(f"metrics: target {i} has no reference string; expected at least one")
    out.append(refs)
  return out


def _as_text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def exact_match(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SNI exact match: 100 * the fraction of predictions equal to some reference after `normalize_answer`.

  Args:
    targets: one reference string, or a list of references, per example.
    predictions: one string per example.
  """
  references = _reference_lists(targets, predictions)
  if not references:
    return {"exact_match": float("nan")}
  hits = [max(float(normalize_answer(_as_text(p)) == normalize_answer(r)) for r in refs)
          for refs, p in zip(references, predictions)]
  return {"exact_match": 100.0 * float(np.mean(hits))}


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_f1(reference: str, prediction: str) -> float:
  """ROUGE-L F-measure of one prediction against one reference (0..1), `rouge_score` with stemming."""
  return _rouge_l_scorer().score(target=reference, prediction=prediction)["rougeL"].fmeasure


def rouge_l(targets: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, float]:
  """SNI ROUGE-L: 100 * mean over examples of the best ROUGE-L F-measure over the example's references."""
  references = _reference_lists(targets, predictions)
  if not references:
    return {"rougeL": float("nan")}
  best = [max(rouge_l_f1(r, _as_text(p)) for r in refs) for refs, p in zip(references, predictions)]
  return {"rougeL": 100.0 * float(np.mean(best))}


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """100 * the fraction of predictions equal to their target (no normalisation)."""
  if len(targets) != len(predictions):
    raise ValueError(f"accuracy: {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return {"accuracy": float("nan")}
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def rank_classification(targets: Sequence[tuple[Sequence[int], bool, float, int]], scores: Sequence[float],
                        normalize_by_target_length: bool = False) -> dict[str, float]:
  """Accuracy of rank classification over candidate rows (t5's `rank_classification` convention).

  Args:
    targets: one tuple per candidate row, from `rank_classification_postprocessor`: (idx = (instance index,
      option index), is_correct, weight, number of target tokens).
    scores: the log-likelihood of each row's target given its inputs (seqio score_fn output).
    normalize_by_target_length: divide each score by its number of target tokens first.

  Returns:
    {"accuracy": 100 * weighted fraction of instances whose best-scoring option is correct} (key
    "accuracy_norm" when normalised). Ties go to the first option; an instance with several correct
    options counts as right when any of them wins.
  """
  if len(targets) != len(scores):
    raise ValueError(f"rank_classification: {len(targets)} targets but {len(scores)} scores")
  key = "accuracy_norm" if normalize_by_target_length else "accuracy"
  if not targets:
    return {key: float("nan")}
  rows = []
  for target, score in zip(targets, scores):
    if len(target) != 4:
      raise ValueError(f"rank_classification: target {target!r} should be (idx, is_correct, weight, length)")
    idx, is_correct, weight, length = target
    score = float(np.asarray(score))
    if normalize_by_target_length:
      if length <= 0:
        raise ValueError(f"rank_classification: row {tuple(idx)} has {length} target tokens; expected > 0")
      score /= length
    rows.append(((int(idx[0]), int(idx[1])), bool(is_correct), float(weight), score))
  rows.sort(key=lambda r: r[0])
  correct = total = 0.0
  for _, group in itertools.groupby(rows, key=lambda r: r[0][0]):
    group = list(group)
    best = int(np.argmax([r[3] for r in group]))
    correct += group[best][1] * group[best][2]
    total += group[best][2]
  return {key: 100.0 * correct / total if total else float("nan")}


def rank_classification_length_normalized(targets: Sequence[tuple[Sequence[int], bool, float, int]],
                                          scores: Sequence[float]) -> dict[str, float]:
  """`rank_classification` with each log-likelihood divided by its option's token count ("accuracy_norm")."""
  return rank_classification(targets, scores, normalize_by_target_length=True)


# ---------------------------------------------------------------------------------------------------
# SeqIO glue: postprocessors, the rank-classification preprocessor and Task arguments per kind.


def references_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                             is_target: bool = False) -> Any:
  """Task postprocess_fn of generation tasks: targets -> every reference; predictions -> stripped text."""
  if is_target:
    if example is not None and "references" in example:
      return [_as_text(r) for r in np.asarray(example["references"]).reshape(-1)] or [""]
    return [_as_text(output)]
  return _as_text(output).strip()


def rank_classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                      is_target: bool = False) -> Any:
  """Task postprocess_fn of `.score_eval` tasks: a target becomes (idx, is_correct, weight, target length)."""
  if not is_target:
    return output
  if example is None or "idx" not in example:
    raise ValueError("rank_classification_postprocessor: the example has no 'idx'; expected rows of "
                     "`rank_classification_examples`")
  weight = float(example["weight"]) if "weight" in example else 1.0
  return (tuple(int(i) for i in np.asarray(example["idx"]).reshape(-1)), bool(example["is_correct"]), weight,
          int(np.asarray(example["targets"]).size))


def rank_classification_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: one row per answer candidate of each instance (registry features in, t5 rows out).

  Input examples carry `inputs`, `options` (ragged token ids), `options_pretokenized` and `references`;
  each becomes len(options) rows with `idx` = [instance index, option index], the same `inputs`, `targets` =
  the option's tokens, `targets_pretokenized` = the option's text and `is_correct` = whether the option is
  one of the references. Rows of an instance are consecutive, in option order.
  """

  def expand(index, ex):
    options = ex["options"]
    texts = ex["options_pretokenized"]

    def row(j):
      j = tf.cast(j, tf.int32)
      out = {
          "idx": tf.stack([tf.cast(index, tf.int32), j]),
          "inputs": ex["inputs"],
          "targets": options[j],
          "targets_pretokenized": texts[j],
          "is_correct": tf.reduce_any(tf.equal(texts[j], ex["references"])),
      }
      for key in ("inputs_pretokenized", "instance_id"):
        if key in ex:
          out[key] = ex[key]
      return out

    return tf.data.Dataset.range(tf.cast(tf.shape(texts)[0], tf.int64)).map(row)

  return dataset.enumerate().flat_map(expand)


GENERATION_METRIC_FNS = (rouge_l, exact_match)
RANK_METRIC_FNS = (rank_classification, rank_classification_length_normalized)


def task_metric_args(kind: str) -> dict[str, Any]:
  """`metric_fns` and `postprocess_fn` for `seqio.TaskRegistry.add` of a catalog Task of this kind.

  Generation tasks get the predict metrics; multiple-choice and `lm` tasks none (multiple-choice ones are
  scored through their `.score_eval` companion, see `register_score_eval_task`).
  """
  if kind == "generation":
    return {"metric_fns": list(GENERATION_METRIC_FNS), "postprocess_fn": references_postprocessor}
  return {}


def score_eval_name(task_name: str) -> str:
  """The rank-classification companion of a Task: `<name>.score_eval`."""
  return task_name + SCORE_EVAL_SUFFIX


def register_score_eval_task(task: seqio.Task) -> seqio.Task | None:
  """Registers (or replaces) `<task>.score_eval`: the task's validation split as rank-classification rows.

  Same source and output features; `rank_classification_examples` runs before the task's own
  preprocessors (so inputs are cut from the left as usual); the score metrics are attached. Returns None
  when the task has no validation split.
  """
  if EVAL_SPLIT not in task.splits:
    return None
  name = score_eval_name(task.name)
  source = task.source
  num = getattr(source, "num_input_examples", None)
  splits = {EVAL_SPLIT: num(EVAL_SPLIT) if callable(num) else None}
  companion_source = seqio.FunctionDataSource(
      dataset_fn=functools.partial(_validation_only, source=source), splits=tuple(splits))
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=companion_source, output_features=task.output_features,
      preprocessors=[rank_classification_examples, *task.preprocessors],
      metric_fns=list(RANK_METRIC_FNS), postprocess_fn=rank_classification_postprocessor,
      shuffle_buffer_size=task.shuffle_buffer_size)


def _validation_only(split: str, shuffle_files: bool, seed: int | None = None, *,
                     source: seqio.DataSource) -> tf.data.Dataset:
  if split != EVAL_SPLIT:
    raise ValueError(f"a .score_eval task has only the {EVAL_SPLIT!r} split, not {split!r}")
  return source.get_dataset(split=split, shuffle=shuffle_files, seed=seed)
