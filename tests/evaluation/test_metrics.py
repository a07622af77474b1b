"""Tests of optiml_jax.evaluation.metrics: the headline metric of a task and the values the report keeps."""

import numpy as np
import pytest
import seqio

from optiml_jax.data import metrics as data_metrics
from optiml_jax.evaluation import metrics


def test_headline_metric_by_kind_with_length_normalization_and_custom_tasks():
  values = {"accuracy": 50.0, "accuracy_norm": 75.0}
  assert metrics.headline_metric("multiple_choice", values) == "accuracy"
  assert metrics.headline_metric("multiple_choice", values, length_normalize=True) == "accuracy_norm"
  assert metrics.headline_metric("generation", {"exact_match": 10.0, "rougeL": 30.0}) == "rougeL"
  # A custom Task's own metrics: the first one it returned; none at all: "".
  assert metrics.headline_metric("custom", {"bleu": 12.0, "chrf": 40.0}) == "bleu"
  assert metrics.headline_metric("generation", {"exact_match": 10.0}) == "exact_match"
  assert metrics.headline_metric("generation", {}) == ""


def test_finite_metrics_unwraps_scalars_and_drops_the_rest():
  values = {
      "accuracy": seqio.metrics.Scalar(62.5),
      "rougeL": np.float32(12.5),
      "n": 3,
      "empty": float("nan"),
      "inf": float("inf"),
      "text": seqio.metrics.Text("a sample"),
      "name": "x"
  }
  assert metrics.finite_metrics(values) == {"accuracy": 62.5, "rougeL": 12.5, "n": 3.0}


def test_the_metric_functions_stay_importable_from_the_evaluation():
  # `from optiml_jax.evaluation import metrics; metrics.rouge_l(...)` keeps working: the same functions the
  # registry attaches to the Tasks (defined in data/metrics.py).
  for name in ("rouge_l", "exact_match", "accuracy", "rank_classification", "rank_classification_length_normalized",
               "normalize_answer", "rouge_l_f1"):
    assert getattr(metrics, name) is getattr(data_metrics, name), name
  assert metrics.rouge_l(["a b"], ["a b"]) == {"rougeL": pytest.approx(100.0)}
