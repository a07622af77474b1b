"""Tests of optiml_jax.data.eval_tasks: rank-classification rows, postprocessors, the `.score_eval` companion."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from optiml_jax.data import eval_tasks
from optiml_jax.data import metrics


def _mc_dataset(graded=False):
  """Two registry-style multiple-choice examples: 2 and 3 options, one and two references; `graded`: with the
  registry's `options_scores` feature, empty for the first (ungraded) and graded for the second."""
  examples = [
      {
          "inputs": [5, 6, 7],
          "options": [[11, 2], [12, 13, 2]],
          "options_pretokenized": ["yes", "no way"],
          "references": ["no way"],
          "inputs_pretokenized": "Q1"
      },
      {
          "inputs": [8],
          "options": [[21, 2], [22, 2], [23, 2]],
          "options_pretokenized": ["a", "b", "c"],
          "references": ["c", "a"],
          "inputs_pretokenized": "Q2"
      },
  ]
  signature = {
      "inputs": tf.TensorSpec([None], tf.int32),
      "options": tf.RaggedTensorSpec([None, None], tf.int32),
      "options_pretokenized": tf.TensorSpec([None], tf.string),
      "references": tf.TensorSpec([None], tf.string),
      "inputs_pretokenized": tf.TensorSpec([], tf.string),
  }

  if graded:
    examples[0]["options_scores"] = np.zeros(0, np.float32)
    examples[1]["options_scores"] = np.asarray([0.9, 0.25, 1.0], np.float32)  # "c" is the top choice, "a" 0.9
    signature["options_scores"] = tf.TensorSpec([None], tf.float32)

  def generate():
    for ex in examples:
      yield dict(ex, options=tf.ragged.constant(ex["options"], dtype=tf.int32))

  return tf.data.Dataset.from_generator(generate, output_signature=signature)


def test_rank_classification_examples_expand_options_in_order_and_mark_the_correct_ones():
  rows = list(eval_tasks.rank_classification_examples(_mc_dataset()).as_numpy_iterator())
  assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
  assert [r["targets"].tolist() for r in rows] == [[11, 2], [12, 13, 2], [21, 2], [22, 2], [23, 2]]
  assert [r["inputs"].tolist() for r in rows] == [[5, 6, 7]] * 2 + [[8]] * 3
  assert [bool(r["is_correct"]) for r in rows] == [False, True, True, False, True]
  assert [r["targets_pretokenized"] for r in rows] == [b"yes", b"no way", b"a", b"b", b"c"]
  # Without graded scores a row earns 1.0 when correct, else 0.0.
  assert [float(r["option_score"]) for r in rows] == [0.0, 1.0, 1.0, 0.0, 1.0]
  assert eval_tasks.rank_classification_postprocessor("ignored", example=rows[1],
                                                      is_target=True) == ((0, 1), True, 1.0, 3, 1.0)
  assert eval_tasks.rank_classification_postprocessor("ignored", example=rows[0],
                                                      is_target=True) == ((0, 0), False, 1.0, 2, 0.0)
  assert eval_tasks.rank_classification_postprocessor(-1.5, example=rows[1], is_target=False) == -1.5


def test_rank_classification_rows_carry_the_graded_score_of_their_option():
  rows = list(eval_tasks.rank_classification_examples(_mc_dataset(graded=True)).as_numpy_iterator())
  assert [tuple(r["idx"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
  # Instance 0 has no graded scores (empty feature): 1.0 / 0.0 by is_correct. Instance 1: each option's own score.
  assert [bool(r["is_correct"]) for r in rows] == [False, True, True, False, True]
  assert [float(r["option_score"]) for r in rows] == pytest.approx([0.0, 1.0, 0.9, 0.25, 1.0])
  targets = [eval_tasks.rank_classification_postprocessor(None, example=r, is_target=True) for r in rows]
  assert targets[3] == ((1, 1), False, 1.0, 2, pytest.approx(0.25))
  # Through the metric: instance 0 picks its right option (1.0), instance 1 picks "b" (0.25): (1 + 0.25) / 2.
  result = metrics.rank_classification(targets, [-5.0, -1.0, -3.0, -2.0, -4.0])
  assert result["accuracy"] == pytest.approx(100 * (1.0 + 0.25) / 2)


def test_references_postprocessor_returns_every_reference_and_strips_predictions():
  example = {"references": np.asarray([b"first", b"second"], dtype=object)}
  assert eval_tasks.references_postprocessor(b"first", example=example, is_target=True) == ["first", "second"]
  assert eval_tasks.references_postprocessor("  predicted text\n", example=example) == "predicted text"


def test_score_eval_companion_task_and_metric_args_by_kind():
  source = seqio.FunctionDataSource(dataset_fn=lambda split, shuffle_files: _mc_dataset(), splits=("validation",),
                                    num_input_examples={"validation": 2})
  vocab = seqio.PassThroughVocabulary(size=100, eos_id=2)
  features = {
      "inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)
  }
  seqio.TaskRegistry.remove("test_eval_tasks:mc")
  task = seqio.TaskRegistry.add("test_eval_tasks:mc", source=source, output_features=features, preprocessors=[])
  companion = eval_tasks.register_score_eval_task(task)
  assert companion.name == "test_eval_tasks:mc.score_eval" == eval_tasks.score_eval_name(task.name)
  assert [f.__name__ for f in companion.score_metric_fns
         ] == ["rank_classification", "rank_classification_length_normalized"]
  rows = list(companion.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  assert len(rows) == 5 and tuple(rows[-1]["idx"]) == (1, 2)
  assert eval_tasks.task_metric_args("generation")["metric_fns"] == [metrics.rouge_l, metrics.exact_match]
  assert eval_tasks.task_metric_args("multiple_choice") == {} and eval_tasks.task_metric_args("lm") == {}
