"""SeqIO glue of the evaluation Tasks: metric arguments per kind and the rank-classification companion Task.

Where it sits: on the data side, beside the registry. `data/registry.py` (and `interop/t5x_tasks.py`) call it
when they register a catalog Task, so every Task carries the metric functions of its kind (`data/metrics.py`)
and every multiple-choice Task gets its companion; the evaluator (`evaluation/evaluator.py`) and t5x's
`eval` then only run `seqio.Evaluator` on Tasks by name. Nothing here imports evaluation or JAX.

  generation tasks       `task_metric_args("generation")`: metric_fns `rouge_l` and `exact_match`, with
                         `references_postprocessor` (targets -> every reference; predictions -> stripped text);
  multiple-choice tasks  a companion Task `<name>.score_eval` (`register_score_eval_task`; split "validation"
                         only) expands each instance into one row per answer candidate (the rank-classification
                         convention: features `idx` = [instance, option], `inputs`, `targets` = the option's
                         tokens, `is_correct`, and `option_score`: what picking the option earns, its graded
                         score from the registry's `options_scores` (BIG-bench) or else 1.0 / 0.0 by
                         `is_correct`), with the score metrics `rank_classification` and
                         `rank_classification_length_normalized` (the picked option's `option_score`, averaged:
                         accuracy, or BIG-bench's multiple_choice_grade with graded options);
  `lm` tasks             no metrics (plain text is trained on, never evaluated);
  decoded Tasks          `truncate_for_decoding` (t5x's `.gen` Tasks, `interop/t5x_tasks.py`): the prompt cut
                         to the "inputs" length so that the "targets" length is left for decoding.

A worked example (options "red", "blue"; reference "blue"):
  instance 0  ->  {inputs, targets: BPE(" red") + </s>,  idx: [0, 0], is_correct: False, option_score: 0.0}
                  {inputs, targets: BPE(" blue") + </s>, idx: [0, 1], is_correct: True,  option_score: 1.0}
  scores [-4.1, -2.3] -> option 1 wins -> correct (earns 1.0). With graded options (BIG-bench's target_scores
  "red": 0.4, "blue": 1.0) the rows' option_score are 0.4 and 1.0, and a pick of "red" earns 0.4.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
import seqio
import tensorflow as tf

from optiml_jax.data import metrics
from optiml_jax.data import packing
from optiml_jax.data import records

SCORE_EVAL_SUFFIX = ".score_eval"
EVAL_SPLIT = "validation"  # the held-out instances of every Task (the registry's split name)


def references_postprocessor(output: Any, example: Mapping[str, Any] | None = None, is_target: bool = False) -> Any:
  """Task postprocess_fn of generation tasks: targets -> every reference; predictions -> stripped text."""
  if is_target:
    if example is not None and "references" in example:
      return [metrics.as_text(r) for r in np.asarray(example["references"]).reshape(-1)] or [""]
    return [metrics.as_text(output)]
  return metrics.as_text(output).strip()


def rank_classification_postprocessor(output: Any, example: Mapping[str, Any] | None = None,
                                      is_target: bool = False) -> Any:
  """Task postprocess_fn of `.score_eval` tasks: a target becomes (idx, is_correct, weight, target length, option
  score); a row without an `option_score` feature earns 1.0 when correct, else 0.0."""
  if not is_target:
    return output
  if example is None or "idx" not in example:
    raise ValueError("rank_classification_postprocessor: the example has no 'idx'; expected rows of "
                     "`rank_classification_examples`")
  weight = float(example["weight"]) if "weight" in example else 1.0
  is_correct = bool(example["is_correct"])
  score = float(example["option_score"]) if "option_score" in example else float(is_correct)
  return (tuple(int(i) for i in np.asarray(example["idx"]).reshape(-1)), is_correct, weight,
          int(np.asarray(example["targets"]).size), score)


def rank_classification_examples(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: one row per answer candidate of each instance (registry features in, t5 rows out).

  Input examples carry `inputs`, `options` (ragged token ids), `options_pretokenized` and `references`, and
  optionally `options_scores` (one graded score per option, or none); each becomes len(options) rows with
  `idx` = [instance index, option index], the same `inputs`, `targets` = the option's tokens,
  `targets_pretokenized` = the option's text, `is_correct` = whether the option is one of the references and
  `option_score` (float32) = the option's graded score, or 1.0 / 0.0 by `is_correct` when the instance has none.
  Rows of an instance are consecutive, in option order.
  """

  def expand(index, ex):
    options = ex["options"]
    texts = ex["options_pretokenized"]
    graded = ex.get("options_scores")

    def row(j):
      j = tf.cast(j, tf.int32)
      is_correct = tf.reduce_any(tf.equal(texts[j], ex["references"]))
      ungraded = tf.cast(is_correct, tf.float32)
      if graded is None:
        score = ungraded
      else:
        score = tf.cond(tf.size(graded) > 0, lambda: tf.cast(tf.gather(graded, j), tf.float32), lambda: ungraded)
      out = {
          "idx": tf.stack([tf.cast(index, tf.int32), j]),
          "inputs": ex["inputs"],
          "targets": options[j],
          "targets_pretokenized": texts[j],
          "is_correct": is_correct,
          "option_score": score,
      }
      for key in ("inputs_pretokenized", "instance_id"):
        if key in ex:
          out[key] = ex[key]
      return out

    return tf.data.Dataset.range(tf.cast(tf.shape(texts)[0], tf.int64)).map(row)

  return dataset.enumerate().flat_map(expand)


def truncate_for_decoding(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None,
                          output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """seqio preprocessor of Tasks that are decoded from (t5x's `predict_batch`, which generates into the rest of
  the prompt's row): the prompt keeps its last sequence_length["inputs"] tokens, so that
  sequence_length["targets"] positions stay free for the generated tokens, and the reference target its first
  sequence_length["targets"] - 1 tokens and the EOS (`formatting.truncate_tokens`). Training and scoring
  fit a whole example to the row instead (`registry.truncate`), where the split does not matter; here it is
  the decoding budget. No-op without lengths."""
  if not sequence_length:
    return dataset
  eos = output_features["targets"].vocabulary.eos_id
  return dataset.map(
      lambda ex: packing.truncate_tf(ex, sequence_length.get("inputs"), sequence_length.get("targets"), eos),
      num_parallel_calls=tf.data.AUTOTUNE)


GENERATION_METRIC_FNS = (metrics.rouge_l, metrics.exact_match)
RANK_METRIC_FNS = (metrics.rank_classification, metrics.rank_classification_length_normalized)


def task_metric_args(kind: str) -> dict[str, Any]:
  """`metric_fns` and `postprocess_fn` for `seqio.TaskRegistry.add` of a catalog Task of this kind.

  Generation tasks get the predict metrics; multiple-choice and `lm` tasks none (multiple-choice ones are
  scored through their `.score_eval` companion, see `register_score_eval_task`).
  """
  if kind == records.GENERATION:
    return {"metric_fns": list(GENERATION_METRIC_FNS), "postprocess_fn": references_postprocessor}
  return {}


def score_eval_name(task_name: str) -> str:
  """The rank-classification companion of a Task: `<name>.score_eval`."""
  return task_name + SCORE_EVAL_SUFFIX


def register_score_eval_task(task: seqio.Task) -> seqio.Task | None:
  """Registers (or replaces) `<task>.score_eval`: the task's validation split as rank-classification rows.

  Same source, output features and Task class; `rank_classification_examples` runs before the task's own
  preprocessors, so with a sequence length each row (prompt + one option) is fitted to the row as training
  examples are: the option kept whole, the prompt cut from the left (`registry.truncate`). The score metrics
  are attached. Returns None when the task has no validation split.
  """
  if EVAL_SPLIT not in task.splits:
    return None
  name = score_eval_name(task.name)
  source = task.source
  num = getattr(source, "num_input_examples", None)
  splits = {EVAL_SPLIT: num(EVAL_SPLIT) if callable(num) else None}
  companion_source = seqio.FunctionDataSource(dataset_fn=functools.partial(_validation_only, source=source),
                                              splits=tuple(splits))
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=companion_source, output_features=task.output_features,
                                task_cls=type(task), preprocessors=[rank_classification_examples, *task.preprocessors],
                                metric_fns=list(RANK_METRIC_FNS), postprocess_fn=rank_classification_postprocessor,
                                shuffle_buffer_size=task.shuffle_buffer_size)


def _validation_only(split: str, shuffle_files: bool, seed: int | None = None, *,
                     source: seqio.DataSource) -> tf.data.Dataset:
  if split != EVAL_SPLIT:
    raise ValueError(f"a .score_eval task has only the {EVAL_SPLIT!r} split, not {split!r}")
  return source.get_dataset(split=split, shuffle=shuffle_files, seed=seed)
