"""The evaluator: a checkpoint + the catalog's seqio Tasks -> one `report.TaskResult` per task and shots.

Where it sits: after the registry (which registered each catalog task, its k-shot variants and, for
multiple-choice tasks, the `.score_eval` rank-classification companion, all carrying their metric functions;
see `data/eval_tasks.py`) and before the report. Each task runs through `seqio.Evaluator` with the unpacked
feature converter and the model's `score_fn` / `predict_fn` from `inference.py`, so the metric values are
the Tasks' own metric functions applied to t5x-style model outputs (scores = summed target log-likelihoods,
predictions = greedy tokens); a user's own registered seqio Task is evaluated the same way ("custom").

  checkpoint --find_checkpoints (checkpoints/discovery.py)/load_checkpoint (checkpoints/loading.py)--> (config, params)
  catalog    --select_tasks--> [EvalTask]  (+ TaskResults with an error for names that cannot be evaluated)
  evaluate_tasks(tasks, inference.Scorer(...)) --> [TaskResult]  --report.build_report--> metrics.json

Failures stay local: a task that cannot be read, is empty, or fails in the model becomes a TaskResult with
`error` set and the run goes on. Prompts longer than the context are cut from the left by the inference
code and counted per task (`num_truncated`); the Tasks themselves are asked for no cut (sequence_length={}).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import pathlib
import time
from typing import Sequence

import numpy as np
import seqio

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import loading
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import eval_tasks
from optiml_jax.data import records
from optiml_jax.data import registry
from optiml_jax.evaluation import inference
from optiml_jax.evaluation import metrics as metrics_lib
from optiml_jax.evaluation import report as report_lib

EVAL_SPLIT = registry.EVAL_SPLIT
LEVEL_OF_ROLE = {
    catalog_lib.HELD_OUT_CATEGORY: "held_out_category",  # 1: categories never trained on
    catalog_lib.HELD_OUT_TASK: "held_out_task",  # 2: unseen tasks of seen categories
    catalog_lib.TRAIN: "held_out_instances",  # 3: held-out instances of training tasks
}
LEVELS = report_lib.LEVELS
CUSTOM = report_lib.CUSTOM_LEVEL
# Checkpoint discovery and loading live in checkpoints/ (discovery.py, loading.py); these names stay the
# evaluator's public API.
Checkpoint = discovery.Checkpoint
CheckpointError = discovery.CheckpointError
find_checkpoints = discovery.find_checkpoints
tokenizer_folder = discovery.tokenizer_folder
load_checkpoint = loading.load_checkpoint

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalTask:
  """One seqio Task to evaluate and its labels in the report.

  Attributes:
    task: catalog task name (0-shot), or the seqio name of a custom Task.
    shots: number of demonstrations of the variant.
    seqio_name: the Task `seqio.Evaluator` runs (`<task>[.<k>shot][.score_eval]`, or the custom name).
    benchmark, category, level, kind: labels from the catalog ("custom" outside it).
    max_instances: evaluate at most the first this many instances (None: all of the split).
    note: a caveat carried into the report (e.g. fewer demonstrations than `shots` exist).
    demonstrations: how many demonstrations the task offers its k-shot variant (None: not counted). A k-shot
      variant (k > 0) with none is its 0-shot prompt: it is evaluated and listed, but left out of the k-shot
      aggregates (`report.TaskResult.aggregated`).
  """

  task: str
  shots: int
  seqio_name: str
  benchmark: str
  category: str
  level: str
  kind: str
  max_instances: int | None = None
  note: str = ""
  demonstrations: int | None = None


def seqio_task_name(task: str, kind: str, shots: int) -> str:
  """The registered Task that evaluates a catalog task: its k-shot variant, `.score_eval` for multiple choice."""
  name = registry.variant_name(task, shots)
  return eval_tasks.score_eval_name(name) if kind == records.MULTIPLE_CHOICE else name


def _failed(task: str, shots: int, error: str, entry: catalog_lib.CatalogEntry | None = None) -> report_lib.TaskResult:
  if entry is None:
    unknown = report_lib.UNKNOWN_LEVEL
    return report_lib.TaskResult(task, shots, unknown, unknown, unknown, unknown, error=error)
  return report_lib.TaskResult(task, shots, entry.benchmark, entry.category, LEVEL_OF_ROLE[entry.role], entry.kind,
                               error=error)


def select_tasks(bench: catalog_lib.Catalog, levels: Sequence[str] = LEVELS, shots: Sequence[int] = (0,),
                 tasks: Sequence[str] | None = None, benchmarks: Sequence[str] | None = None,
                 max_instances: int | None = None) -> tuple[list[EvalTask], list[report_lib.TaskResult]]:
  """The (task, shots) pairs to evaluate, and an error result for each name that cannot be evaluated.

  Args:
    bench: the catalog.
    levels: generalization levels to include (catalog tasks outside them are left out).
    shots: numbers of demonstrations; each catalog task is evaluated once per entry.
    tasks: None for every catalog task of `levels`; else catalog task names or fnmatch patterns
      ("bigbench:*"), or names of registered seqio Tasks outside the catalog (evaluated once, as "custom").
    benchmarks: None for all, else only catalog tasks of these benchmarks.
    max_instances: cap on instances per task (None: the catalog's `num_eval_instances`).
  """
  unknown = [lv for lv in levels if lv not in LEVELS]
  if unknown:
    raise ValueError(f"unknown level(s) {unknown}; expected some of {LEVELS}")
  if max_instances is not None and max_instances < 1:
    raise ValueError(f"max_instances must be >= 1 or None, got {max_instances}")
  entries = {e.name: e for e in bench.tasks}
  chosen: list[catalog_lib.CatalogEntry] = []
  custom: list[str] = []
  failed: list[report_lib.TaskResult] = []
  if tasks is None:
    chosen = list(entries.values())
  else:
    for pattern in tasks:
      matches = [e for n, e in entries.items() if fnmatch.fnmatchcase(n, pattern)]
      if matches:
        chosen += [e for e in matches if e not in chosen]
      elif pattern in seqio.TaskRegistry.names():
        custom.append(pattern)
      else:
        failed.append(
            _failed(
                pattern, 0, f"task {pattern!r} is absent from the catalog ({len(entries)} tasks) "
                "and is not a registered seqio Task"))
  out = []
  for entry in chosen:
    level = LEVEL_OF_ROLE[entry.role]
    explicit = tasks is not None and entry.name in tasks
    if level not in levels or (benchmarks is not None and entry.benchmark not in benchmarks):
      if explicit:
        failed.append(
            _failed(entry.name, 0, f"task {entry.name} is at level {level} (benchmark "
                    f"{entry.benchmark}), which this run excludes", entry))
      continue
    if entry.kind == records.LANGUAGE_MODELING:
      if explicit:
        failed.append(
            _failed(entry.name, 0, f"task {entry.name} is plain text (kind 'lm'): nothing to "
                    "evaluate", entry))
      continue
    for k in shots:
      if entry.num_eval_instances <= 0:
        failed.append(_failed(entry.name, k, f"task {entry.name} has no evaluation instances (empty task)", entry))
        continue
      out.append(
          EvalTask(entry.name, k, seqio_task_name(entry.name, entry.kind, k), entry.benchmark, entry.category, level,
                   entry.kind, max_instances))
  for name in custom:
    out.append(EvalTask(name, 0, name, CUSTOM, CUSTOM, CUSTOM, CUSTOM, max_instances))
  return out, failed


def demonstrations_available(entry: catalog_lib.CatalogEntry, pool_size: int = registry.DEMONSTRATION_POOL_SIZE) -> int:
  """How many demonstrations the registry can draw for the task's k-shot variants (`registry.demonstration_pool`)."""
  from optiml_jax.data import sources  # pylint: disable=g-import-not-at-top
  task = sources.reopen(entry.format, entry.path, entry.benchmark)
  return sum(1 for d in registry.demonstration_pool(entry, task, pool_size) if d.targets)


def note_missing_demonstrations(specs: Sequence[EvalTask], bench: catalog_lib.Catalog,
                                pool_size: int = registry.DEMONSTRATION_POOL_SIZE) -> list[EvalTask]:
  """`specs` with a note on each k-shot catalog variant whose task offers fewer than k demonstrations, and
  the number it offers (`EvalTask.demonstrations`).

  A held-out task whose every instance is an evaluation instance, and which has no worked examples of its
  own, gets none: its k-shot variant is then the 0-shot prompt; the report says so and leaves it out of the
  k-shot means (as `reproduce`'s claim table does).
  """
  entries = {e.name: e for e in bench.tasks}
  available: dict[str, int | None] = {}
  out = []
  for spec in specs:
    entry = entries.get(spec.task)
    if spec.shots == 0 or entry is None:
      out.append(spec)
      continue
    if spec.task not in available:
      try:
        available[spec.task] = demonstrations_available(entry, pool_size)
      except (ValueError, OSError) as e:
        _LOG.warning("task %s: cannot count its demonstrations: %s", spec.task, e)
        available[spec.task] = None
    n = available[spec.task]
    if n is not None and n < spec.shots:
      note = (f"{spec.shots}-shot asked but only {n} demonstration(s) exist"
              if n else f"{spec.shots}-shot asked but no demonstration exists (every instance is an evaluation "
              "instance and the task has no worked examples): this variant is the 0-shot prompt, left out of the "
              f"{spec.shots}-shot means")
      spec = dataclasses.replace(spec, note=note)
    if n is not None:
      spec = dataclasses.replace(spec, demonstrations=n)
    out.append(spec)
  return out


def count_rows(task: seqio.Task, max_instances: int | None) -> tuple[int, int]:
  """(instances, rows) of the task's validation split, up to `max_instances` instances.

  Rank-classification rows (with an `idx` feature) count one instance per distinct idx[0]; other Tasks
  have one row per instance.
  """
  ds = task.get_dataset(sequence_length=None, split=EVAL_SPLIT, shuffle=False, num_epochs=1)
  instances = rows = 0
  last = None
  for ex in ds.as_numpy_iterator():
    key = int(np.asarray(ex["idx"]).reshape(-1)[0]) if "idx" in ex else rows
    if key != last:
      if max_instances is not None and instances >= max_instances:
        break
      instances, last = instances + 1, key
    rows += 1
  return instances, rows


def evaluate_task(spec: EvalTask, scorer: inference.ModelCalls, max_new_tokens: int = 256,
                  length_normalize: bool = False, log_dir: str | pathlib.Path | None = None,
                  step: int | None = None) -> report_lib.TaskResult:
  """Runs one Task through `seqio.Evaluator` with the scorer's score_fn and predict_fn (never raises).

  With `log_dir`, seqio's JSONLogger writes the Task's inputs, targets and predictions or scores to
  `log_dir/<seqio name>-<step>.jsonl` (and its metrics to `<seqio name>-metrics.jsonl`); step 0 for a
  checkpoint without one (a Hugging Face folder).
  """
  start = time.time()
  result = report_lib.TaskResult(spec.task, spec.shots, spec.benchmark, spec.category, spec.level, spec.kind,
                                 note=spec.note, aggregated=not (spec.shots > 0 and spec.demonstrations == 0))
  truncated_before = scorer.stats.truncated
  try:
    if spec.seqio_name not in seqio.TaskRegistry.names():
      raise ValueError(f"seqio Task {spec.seqio_name!r} is not registered (register the catalog with shots "
                       f"including {spec.shots})")
    task = seqio.TaskRegistry.get(spec.seqio_name)
    if EVAL_SPLIT not in task.splits:
      raise ValueError(f"seqio Task {spec.seqio_name} has no {EVAL_SPLIT!r} split")
    if not task.metric_fns and not task.metric_objs:
      raise ValueError(f"seqio Task {spec.seqio_name} has no metric functions")
    instances, rows = count_rows(task, spec.max_instances)
    if instances == 0:
      raise ValueError(f"task {spec.task}: the {EVAL_SPLIT!r} split of {spec.seqio_name} is empty")
    loggers: tuple[type[seqio.Logger], ...] = ()
    if log_dir is not None:
      pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
      loggers = (seqio.JSONLogger,)
    # BOS and EOS as the Task's tokenizer has them (OPT: </s> before each example; SmolLM2: none).
    # A prompt cut to fit the context keeps that BOS in front, as training rows do (formatting.fit_to_row).
    converter = inference.feature_converter(task.output_features["targets"].vocabulary)
    bos_id = converter.bos_id
    evaluator = seqio.Evaluator(spec.seqio_name, feature_converter=converter, eval_split=EVAL_SPLIT, sequence_length={},
                                num_examples=rows, use_memory_cache=True, async_compute_metrics=False,
                                logger_cls=loggers, log_dir=None if log_dir is None else str(log_dir))
    future, _ = evaluator.evaluate(compute_metrics=True, step=0 if step is None else step,
                                   score_fn=scorer.score_fn(bos_id=bos_id),
                                   predict_fn=scorer.predict_fn(max_new_tokens, bos_id=bos_id))
    values = metrics_lib.finite_metrics(future.result()[spec.seqio_name])
    result.num_instances = instances
    if not getattr(scorer, "placeholder_outputs", False):  # a requests.Recorder's outputs score nothing
      result.metrics = values
      result.metric = metrics_lib.headline_metric(spec.kind, values, length_normalize)
      result.score = values.get(result.metric)
  except (ValueError, KeyError) as e:  # Bad input: the message says what is wrong.
    _LOG.warning("task %s (%d-shot) failed: %s", spec.task, spec.shots, e)
    result.error = f"{type(e).__name__}: {e}"
  except Exception as e:  # pylint: disable=broad-except  One task must not end the run.
    _LOG.exception("task %s (%d-shot) failed", spec.task, spec.shots)
    result.error = f"{type(e).__name__}: {e}"
  result.num_truncated = scorer.stats.truncated - truncated_before
  result.seconds = time.time() - start
  return result


def evaluate_tasks(specs: Sequence[EvalTask], scorer: inference.ModelCalls, max_new_tokens: int = 256,
                   length_normalize: bool = False, log_dir: str | pathlib.Path | None = None,
                   step: int | None = None) -> list[report_lib.TaskResult]:
  """`evaluate_task` for each spec, logging one line per task."""
  results = []
  for i, spec in enumerate(specs):
    result = evaluate_task(spec, scorer, max_new_tokens, length_normalize, log_dir, step)
    if result.error:
      status = f"failed: {result.error}"
    else:
      status = f"{result.metric} = {result.score:.2f}" if result.score is not None else "no score"
      if getattr(scorer, "placeholder_outputs", False):
        status = f"{result.num_instances} instance(s) recorded"
    _LOG.info("[%d/%d] %s (%d-shot, %s): %s", i + 1, len(specs), spec.task, spec.shots, spec.level, status)
    results.append(result)
  return results
