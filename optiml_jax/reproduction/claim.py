"""The claim of `python -m optiml_jax.reproduce`: which tasks it evaluates, and the base-vs-tuned table.

Where it sits: under the `reproduce` entry point, over the bench's catalog (`data/catalog.py`) and the evaluation's
reports (`evaluation/report.py`); pure functions of those (and of seqio's inference logs, read from a folder), so
the table can be rebuilt from any pair of reports. `pick_tasks` spreads each generalization level's evaluated tasks
over its kinds, categories and benchmarks; `claim_table` means each level and kind of task over the tasks both
models scored, with the base also in its own chat template where it was evaluated so; `first_answer_report` scores
generation again on each prediction's first answer, which tells the answer format learned from the content.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Collection, Mapping, Sequence

from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import formatting
from optiml_jax.evaluation import report as report_lib

LEVELS = report_lib.LEVELS
# The claim table's rows per level: the headline metric of each kind of task, and generation scored again on
# each prediction's first answer (`first_answer`), which tells the answer format learned (stopping where the
# answer ends) from the answers' content.
FIRST_ANSWER = "generation_first_answer"
ROWS = {"generation": "ROUGE-L", FIRST_ANSWER: "ROUGE-L, first answer", "multiple_choice": "accuracy"}


def pick_tasks(bench_catalog: catalog_lib.Catalog, per_level: int) -> dict[str, list[str]]:
  """Up to `per_level` tasks of each generalization level, spread over its kinds, categories and benchmarks.

  The claim is read per level and kind of task (ROUGE-L for generation, accuracy for multiple choice), so the
  kinds take turns (generation first); within a kind, its categories take turns (sorted by name); within a
  category, its benchmarks take turns (sorted), each benchmark's tasks in name order. A level thus covers both
  kinds whenever it has both, and as many categories and benchmarks as it can: with 3 tasks, two generation
  tasks of two categories and one multiple-choice task, rather than the first three categories' BIG-bench tasks.
  Only tasks with evaluation instances count. Deterministic. ValueError when `per_level` is not positive.

  Level 2 is held-out tasks of categories that are trained on, so a held-out task counts only when a training
  task of the mixture (rate > 0) has its category: in a sample of the sources, many of SNI's test tasks and
  BIG-bench's tasks are of categories no training task has (Cause Effect Classification, Answerability
  Classification in ../shared/data), which would measure level 1 under level 2's name. Likewise level 3 counts
  only training tasks the mixture draws.
  """
  if per_level < 1:  # a slice [:0] would evaluate nothing, and [:-1] all tasks but one
    raise ValueError(f"pick_tasks: per_level must be positive, got {per_level}")
  trained = {e.category for e in bench_catalog.tasks if e.role == catalog_lib.TRAIN and e.rate > 0}
  by_level: dict[str, dict[str, dict[str, dict[str, list[str]]]]] = {level: {} for level in LEVELS}
  for entry in bench_catalog.tasks:
    level = _level_of(entry.role)
    if (level == "held_out_task" and entry.category not in trained) or (level == "held_out_instances" and
                                                                        entry.rate <= 0):
      continue  # a category no training task has; a training task the mixture never draws
    if level in by_level and entry.num_eval_instances > 0:
      categories = by_level[level].setdefault(entry.kind, {})
      categories.setdefault(entry.category, {}).setdefault(entry.benchmark, []).append(entry.name)
  picked = {}
  for level, kinds in by_level.items():
    streams = []
    for _, categories in sorted(kinds.items()):
      by_benchmark = [
          [sorted(names) for _, names in sorted(benchmarks.items())] for _, benchmarks in sorted(categories.items())
      ]
      streams.append(_round_robin([_round_robin(queues) for queues in by_benchmark]))
    picked[level] = _round_robin(streams)[:per_level]
  return picked


def task_names(tasks: Mapping[str, Sequence[str]]) -> list[str]:
  """The picked tasks (`pick_tasks`) in one list, level by level."""
  return [name for level in LEVELS for name in tasks.get(level, ())]


def _round_robin(queues: Sequence[Sequence[str]]) -> list[str]:
  """The queues' items taken one from each queue in turn: [[a1, a2], [b1]] -> [a1, b1, a2]."""
  out: list[str] = []
  for i in range(max((len(q) for q in queues), default=0)):
    out.extend(q[i] for q in queues if i < len(q))
  return out


def _level_of(role: str) -> str | None:
  return {
      catalog_lib.HELD_OUT_CATEGORY: "held_out_category",
      catalog_lib.HELD_OUT_TASK: "held_out_task",
      catalog_lib.TRAIN: "held_out_instances"
  }.get(role)


def claim_table(report: Mapping[str, Any], without_demonstrations: Collection[str] = (),
                chat: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Per level and kind of task (ROUGE-L for generation, accuracy for multiple choice) and per shots: the mean
  score of the base model (the report's baseline) and of the tuned one over the tasks both scored, and the
  difference. {level: {kind: {shots: {"base", "tuned", "delta", "tasks"}}}}. The k-shot (k > 0) scores of the
  tasks in `without_demonstrations` are left out: their k-shot prompt is the 0-shot one.

  `chat`: the base model's report in its own chat template (`reproduce.CHAT_DIR`); a cell whose every task it scored
  also gets "chat" (its mean over the same tasks) and "delta_chat" (tuned minus it)."""
  base_tasks = (report.get("baseline") or {}).get("tasks", {})
  chat_tasks = (chat or {}).get("tasks", {})
  table: dict[str, Any] = {}
  for level in LEVELS:
    for kind in ROWS:
      for name, task in report.get("tasks", {}).items():
        if task.get("level") != level or task.get("kind") != kind or name not in base_tasks:
          continue
        for shots, tuned in task["shots"].items():
          if shots != "0" and name in without_demonstrations:
            continue
          base = base_tasks[name]["shots"].get(shots)
          if tuned.get("score") is None or not base or base.get("score") is None:
            continue
          cell = table.setdefault(level, {}).setdefault(kind, {}).setdefault(shots, {
              "base": [],
              "tuned": [],
              "chat": []
          })
          cell["base"].append(base["score"])
          cell["tuned"].append(tuned["score"])
          cell["chat"].append((chat_tasks.get(name, {}).get("shots", {}).get(shots) or {}).get("score"))
  for kinds in table.values():
    for cells in kinds.values():
      for shots, cell in cells.items():
        base, tuned = sum(cell["base"]) / len(cell["base"]), sum(cell["tuned"]) / len(cell["tuned"])
        cells[shots] = {"base": base, "tuned": tuned, "delta": tuned - base, "tasks": len(cell["tuned"])}
        if cell["chat"] and None not in cell["chat"]:
          in_chat = sum(cell["chat"]) / len(cell["chat"])
          cells[shots].update(chat=in_chat, delta_chat=tuned - in_chat)
  return table


def claim_markdown(table: Mapping[str, Any], shots: Sequence[str] = ("0", "5")) -> str:
  """The claim table as markdown: one row per level and metric, base / tuned / delta per shots; with the base's
  chat-template scores (`claim_table`'s "chat"), also "base, chat" and the tuned model's delta against it. The
  metric's brackets count the tasks: "(2)", or "(2; 5-shot 1)" when the 5-shot cells cover fewer."""
  with_chat = any("chat" in c for kinds in table.values() for cells in kinds.values() for c in cells.values())
  columns = (("base", "base"), ("chat", "base, chat"), ("tuned", "tuned"), ("delta", "Δ"),
             ("delta_chat", "Δ chat")) if with_chat else (("base", "base"), ("tuned", "tuned"), ("delta", "Δ"))
  header = ["level", "metric (tasks)"] + [f"{title} {k}-shot" for k in shots for _, title in columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for level in LEVELS:
    for kind, metric in ROWS.items():
      cells = table.get(level, {}).get(kind)
      if not cells:
        continue
      row = [level, f"{metric} ({_task_counts(cells, shots)})"]
      for k in shots:
        c = cells.get(k) or {}
        row += [("-" if c.get(key) is None else f"{c[key]:{'+' if key.startswith('delta') else ''}.1f}")
                for key, _ in columns]
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _task_counts(cells: Mapping[str, Any], shots: Sequence[str]) -> str:
  """A row's task counts: "2" when every shots' cell covers as many tasks, else the first shots' count and each
  other that differs, "2; 5-shot 1" (the 5-shot cells leave out the tasks without demonstrations)."""
  counts = [(k, cells[k]["tasks"]) for k in shots if k in cells]
  if not counts:
    return str(max(c["tasks"] for c in cells.values()))
  first = counts[0][1]
  return str(first) + "".join(f"; {k}-shot {n}" for k, n in counts[1:] if n != first)


def first_answer(prediction: str) -> str:
  """`prediction` up to its first blank line: the answer without what a model writes after it (a chat model
  given a few-shot prompt often goes on with the next example's input and answer)."""
  return prediction.split(formatting.BLOCK_SEPARATOR, 1)[0]


def first_answer_report(report: Mapping[str, Any], read_log: Callable[[str, str, str], list[dict] | None],
                        chat: Mapping[str, Any] | None = None) -> dict:
  """`report` (base as "baseline") reduced to its generation tasks, each scored again as ROUGE-L of its greedy
  predictions cut by `first_answer`, with kind FIRST_ANSWER, so that `claim_table` makes a row of them; with
  `chat` (the base's chat-template report), also "chat", the same for it.

  read_log(side, task, shots): the inference log records ({"prediction", "target"}) of that task and shots
  for side "tuned", "base" or "chat", or None when there is none (the cell is then left out, as a failed task's).
  """

  from optiml_jax.data import metrics as metrics_lib  # pylint: disable=g-import-not-at-top  (rouge_score: only here)

  def rescored(tasks: Mapping[str, Any], side: str) -> dict[str, Any]:
    out = {}
    for name, task in tasks.items():
      if task.get("kind") != "generation":
        continue
      shots = {}
      for k in task.get("shots", {}):
        records = read_log(side, name, k)
        score = None
        if records:
          references = [r["target"] for r in records]
          predictions = [first_answer(metrics_lib.as_text(r["prediction"])) for r in records]
          score = metrics_lib.rouge_l(references, predictions)["rougeL"]
        shots[k] = {"score": score}
      out[name] = {**task, "kind": FIRST_ANSWER, "shots": shots}
    return out

  rescored_report = {
      "tasks": rescored(report.get("tasks", {}), "tuned"),
      "baseline": {
          "tasks": rescored((report.get("baseline") or {}).get("tasks", {}), "base")
      }
  }
  if chat is not None:
    rescored_report["chat"] = {"tasks": rescored(chat.get("tasks", {}), "chat")}
  return rescored_report


def read_inference_log(inferences_dir: str | os.PathLike, seqio_name: str) -> list[dict] | None:
  """The records seqio's JSONLogger wrote for Task `seqio_name` (`<name>-<step>.jsonl`; the latest step), or
  None when it wrote none."""
  paths = sorted(glob.glob(os.path.join(glob.escape(str(inferences_dir)), glob.escape(seqio_name) + "-[0-9]*.jsonl")))
  if not paths:
    return None
  with open(paths[-1], encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
