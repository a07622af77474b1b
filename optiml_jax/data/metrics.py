"""Metric functions of the catalog's seqio Tasks: SNI's ROUGE-L and exact match, and rank classification.

Where it sits: on the data side, with the Task definitions. `data/eval_tasks.py` attaches these functions to
the Tasks that `data/registry.py` registers, so any `seqio.Evaluator` (the evaluator's in
`evaluation/evaluator.py`, or t5x's) computes them from a model's outputs; `evaluation/metrics.py` re-exports
them and picks the one a task is judged by. Imports no JAX, TensorFlow or seqio.

  generation tasks       `rouge_l` and `exact_match` on the greedy decoding, against every reference of the
                         instance (the maximum over references), as Super-NaturalInstructions computes them;
  multiple-choice tasks  `rank_classification` over one log-likelihood per answer candidate (t5x's `score_fn`:
                         the sum over target tokens), the argmax per instance credited with its option's score
                         (graded: BIG-bench's multiple_choice_grade; else 1 when correct, 0 when not);
                         `rank_classification_length_normalized` divides each by the option's token count.

Conventions are seqio's: `fn(targets, predictions)` or `fn(targets, scores)` returning a dict of floats, on a
0-100 scale.

Formulas (checked by hand in tests/data/test_metrics.py):
  exact_match  100 * mean_i max_r [normalize(prediction_i) == normalize(reference_ir)], where normalize
               lower-cases, deletes ASCII punctuation and collapses white space (SQuAD's rule without the
               article removal, as in SNI);
  rougeL       100 * mean_i max_r ROUGE-L F1(reference_ir, prediction_i), `rouge_score` with the Porter
               stemmer and its default tokenizer (lower-cased [a-z0-9] words: text in other scripts has no
               tokens and scores 0, like SNI without its cross-lingual tokenizer); an empty prediction or
               reference scores 0;
  accuracy     100 * mean_i [target_i == prediction_i];
  rank classification "accuracy"  100 * sum_i w_i score_i(argmax_j loglik_ij) / sum_i w_i, where score_i(j) is
               option j's graded score when the instance has graded scores (BIG-bench's `target_scores`, e.g.
               0.69 / 0.28 / 0 for emojis_emotion_prediction's choices: BIG-bench's multiple_choice_grade, x100),
               else 1 for a reference and 0 for any other option (plain accuracy); w_i the instance weight (1);
               "chance" the same with the mean of score_i over the options in place of the argmax's.
"""

from __future__ import annotations

import functools
import itertools
import math
import string
from typing import Any, Sequence

import numpy as np
from rouge_score import rouge_scorer

_PUNCTUATION = frozenset(string.punctuation)


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
    raw = [target] if isinstance(target, (str, bytes)) else list(target)
    refs = [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in raw]
    if not refs:
      raise ValueError(f"metrics: target {i} has no reference string; expected at least one")
    out.append(refs)
  return out


def as_text(value: Any) -> str:
  """A str as is; bytes (what seqio gives from tf.string features) decoded as UTF-8."""
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
  hits = [
      max(float(normalize_answer(as_text(p)) == normalize_answer(r))
          for r in refs)
      for refs, p in zip(references, predictions)
  ]
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
  best = [max(rouge_l_f1(r, as_text(p)) for r in refs) for refs, p in zip(references, predictions)]
  return {"rougeL": 100.0 * float(np.mean(best))}


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """100 * the fraction of predictions equal to their target (no normalisation)."""
  if len(targets) != len(predictions):
    raise ValueError(f"accuracy: {len(targets)} targets but {len(predictions)} predictions")
  if not targets:
    return {"accuracy": float("nan")}
  return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


RankTarget = tuple[Sequence[int], bool, float, int] | tuple[Sequence[int], bool, float, int, float]


def rank_classification(targets: Sequence[RankTarget], scores: Sequence[float],
                        normalize_by_target_length: bool = False) -> dict[str, float]:
  """Accuracy of rank classification over candidate rows (t5's `rank_classification` convention), with the
  graded credit of BIG-bench's multiple_choice_grade where options carry scores.

  Args:
    targets: one tuple per candidate row, from `rank_classification_postprocessor`: (idx = (instance index,
      option index), is_correct, weight, number of target tokens, option score). The option score is what
      picking the option earns: its graded score (BIG-bench's `target_scores`), else 1.0 when it is correct and
      0.0 when not; a 4-tuple without it earns 1.0 or 0.0 by `is_correct`.
    scores: the log-likelihood of each row's target given its inputs (seqio score_fn output).
    normalize_by_target_length: divide each score by its number of target tokens first.

  Returns:
    {"accuracy": 100 * the weighted mean over instances of the option score of the best-scoring option} (key
    "accuracy_norm" when normalised): without graded scores the weighted fraction of instances whose best option
    is correct (an instance with several correct options is right when any of them wins); with them BIG-bench's
    multiple_choice_grade x100 (e.g. 28 for picking "anticipation", scored 0.28, over "joy", 0.69). Exact ties
    go to the first option in the instance's option order (BIG-bench breaks them pseudo-randomly; the BIG-bench
    reader's options are already in a seeded random order). Without normalisation also "chance": 100 * the
    weighted mean over instances of the mean option score (correct options / options when ungraded), the
    expected score of a uniform guess (the report's chance baseline); only once, as seqio refuses a key that two
    metric functions of a Task both return. A NaN log-likelihood is refused (ValueError naming the row): argmax
    would pick it, and a diverged model would score as its first options do. -inf ranks last, as it should.
  """
  if len(targets) != len(scores):
    raise ValueError(f"rank_classification: {len(targets)} targets but {len(scores)} scores")
  key = "accuracy_norm" if normalize_by_target_length else "accuracy"
  chance_key = () if normalize_by_target_length else ("chance",)
  if not targets:
    return {k: float("nan") for k in (key, *chance_key)}
  rows = []  # (idx, option score, weight, log-likelihood)
  for target, score in zip(targets, scores):
    if len(target) not in (4, 5):
      raise ValueError(f"rank_classification: target {target!r} should be (idx, is_correct, weight, length, "
                       "option score)")
    idx, is_correct, weight, length = target[:4]
    credit = float(target[4]) if len(target) == 5 else float(bool(is_correct))
    score = float(np.asarray(score))
    if math.isnan(score):  # np.argmax would pick it: a diverged model would score as its first options
      raise ValueError(f"rank_classification: row {tuple(idx)} has a NaN log-likelihood; the model's scores are "
                       "not numbers (diverged weights, or a dtype that overflows)")
    if normalize_by_target_length:
      if length <= 0:
        raise ValueError(f"rank_classification: row {tuple(idx)} has {length} target tokens; expected > 0")
      score /= length
    rows.append(((int(idx[0]), int(idx[1])), credit, float(weight), score))
  rows.sort(key=lambda r: r[0])
  earned = total = chance = 0.0
  for _, grouped in itertools.groupby(rows, key=lambda r: r[0][0]):
    group = list(grouped)
    best = int(np.argmax([r[3] for r in group]))  # the first of equal maxima
    earned += group[best][1] * group[best][2]
    total += group[best][2]
    chance += group[best][2] * sum(r[1] for r in group) / len(group)
  if not total:
    return {k: float("nan") for k in (key, *chance_key)}
  return {key: 100.0 * earned / total, **{k: 100.0 * chance / total for k in chance_key}}


def rank_classification_length_normalized(targets: Sequence[RankTarget], scores: Sequence[float]) -> dict[str, float]:
  """`rank_classification` with each log-likelihood divided by its option's token count ("accuracy_norm"); the
  picked option earns its score (graded or 1 / 0) as there."""
  return rank_classification(targets, scores, normalize_by_target_length=True)
