"""BIG-bench reader: JSON tasks (`<task>/task.json`) -> `records.TaskSource`.

Where it sits: first stage of the data flow, beside the other readers; the catalog assigns roles.

Task fields read (BIG-bench 1.0 JSON task format; defaults are BIG-bench's own):
  examples                 required, non-empty. Each has "input" and either "target_scores" (multiple
                           choice: {choice: finite score}) or "target" (generation: a string or a list of
                           references). A per-example "task_prefix" is put before that example's input.
  task_prefix              -> `definition` (text shown before the examples); without it the task's
                           "description" is the definition.
  example_input_prefix     default "\\nQ: "; example_output_prefix default "\\nA: "; choice_prefix default
  append_choices_to_input  "\\n  choice: "; append_choices_to_input default true (bool or "true"/"false").
  keywords                 -> `categories`.
Instance input = [example task_prefix] + input prefix + input [+ choice prefix + each choice] + output
prefix, with the surrounding whitespace stripped (formatting adds the delimiter: none after "A:").
Multiple choice: `options` are the choices in a fixed pseudo-random order seeded by (task, example index)
(BIG-bench also shuffles them, so the answer's position carries no signal) and `targets` are the choice(s)
with the highest score: several when scores tie (BIG-bench's multiple_choice_grade gives the top score to any
of them). `targets[0]`, the training target, is BIG-bench's own target: the example's "target" when it names
one of the best choices (geometric_shapes: "circle" of the tied circle/ellipse), else the first best choice
in "target_scores" order; the other best choices follow in option order. `option_scores` are the choices'
scores in option order, as given (graded ones kept: 0.69 "joy" / 0.28 "anticipation" in
emojis_emotion_prediction, 0.5 / 0.9 in swedish_to_german_proverbs), so that rank classification credits the
picked choice with its score as BIG-bench's multiple_choice_grade does (`data/metrics.rank_classification`).
Choices and references lose their surrounding whitespace (the formatter joins the target with one space of
its own; gre_reading_comprehension has choices that start with a space); choices equal after that are one
choice with the higher score. An empty reference is dropped, and so is an empty choice as a reference (it stays
an option). An example left with no reference is dropped: a generation example whose every reference is empty
(physics_questions has an example with an empty input and target), a multiple-choice one whose top score only
empty choices hold; ids of the others do not change. The task's kind is
"multiple_choice" when every example has "target_scores", else "generation". Instance id: the example's
"_id" if any, else `<task>-<index>`.

Task names: the folder of `task.json`; a subtask of a composite task (its parent folder has a task.json
too) is `<parent>:<subtask>` and its dataset is the parent. A composite's own task.json (a folder whose
subfolders hold task.json files) describes no examples and is not read. `iter_tasks` accepts the folder of
task folders, a BIG-bench checkout or the installed package (it descends into `bigbench/benchmark_tasks`).
Programmatic tasks (`task.py`, no task.json) are not JSON tasks and are not listed.

One task.json is parsed and validated by `read_task` (errors name the field and example index); each
`open_instances()` call parses it again.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import random
from typing import Any, Iterator

from optiml_jax.data import records
from optiml_jax.data.sources import jsonl

FORMAT = "bigbench"
BENCHMARK = "bigbench"
TASK_FILE = "task.json"
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "


def task_names(path: pathlib.Path) -> tuple[str, str]:
  """(local name, dataset) of the task whose task.json is `path`."""
  folder = path.parent
  if (folder.parent / TASK_FILE).is_file():
    return f"{folder.parent.name}:{folder.name}", folder.parent.name
  return folder.name, folder.name


def _flag(task: dict[str, Any], field: str, default: bool, path: str) -> bool:
  value = task.get(field, default)
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lower() in ("true", "false"):
    return value.strip().lower() == "true"
  raise records.SourceError(path, f"field '{field}': expected true or false, got {value!r}")


def _prefix(task: dict[str, Any], field: str, default: str, path: str) -> str:
  value = task.get(field, default)
  if value is None:
    return default
  return jsonl.as_text(value, path, f"field '{field}'")


def _scores(value: Any, path: str, where: str) -> dict[str, float]:
  if not isinstance(value, dict) or not value:
    raise records.SourceError(path, f"{where}.target_scores: expected a non-empty object {{choice: score}}")
  scores: dict[str, float] = {}
  for choice, score in value.items():
    if isinstance(score, bool) or not isinstance(score, (int, float)):
      raise records.SourceError(path, f"{where}.target_scores[{choice!r}]: expected a number, got {score!r}")
    try:
      number = float(score)
    except OverflowError:  # an integer too large for a float
      number = math.inf
    if not math.isfinite(number):  # json reads NaN and Infinity: no best choice, or a NaN graded credit
      raise records.SourceError(path, f"{where}.target_scores[{choice!r}]: expected a finite number, got {score!r:.40}")
    text = choice.strip()
    scores[text] = max(number, scores.get(text, number))
  return scores


def _shuffled(choices: list[str], local_name: str, index: int) -> list[str]:
  order = sorted(choices)
  random.Random(f"{local_name}:{index}").shuffle(order)
  return order


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """How a task renders an example (BIG-bench's task-level fields, defaults applied)."""

  input_prefix: str = DEFAULT_INPUT_PREFIX
  output_prefix: str = DEFAULT_OUTPUT_PREFIX
  choice_prefix: str = DEFAULT_CHOICE_PREFIX
  append_choices: bool = True


def prompt_format(task: dict[str, Any], path: str) -> PromptFormat:
  """The task's prompt fields, validated."""
  return PromptFormat(
      input_prefix=_prefix(task, "example_input_prefix", DEFAULT_INPUT_PREFIX, path),
      output_prefix=_prefix(task, "example_output_prefix", DEFAULT_OUTPUT_PREFIX, path),
      choice_prefix=_prefix(task, "choice_prefix", DEFAULT_CHOICE_PREFIX, path),
      append_choices=_flag(task, "append_choices_to_input", True, path),
  )


def _best_choices(scores: dict[str, float], options: tuple[str, ...], own_targets: tuple[str, ...]) -> tuple[str, ...]:
  """The non-empty choices with the highest score, BIG-bench's own target first (see the module docstring); ()
  when only empty choices hold it."""
  best = max(scores.values())
  top = [c for c, s in scores.items() if s == best and c]
  if not top:
    return ()
  first = next((t for t in own_targets if t in top), top[0])
  return (first,) + tuple(o for o in options if o in top and o != first)


def _instance(example: Any, index: int, fmt: PromptFormat, path: str, local_name: str) -> records.Instance | None:
  """One example -> Instance; None for an example without a non-empty reference."""
  where = f"examples[{index}]"
  if not isinstance(example, dict):
    raise records.SourceError(path, f"{where}: expected an object, got {type(example).__name__}")
  text = jsonl.as_text(jsonl.required(example, "input", path, where), path, f"{where}.input")
  options: tuple[str, ...] = ()
  option_scores: tuple[float, ...] = ()
  if "target_scores" in example:
    scores = _scores(example["target_scores"], path, where)
    options = tuple(_shuffled(list(scores), local_name, index))
    own = example.get("target")
    own_targets = () if own is None else tuple(
        t.strip() for t in jsonl.as_text_list(own, path, f"{where}.target", allow_empty=True))
    targets = _best_choices(scores, options, own_targets)
    if not targets:
      return None
    option_scores = tuple(scores[o] for o in options)
  elif "target" in example:
    targets = tuple(t.strip() for t in jsonl.as_text_list(example["target"], path, f"{where}.target"))
    targets = tuple(t for t in targets if t)
    if not targets:
      return None
  else:
    raise records.SourceError(path, f"{where}: missing required field 'target' or 'target_scores'")
  if options and fmt.append_choices:
    text += fmt.choice_prefix + fmt.choice_prefix.join(options)
  example_prefix = jsonl.as_text(example.get("task_prefix", ""), path, f"{where}.task_prefix")
  text = example_prefix + fmt.input_prefix + text + fmt.output_prefix
  instance_id = jsonl.as_text(example["_id"], path, f"{where}._id") if "_id" in example else f"{local_name}-{index}"
  return records.Instance(id=instance_id, input=text.strip(), targets=targets, options=options,
                          option_scores=option_scores)


def _stream(path: str, local_name: str) -> Iterator[records.Instance]:
  task = jsonl.load_json(path)
  fmt = prompt_format(task, path)
  for index, example in enumerate(jsonl.required_list(task, "examples", path, "task", "example")):
    instance = _instance(example, index, fmt, path, local_name)
    if instance is not None:
      yield instance


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK) -> records.TaskSource:
  """Reads and validates one BIG-bench `task.json` (see the module docstring).

  Raises:
    records.SourceError: not UTF-8 or not JSON, or a required field is missing or malformed.
  """
  path_obj = pathlib.Path(path)
  path = str(path)
  local_name, dataset = task_names(path_obj)
  task = jsonl.load_json(path)
  examples = jsonl.required_list(task, "examples", path, "task", "example")
  fmt = prompt_format(task, path)
  # Validates every example now; streamed again later.
  if all([_instance(example, index, fmt, path, local_name) is None for index, example in enumerate(examples)]):
    raise records.SourceError(path, "field 'examples': no example has a non-empty target")
  multiple_choice = all(isinstance(e, dict) and "target_scores" in e for e in examples)
  definition = _prefix(task, "task_prefix", "", path).strip() or _prefix(task, "description", "", path).strip()
  keywords = task.get("keywords", [])
  categories = jsonl.as_text_list(keywords, path, "field 'keywords'", allow_empty=True) if keywords else ()
  return records.TaskSource(
      name=records.task_name(benchmark, local_name),
      benchmark=benchmark,
      dataset=dataset,
      categories=categories,
      definition=definition,
      demonstrations=(),
      path=path,
      kind=records.MULTIPLE_CHOICE if multiple_choice else records.GENERATION,
      open_instances=lambda: _stream(path, local_name),
      format=FORMAT,
  )


def tasks_root(bigbench_dir: str | os.PathLike) -> pathlib.Path:
  """The folder of task folders: `bigbench/benchmark_tasks` or `benchmark_tasks` inside, else the folder."""
  root = pathlib.Path(bigbench_dir)
  for inner in (root / "bigbench" / "benchmark_tasks", root / "benchmark_tasks"):
    if inner.is_dir():
      return inner
  return root


def task_files(bigbench_dir: str | os.PathLike) -> list[pathlib.Path]:
  """Every JSON task's task.json (tasks and subtasks of composites), sorted by path.

  Raises:
    FileNotFoundError: the folder does not exist.
  """
  root = tasks_root(bigbench_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"BIG-bench folder not found: {root} (expected <task>/task.json folders)")
  found = sorted(set(root.glob(f"*/{TASK_FILE}")) | set(root.glob(f"*/*/{TASK_FILE}")))
  return [p for p in found if not any(p.parent.glob(f"*/{TASK_FILE}"))]


def iter_tasks(bigbench_dir: str | os.PathLike,
               benchmark: str = BENCHMARK) -> Iterator[records.TaskSource | records.Skipped]:
  """Every JSON task under `bigbench_dir`, in path order; malformed files -> `records.Skipped`."""
  return jsonl.iter_task_files(task_files(bigbench_dir), lambda p: read_task(p, benchmark))
