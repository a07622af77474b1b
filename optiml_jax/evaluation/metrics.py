"""What the evaluation reports of a Task's metrics: its finite values and the one metric it is judged by.

Where it sits: in the evaluation, after `seqio.Evaluator` has run a Task's own metric functions (attached at
registration by `data/eval_tasks.py`, defined in `data/metrics.py`) and before the report. The evaluator
keeps the finite values (`finite_metrics`) and names the headline metric (`headline_metric`), the figure the
report aggregates per category and generalization level:

  multiple-choice tasks  "accuracy" (rank classification), "accuracy_norm" with length normalisation;
  generation tasks       "rougeL", as the paper reports them;
  other Tasks            the first metric they return (a user's own registered seqio Task).

The metric functions themselves are re-exported here (`metrics.rouge_l`, `metrics.exact_match`, ...) so
`from optiml_jax.evaluation import metrics` keeps giving them; they are defined on the data side, with the
Tasks that carry them, because the registry must not import the evaluation.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from optiml_jax.data import metrics as data_metrics
from optiml_jax.data import records

# Re-exported from data/metrics.py (see the module docstring).
normalize_answer = data_metrics.normalize_answer
exact_match = data_metrics.exact_match
rouge_l_f1 = data_metrics.rouge_l_f1
rouge_l = data_metrics.rouge_l
accuracy = data_metrics.accuracy
rank_classification = data_metrics.rank_classification
rank_classification_length_normalized = data_metrics.rank_classification_length_normalized

# The metric each kind of task is judged by (the paper: accuracy for rank classification, ROUGE-L else).
HEADLINE_METRICS = {records.MULTIPLE_CHOICE: "accuracy", records.GENERATION: "rougeL"}


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
  """The values of `seqio.Evaluator`'s result for one Task that are finite numbers, as floats.

  `seqio.metrics.Scalar`s are unwrapped; NaN (a metric of an empty split), infinities and non-numeric
  values (texts, histograms) are left out.
  """
  out = {}
  for key, value in values.items():
    value = getattr(value, "value", value)  # seqio.metrics.Scalar
    try:
      value = float(np.asarray(value))
    except (TypeError, ValueError):
      continue
    if math.isfinite(value):
      out[key] = value
  return out


def headline_metric(kind: str, values: Mapping[str, float], length_normalize: bool = False) -> str:
  """The metric a task is judged by: `HEADLINE_METRICS[kind]` ("accuracy_norm" with length normalisation),
  else the first metric the Task returned ("" when it returned none)."""
  name = HEADLINE_METRICS.get(kind)
  if name == "accuracy" and length_normalize:
    name = "accuracy_norm"
  if name is not None and name in values:
    return name
  return next(iter(values), "")
