"""Our registered seqio Tasks and Mixtures for t5x's entry points: registration from gin, and evaluation.

Where it sits: on the t5x path, between `data/registry.py` (one seqio Task per catalog task) and t5x's
`train`, `eval` and `infer`, which look tasks up by name; t5x evaluates a Task with `seqio.Evaluator`, and
only when it has metric functions. The metrics are the ones the registry attaches (`data/eval_tasks.py`,
`data/metrics.py`), so `t5x.eval` and `python -m optiml_jax.eval` report the same figures. Needs seqio, not t5x.

  registered(catalog_dir, name)       registers the catalog's Tasks and Mixtures (once per catalog, shots and
                                      vocabulary) and returns `name`; gin binds MIXTURE_OR_TASK_NAME to it.
                                      `vocabulary` is the model's (gin/t5x/models/*.gin: VOCABULARY), so the
                                      tasks tokenize with the model's own tokenizer; None: OPT's.
  rank_classification_task(task)      `<task>.score_eval`: one row per answer candidate (targets = the
                                      candidate), scored by t5x's `score_batch`; "accuracy" takes the
                                      candidate with the highest log-likelihood per instance and credits
                                      its row's `option_score` (1 / 0, or a BIG-bench choice's graded score).
  generation_task(task)               `<task>.gen`: "rougeL" and "exact_match" on t5x's greedy
                                      `predict_batch`, best over the references, in percent.
  eval_mixture(catalog_dir, ...)      registers the catalog and a Mixture of those (by task or role) for one
                                      `t5x.eval` or `t5x.infer` run.

Rank classification, a worked example (options "red", "blue"; reference "blue"; EOS the tokenizer's, OPT's </s>):
  instance 0  ->  {inputs, targets: tokens(" red") + EOS, idx: [0, 0], is_correct: False, option_score: 0.0}
                  {inputs, targets: tokens(" blue") + EOS, idx: [0, 1], is_correct: True, option_score: 1.0}
  scores [-4.1, -2.3] -> option 1 wins -> correct.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import seqio
import tensorflow as tf

from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import eval_tasks
from optiml_jax.data import records
from optiml_jax.data import registry

GENERATION_SUFFIX = ".gen"
EVAL_MIXTURE = "optiml_t5x_eval"
# catalog folder -> (shots, vocabulary, what registration returned): the Tasks now in seqio's registry.
_REGISTERED_CATALOGS: dict[str, tuple[tuple[int, ...], Any, registry.Registered]] = {}

# ----------------------------------------------------------------------------------------------------------
# Registration.
# ----------------------------------------------------------------------------------------------------------


def registered(catalog_dir: str, name: str | None = registry.TRAIN_MIXTURE, shots: Sequence[int] = (0,),
               vocabulary: seqio.Vocabulary | None = None) -> str | None:
  """Registers the catalog's Tasks and Mixtures and returns `name` (None: registration only). The tasks tokenize
  with `vocabulary`, the model's (None: OPT's). A catalog is registered again only for another vocabulary or
  for shots not registered yet.

  Raises:
    ValueError: `name` is not a Task or Mixture once the catalog is registered (lists the mixtures).
  """
  path = os.path.abspath(os.fspath(catalog_dir))
  wanted = tuple(sorted({int(k) for k in shots}))
  last = _REGISTERED_CATALOGS.get(path)
  if last is None or last[1] != vocabulary or not set(wanted) <= set(last[0]):
    # Another vocabulary replaces the catalog's Tasks (same names); more shots add to them.
    if last is not None and last[1] == vocabulary:
      wanted = tuple(sorted(set(wanted) | set(last[0])))
    registered_now = registry.register_catalog(catalog_dir, vocabulary=vocabulary, shots=wanted)
    _REGISTERED_CATALOGS[path] = (wanted, vocabulary, registered_now)
  if name is not None and name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    raise ValueError(f"{name!r} is neither a Task nor a Mixture after registering the catalog {catalog_dir} "
                     f"(its mixtures: {list(_REGISTERED_CATALOGS[path][2].mixtures)})")
  return name


def _base_task(task_name: str) -> seqio.Task:
  if task_name not in seqio.TaskRegistry.names():
    raise ValueError(f"task {task_name!r} is not registered (register the catalog first: `registered(...)`)")
  task = seqio.TaskRegistry.get(task_name)
  if registry.EVAL_SPLIT not in task.splits:
    raise ValueError(f"task {task_name!r} has no {registry.EVAL_SPLIT!r} split (no evaluation instances)")
  return task


def rank_classification_task(task_name: str) -> str:
  """Registers (or replaces) the rank-classification companion of a multiple-choice Task and returns its
  name, `<task_name>.score_eval` (`data.eval_tasks.register_score_eval_task`: one row per candidate,
  metrics "accuracy" and "accuracy_norm" from t5x's `score_batch`).

  Raises:
    ValueError: the task is not registered, has no evaluation split or is not multiple-choice.
  """
  task = _base_task(task_name)
  entry = registry.registered_entry(task_name)
  if entry.kind != records.MULTIPLE_CHOICE:
    raise ValueError(f"task {task_name!r} is {entry.kind!r}, not {records.MULTIPLE_CHOICE!r}: it has no "
                     "answer candidates to rank (use generation_task)")
  companion = eval_tasks.register_score_eval_task(task)
  if companion is None:  # what _base_task checks first: None only without an evaluation split
    raise ValueError(f"task {task_name!r} has no {registry.EVAL_SPLIT!r} split (no evaluation instances)")
  return companion.name


def generation_task(task_name: str) -> str:
  """Registers (or replaces) `<task_name>.gen`: the Task without its ragged `options` feature (t5x.infer
  batches every feature with `padded_batch`, which takes no ragged tensors), with the generation metrics
  ("rougeL" and "exact_match" on t5x's greedy `predict_batch`, best over the references). Returns its name.
  Its prompts keep their last TASK_FEATURE_LENGTHS["inputs"] tokens, so the "targets" length stays free for
  decoding (`eval_tasks.truncate_for_decoding`; the row's split matters here, not in training). The base Task's
  row fit (`registry.truncate`) is left out: it would cut the prompt further for a reference longer than the
  "targets" length, so the model's input would depend on the answer.

  Raises:
    ValueError: the task is not registered or has no evaluation split.
  """
  task = _base_task(task_name)
  name = task_name + GENERATION_SUFFIX
  preprocessors = [p for p in task.preprocessors if p is not registry.truncate]
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=task.source, output_features=task.output_features,
                         preprocessors=[*preprocessors, drop_ragged_options,
                                        eval_tasks.truncate_for_decoding], shuffle_buffer_size=task.shuffle_buffer_size,
                         **eval_tasks.task_metric_args(records.GENERATION))
  return name


def drop_ragged_options(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """seqio preprocessor: every feature but `options` (answer candidates as ragged token ids)."""
  return dataset.map(lambda ex: {k: v for k, v in ex.items() if k != "options"})


def eval_mixture(catalog_dir: str, name: str = EVAL_MIXTURE, tasks: Sequence[str] | None = None,
                 roles: Sequence[str] = catalog_lib.ROLES, shots: int = 0, rank_multiple_choice: bool = True,
                 vocabulary: seqio.Vocabulary | None = None) -> str:
  """Registers the catalog, then a Mixture `name` of evaluation Tasks for one `t5x.eval` or `t5x.infer` run;
  returns `name`. Multiple-choice tasks enter as `rank_classification_task` (scored; decoded like the others
  when `rank_multiple_choice` is False, e.g. for `t5x.infer`), the others as `generation_task` (decoded);
  `lm` tasks and tasks without evaluation instances are left out.

  Args:
    catalog_dir: the bench catalog.
    name: the mixture's name.
    tasks: catalog task names (0-shot names); None takes every task whose role is in `roles`.
    roles: catalog roles to take when `tasks` is None (e.g. ("held_out_category",) for level 1).
    shots: evaluate the `<task>.<k>shot` variants (registered with the catalog).
    rank_multiple_choice: score multiple-choice tasks by rank classification (else decode them).
    vocabulary: the model's, which the tasks tokenize with (None: OPT's).

  Raises:
    ValueError: an unknown task or role, or nothing left to evaluate.
  """
  unknown_roles = sorted(set(roles) - set(catalog_lib.ROLES))
  if unknown_roles:
    raise ValueError(f"eval mixture {name!r}: unknown roles {unknown_roles} "
                     f"(expected some of {catalog_lib.ROLES})")
  registered(catalog_dir, name=None, shots=sorted({0, shots}), vocabulary=vocabulary)
  bench = {e.name: e for e in catalog_lib.load(catalog_dir).tasks}
  if tasks is None:
    chosen = [e for e in bench.values() if e.role in roles]
  else:
    missing = [t for t in tasks if t not in bench]
    if missing:
      raise ValueError(f"eval mixture {name!r}: tasks {missing} are not in the catalog {catalog_dir}")
    chosen = [bench[t] for t in tasks]
  members = []
  for entry in chosen:
    if entry.num_eval_instances <= 0 or entry.kind == records.LANGUAGE_MODELING:
      continue
    variant = registry.variant_name(entry.name, shots)
    if entry.kind == records.MULTIPLE_CHOICE and rank_multiple_choice:
      members.append(rank_classification_task(variant))
    else:
      members.append(generation_task(variant))
  if not members:
    raise ValueError(f"eval mixture {name!r}: no task with evaluation instances among {len(chosen)} chosen "
                     f"(roles {list(roles)})")
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, [(m, 1.0) for m in sorted(members)])
  return name
