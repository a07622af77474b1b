"""The evaluation report: per-task results -> metrics.json, Markdown tables and one PNG chart per level.

Where it sits: last stage of the flow. `evaluator.py` turns a checkpoint into one `TaskResult` per (task,
shots); this module aggregates them from the catalog's labels (benchmark, category, generalization level)
and writes them. Everything here works on plain values (no JAX, no seqio), so a report can be rebuilt from
a metrics.json alone.

metrics.json (`build_report`), with `shots` keys as strings ("0", "5"):

  {"format_version": 1,
   "model":    {"label", "checkpoint", "step", "format", ...},
   "settings": {"shots": [0, 5], "levels": [...], "checkpoint_problems": [one line per step skipped], ...},
   "tasks":    {task: {"benchmark", "category", "level", "kind",
                       "shots": {"0": {"score", "metric", "metrics": {...}, "num_instances", "num_truncated",
                                       "error", "seconds", "note", "aggregated"}}}},
   "levels":     {level: {"0": AGG, ...}},
   "benchmarks": {level: {benchmark: {"0": AGG}}},
   "categories": {level: {category: {"0": AGG}}},
   "errors":   [{"task", "shots", "error"}],  (names outside the catalog and seqio: level "unknown", never
               aggregated)
   "notes":    [{"task", "shots", "note"}],  (caveats, e.g. a k-shot variant with fewer demonstrations)
   "baseline": <the baseline's report, same layout>  (only with a baseline)
   "deltas":   {"levels": ..., "benchmarks": ..., "categories": ...,  (model - baseline, same nesting; see below)
                "num_tasks": {"levels": ..., "benchmarks": ..., "categories": ...},  (tasks each delta is over)
                "metric_mismatches": [{"task", "shots", "metric", "baseline_metric"}]}}

  AGG = {"score": mean of the tasks' headline scores, "num_tasks": tasks with a score,
         "num_failed": tasks that failed, "num_truncated": prompts cut, "metrics": {name: mean over tasks},
         "chance": mean of the tasks' chance scores (`task_chance`), None when one is unknown}

A group's delta is the mean, over the (task, shots) results both sides scored with the same headline metric, of
model score - baseline score: a task failed or missing on one side, or judged by another metric there (a baseline
evaluated with another `length_normalize`: accuracy against accuracy_norm), is left out, and `num_tasks` says how
many tasks remain. A group with no such task has delta None: "n/a" in report.md. The summary shows the count beside
a delta over fewer tasks than one side scored, and report.md lists the tasks whose headline metrics differ.

report.md ends with "Checkpoints skipped" (`problems_section`) when steps of the evaluated MODEL_DIR could not
be used (partial, not committed, unreadable), one line each; `python -m optiml_jax.eval` adds the same section to
steps.md.

A task's headline `score` is the metric its kind is judged by (accuracy for rank classification, ROUGE-L for
generation; see `metrics.HEADLINE_METRICS`); aggregates are unweighted means over tasks, as the paper
averages its benchmarks. A k-shot result whose task has no demonstration to show (`aggregated` false: its
prompt is the 0-shot one) is listed with its note but left out of the k-shot aggregates, so that a k-shot mean
is over k-shot prompts only. Levels: held_out_category (1: fully held-out categories), held_out_task (2: unseen
tasks of seen categories), held_out_instances (3: held-out instances of training tasks), and "custom" for
seqio Tasks that are not in the catalog.

Chance: what guessing scores, the baseline a score is read against. A rank-classification task's is its
"chance" metric (`data/metrics.rank_classification`: the mean over instances of the options' mean score, which
is correct options / options, 1 / number of options for one answer, and for BIG-bench's graded target scores
their mean); a generation task's is 0 (ROUGE-L and exact match of an empty or
unrelated answer). Tables and charts show it when some task of the report has a "chance" metric.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

FORMAT_VERSION = 1
GENERATION = "generation"  # the kind of free-text tasks (records.GENERATION), whose chance score is 0
CHANCE = "chance"  # the metric that holds a rank-classification task's chance score
LEVELS = ("held_out_category", "held_out_task", "held_out_instances")
CUSTOM_LEVEL = "custom"
UNKNOWN_LEVEL = "unknown"  # names that are neither catalog tasks nor seqio Tasks: listed, never aggregated
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"

Report = dict[str, Any]


@dataclasses.dataclass
class TaskResult:
  """The evaluation of one task with one number of demonstrations.

  Attributes:
    task: the catalog task name (0-shot name) or the seqio Task name of a custom task.
    shots: number of demonstrations.
    benchmark, category, level, kind: the catalog's labels ("custom" for tasks outside the catalog).
    metrics: every metric the Task's metric functions returned (0-100 scale).
    metric: the name of the headline metric; `score` is its value (None when the task failed or lacks it).
    num_instances: instances evaluated.
    num_truncated: prompts longer than the context, cut from the left.
    error: why the task could not be evaluated (None when it was).
    seconds: wall time of the task.
    note: a caveat on an evaluated task (e.g. fewer demonstrations than `shots` exist).
    aggregated: whether the result counts in the aggregates (False: a k-shot variant that has no
      demonstration, whose prompt is the 0-shot one; listed per task only).
  """

  task: str
  shots: int
  benchmark: str
  category: str
  level: str
  kind: str
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  metric: str = ""
  score: float | None = None
  num_instances: int = 0
  num_truncated: int = 0
  error: str | None = None
  seconds: float = 0.0
  note: str = ""
  aggregated: bool = True


def _mean(values: Sequence[float | None]) -> float | None:
  finite = [v for v in values if v is not None and not math.isnan(v)]
  return sum(finite) / len(finite) if finite else None


def task_chance(kind: str, metrics: Mapping[str, float]) -> float | None:
  """The score of guessing on a task (see the module docstring): its "chance" metric, 0 for a generation
  task, None when unknown (e.g. a custom task judged by a metric of its own)."""
  if CHANCE in metrics:
    return metrics[CHANCE]
  return 0.0 if kind == GENERATION else None


def aggregate(results: Iterable[TaskResult]) -> dict[str, Any]:
  """AGG of a group of task results (see the module docstring)."""
  results = list(results)
  scored = [r for r in results if r.error is None and r.score is not None]
  names = sorted({k for r in scored for k in r.metrics})
  chances = [task_chance(r.kind, r.metrics) for r in scored]
  return {
      "score": _mean([r.score for r in scored]),
      "num_tasks": len(scored),
      "num_failed": sum(1 for r in results if r.error is not None),
      "num_truncated": sum(r.num_truncated for r in results),
      "metrics": {
          k: _mean([r.metrics[k] for r in scored if k in r.metrics]) for k in names
      },
      CHANCE: None if None in chances else _mean(chances),
  }


def _group(results: Sequence[TaskResult], *keys: str) -> dict[tuple[Any, ...], list[TaskResult]]:
  groups: dict[tuple[Any, ...], list[TaskResult]] = {}
  for r in results:
    groups.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
  return groups


def _level_order(level: str) -> tuple[int, str]:
  return (LEVELS.index(level) if level in LEVELS else len(LEVELS), level)


def build_report(results: Sequence[TaskResult], model: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None) -> Report:
  """The metrics.json dict of one model's results (tasks, then aggregates per level, benchmark, category)."""
  all_results = sorted(results, key=lambda r: (_level_order(r.level), r.task, r.shots))
  tasks: dict[str, Any] = {}
  for r in all_results:
    entry = tasks.setdefault(r.task, {
        "benchmark": r.benchmark,
        "category": r.category,
        "level": r.level,
        "kind": r.kind,
        "shots": {}
    })
    entry["shots"][str(r.shots)] = {
        "score": r.score,
        "metric": r.metric,
        "metrics": dict(r.metrics),
        "num_instances": r.num_instances,
        "num_truncated": r.num_truncated,
        "error": r.error,
        "seconds": round(r.seconds, 3),
        "note": r.note,
        "aggregated": r.aggregated
    }
  results = [r for r in results if r.level != UNKNOWN_LEVEL and r.aggregated]
  levels: dict[str, Any] = {}
  for (level, shots), group in _group(results, "level", "shots").items():
    levels.setdefault(level, {})[str(shots)] = aggregate(group)
  benchmarks: dict[str, Any] = {}
  for (level, benchmark, shots), group in _group(results, "level", "benchmark", "shots").items():
    benchmarks.setdefault(level, {}).setdefault(benchmark, {})[str(shots)] = aggregate(group)
  categories: dict[str, Any] = {}
  for (level, category, shots), group in _group(results, "level", "category", "shots").items():
    categories.setdefault(level, {}).setdefault(category, {})[str(shots)] = aggregate(group)
  return {
      "format_version": FORMAT_VERSION,
      "model": dict(model or {}),
      "settings": dict(settings or {}),
      "tasks": tasks,
      "levels": _sorted_levels(levels),
      "benchmarks": _sorted_levels({
          k: dict(sorted(v.items())) for k, v in benchmarks.items()
      }),
      "categories": _sorted_levels({
          k: dict(sorted(v.items())) for k, v in categories.items()
      }),
      "errors": [{
          "task": r.task,
          "shots": r.shots,
          "error": r.error
      } for r in all_results if r.error],
      "notes": [{
          "task": r.task,
          "shots": r.shots,
          "note": r.note
      } for r in all_results if r.note],
  }


def _sorted_levels(by_level: Mapping[str, Any]) -> dict[str, Any]:
  return {k: by_level[k] for k in sorted(by_level, key=_level_order)}


def _delta(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else a - b


def _counted_score(result: Mapping[str, Any] | None) -> float | None:
  """The headline score of a task result that counts in the aggregates (scored, no error, aggregated), else None."""
  if not result or result.get("error") or not result.get("aggregated", True):
    return None
  score = result.get("score")
  return None if score is None or math.isnan(score) else float(score)


def _set_nested(tree: dict[str, Any], keys: Sequence[str], value: Any) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def with_baseline(report: Report, baseline: Report) -> Report:
  """`report` plus "baseline" and "deltas": for every aggregate both have, the mean of model - baseline over the
  (task, shots) results both scored with the same headline metric, with how many tasks that is (module docstring).
  """
  base_tasks = baseline.get("tasks", {})
  diffs: dict[str, list[tuple[Mapping[str, Any], float]]] = {}  # shots -> [(task, model - baseline)]
  mismatches = []
  for name, task in report["tasks"].items():
    if task.get("level") == UNKNOWN_LEVEL:
      continue
    for shots, mine in task["shots"].items():
      theirs = base_tasks.get(name, {}).get("shots", {}).get(shots)
      a, b = _counted_score(mine), _counted_score(theirs)
      if a is None or b is None:
        continue
      if mine.get("metric") != theirs.get("metric"):
        mismatches.append({
            "task": name,
            "shots": int(shots),
            "metric": mine.get("metric"),
            "baseline_metric": theirs.get("metric")
        })
      else:
        diffs.setdefault(shots, []).append((task, a - b))

  def paired(shots: str, level: str, label: str | None, name: str | None) -> list[float]:
    return [d for task, d in diffs.get(shots, []) if task["level"] == level and (label is None or task[label] == name)]

  deltas: dict[str, Any] = {}
  counts: dict[str, Any] = {}
  for key, label in (("levels", None), ("benchmarks", "benchmark"), ("categories", "category")):
    deltas[key], counts[key] = {}, {}
    for level, by_level in report[key].items():
      theirs_level = baseline[key].get(level)
      if theirs_level is None:
        continue
      groups: list[tuple[tuple[str, ...], str | None, Mapping[str, Any], Mapping[str, Any]]]
      if label is None:
        groups = [((level,), None, by_level, theirs_level)]
      else:
        groups = [
            ((level, name), name, aggs, theirs_level[name]) for name, aggs in by_level.items() if name in theirs_level
        ]
      for path, name, mine_aggs, theirs_aggs in groups:
        for shots in mine_aggs:
          if shots in theirs_aggs:
            values = paired(shots, level, label, name)
            _set_nested(deltas[key], (*path, shots), _mean(values))
            _set_nested(counts[key], (*path, shots), len(values))
  return {
      **report,
      "baseline": {
          k: v for k, v in baseline.items() if k not in ("baseline", "deltas")
      },
      "deltas": {
          **deltas, "num_tasks": counts,
          "metric_mismatches": mismatches
      },
  }


# ---------------------------------------------------------------------------------------------------
# Markdown.


def _fmt(value: float | None) -> str:
  return "-" if value is None else f"{value:.1f}"


def _fmt_delta(value: float | None) -> str:
  return "-" if value is None else f"{value:+.1f}"


def _shots(report: Report) -> list[str]:
  keys = {s for t in report["tasks"].values() for s in t["shots"]}
  return sorted(keys, key=int)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _score_cells(mine: Mapping[str, Any] | None, theirs: Mapping[str, Any] | None, shots: Sequence[str],
                 with_base: bool) -> list[str]:
  """A task's cells per shots: its score; with a baseline, the baseline's and the delta ("n/a" where the two
  were judged by different headline metrics)."""
  cells = []
  for s in shots:
    a = (mine or {}).get(s, {}).get("score")
    if with_base:
      b = (theirs or {}).get(s, {}).get("score")
      differ = a is not None and b is not None and _metric_differs((mine or {}).get(s), (theirs or {}).get(s))
      cells += [_fmt(a), _fmt(b), "n/a" if differ else _fmt_delta(_delta(a, b))]
    else:
      cells.append(_fmt(a))
  return cells


def _metric_differs(mine: Mapping[str, Any] | None, theirs: Mapping[str, Any] | None) -> bool:
  return bool(mine and theirs and mine.get("metric") and theirs.get("metric") and mine["metric"] != theirs["metric"])


def _nested(tree: Mapping[str, Any] | None, *keys: str) -> Any:
  for key in keys:
    if not isinstance(tree, Mapping):
      return None
    tree = tree.get(key)
  return tree


def _num_tasks(aggs: Mapping[str, Any] | None, shots: str) -> int:
  return int(((aggs or {}).get(shots) or {}).get("num_tasks") or 0)


def _group_delta_cell(report: Report, path: Sequence[str], mine: Mapping[str, Any] | None,
                      theirs: Mapping[str, Any] | None, shots: str) -> tuple[str, bool]:
  """(a group's delta cell, whether it is partial): "n/a" when no task was scored by both sides with the same
  headline metric although both have a score; "+1.0 (over 2)" when the delta is over fewer tasks than a side has."""
  deltas = report.get("deltas") or {}
  delta = _nested(deltas, *path, shots)
  paired = _nested(deltas.get("num_tasks"), *path, shots)
  a, b = ((g or {}).get(shots, {}).get("score") for g in (mine, theirs))
  if delta is None:
    both = a is not None and b is not None
    return ("n/a" if both else "-"), both
  if paired is not None and paired < max(_num_tasks(mine, shots), _num_tasks(theirs, shots)):
    return f"{_fmt_delta(delta)} (over {paired})", True
  return _fmt_delta(delta), False


def shows_chance(report: Report) -> bool:
  """Whether the tables and charts show a chance column: some task has a "chance" metric."""
  return any(CHANCE in (r.get("metrics") or {}) for t in report["tasks"].values() for r in t["shots"].values())


def _group_chance(aggs: Mapping[str, Any], shots: Sequence[str]) -> float | None:
  """A group's chance score (the same for every number of shots: the instances are the same)."""
  return next((aggs[s].get(CHANCE) for s in shots if s in aggs), None)


def _task_chance_cell(task: Mapping[str, Any]) -> str:
  scored = [r for r in task["shots"].values() if r.get("score") is not None]
  return _fmt(task_chance(task["kind"], scored[0].get("metrics") or {})) if scored else "-"


def _score_header(shots: Sequence[str], with_base: bool, label: str, base_label: str) -> list[str]:
  if not with_base:
    return [f"{s}-shot" for s in shots]
  return [h for s in shots for h in (f"{label} {s}-shot", f"{base_label} {s}-shot", "Δ")]


def summary_table(report: Report) -> str:
  """Markdown: one row per level, per benchmark within it and per category within it; a column per shots
  (three per shots with a baseline: model, baseline, delta over the tasks both scored alike)."""
  return _summary(report)[0]


def _summary(report: Report) -> tuple[str, bool]:
  """(summary_table's table, whether a delta in it is over fewer tasks than a side scored, or "n/a")."""
  base = report.get("baseline")
  shots = _shots(report)
  label = report.get("model", {}).get("label") or "model"
  base_label = (base or {}).get("model", {}).get("label") or "baseline"
  chance = shows_chance(report)
  header = (["level", "group", "tasks"] + (["chance"] if chance else []) +
            _score_header(shots, base is not None, label, base_label))
  rows = []
  partial = False

  def first_cells(level: str, group: str, aggs: Mapping[str, Any], theirs: Mapping[str, Any] | None) -> list[str]:
    count = max((a["num_tasks"] for a in aggs.values()), default=0)
    cell = str(count)
    if base is not None:
      their_count = max((a["num_tasks"] for a in (theirs or {}).values()), default=0)
      cell += f" (baseline {their_count})" if their_count != count else ""
    return [level, group, cell] + ([_fmt(_group_chance(aggs, shots))] if chance else [])

  def score_cells(path: Sequence[str], mine: Mapping[str, Any], theirs: Mapping[str, Any] | None) -> list[str]:
    nonlocal partial
    if base is None:
      return [_fmt(mine.get(s, {}).get("score")) for s in shots]
    cells = []
    for s in shots:
      delta, short = _group_delta_cell(report, path, mine, theirs, s)
      partial |= short
      cells += [_fmt(mine.get(s, {}).get("score")), _fmt((theirs or {}).get(s, {}).get("score")), delta]
    return cells

  for level, aggs in report["levels"].items():
    theirs = (base or {}).get("levels", {}).get(level)
    rows.append(first_cells(level, "**all**", aggs, theirs) + score_cells(("levels", level), aggs, theirs))
    for kind, key in (("benchmark", "benchmarks"), ("category", "categories")):
      for name, group in report[key].get(level, {}).items():
        theirs = (base or {}).get(key, {}).get(level, {}).get(name)
        rows.append(
            first_cells(level, f"{kind}: {name}", group, theirs) + score_cells((key, level, name), group, theirs))
  return _table(header, rows), partial


def task_table(report: Report) -> str:
  """Markdown: one row per task with its headline metric per shots, truncated prompts and errors."""
  base = report.get("baseline")
  shots = _shots(report)
  label = report.get("model", {}).get("label") or "model"
  base_label = (base or {}).get("model", {}).get("label") or "baseline"
  chance = shows_chance(report)
  header = (["task", "level", "category", "metric"] + (["chance"] if chance else []) +
            _score_header(shots, base is not None, label, base_label) + ["truncated", "errors / notes"])
  rows = []
  for name, task in report["tasks"].items():
    theirs = (base or {}).get("tasks", {}).get(name, {}).get("shots")
    metric = next((r["metric"] for r in task["shots"].values() if r.get("metric")), "")
    other = next((t["metric"] for s, t in (theirs or {}).items() if _metric_differs(task["shots"].get(s), t)), None)
    metric += f" (baseline: {other})" if other else ""
    truncated = sum(r["num_truncated"] for r in task["shots"].values())
    errors = "; ".join(f"{s}-shot: {r.get('error') or r.get('note')}" for s, r in task["shots"].items()
                       if r.get("error") or r.get("note"))
    rows.append([name, task["level"], task["category"], metric] + ([_task_chance_cell(task)] if chance else []) +
                _score_cells(task["shots"], theirs, shots, base is not None) +
                [str(truncated), errors.replace("|", "/")])
  return _table(header, rows)


def markdown(report: Report) -> str:
  """The whole report.md: model, summary table, per-task table, truncation and errors."""
  model = report.get("model", {})
  lines = [f"# Evaluation of {model.get('label') or 'model'}: {model.get('checkpoint', '')}"]
  if model.get("step") is not None:
    lines.append(f"step {model['step']}")
  chat = report.get("settings", {}).get("chat_template")
  if chat:
    lines.append(f"prompts: each the user turn of the chat template of {chat}, answers the assistant's")
  base = report.get("baseline")
  if base:
    lines.append(f"baseline ({base.get('model', {}).get('label') or 'baseline'}): "
                 f"{base.get('model', {}).get('checkpoint', '')}")
    if (base.get("settings") or {}).get("chat_template") and not chat:
      lines.append(f"baseline prompts: in the chat template of {base['settings']['chat_template']}")
  summary, partial = _summary(report)
  lines += ["", "## Summary (mean headline score per group)", "", summary, ""]
  if partial:
    lines += [
        "Δ: the mean of model - baseline over the tasks both scored with the same headline metric; \"(over n)\": over "
        "n tasks only, fewer than a side scored (a task failed or missing on the other side, or judged there by "
        "another metric); n/a: no such task. The scores beside it are each side's mean over all its tasks.", ""
    ]
  if shows_chance(report):
    lines += [
        "chance: what guessing scores, to read each score against: on a rank-classification task the mean "
        "over instances of the options' mean score (1 / number of options for one right answer; graded "
        "BIG-bench scores averaged), on a generation task 0. A score near chance means nothing was learned "
        "there.", ""
    ]
  lines += ["## Tasks", "", task_table(report), ""]
  truncated = sum(r["num_truncated"] for t in report["tasks"].values() for r in t["shots"].values())
  lines.append(f"Prompts longer than the context, cut from the left: {truncated}.")
  mismatches = (report.get("deltas") or {}).get("metric_mismatches") or []
  if mismatches:
    lines += ["", "## Headline metrics that differ from the baseline's (not compared)", ""] + [
        f"- {m['task']} ({m['shots']}-shot): {m['metric']} here, {m['baseline_metric']} in the baseline (evaluated "
        "with other settings, e.g. length_normalize)" for m in mismatches
    ]
  if report.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n['task']} ({n['shots']}-shot): {n['note']}" for n in report["notes"]]
  if report["errors"]:
    lines += ["", "## Errors", ""] + [f"- {e['task']} ({e['shots']}-shot): {e['error']}" for e in report["errors"]]
  skipped = problems_section(report.get("settings", {}).get("checkpoint_problems") or [])
  if skipped:
    lines += ["", skipped.rstrip("\n")]
  return "\n".join(lines) + "\n"


def problems_section(problems: Sequence[str]) -> str:
  """Markdown: the checkpoints that were not evaluated (partial, uncommitted, unreadable), one line each."""
  if not problems:
    return ""
  return "\n".join(["## Checkpoints skipped", ""] + [f"- {p}" for p in problems]) + "\n"


# ---------------------------------------------------------------------------------------------------
# Charts.


def plot_level(report: Report, level: str, out_png: str | os.PathLike) -> pathlib.Path:
  """A bar chart of one level: its categories (and "all"), one bar per shots (and baseline)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  base = report.get("baseline")
  shots = _shots(report)
  groups = {"all": report["levels"][level], **report["categories"].get(level, {})}
  label = report.get("model", {}).get("label") or "model"
  series = [(f"{label} {s}-shot" if base else f"{s}-shot", {
      g: a.get(s, {}).get("score") for g, a in groups.items()
  }) for s in shots]
  if base:
    base_groups = {"all": base["levels"].get(level, {}), **base["categories"].get(level, {})}
    base_label = base.get("model", {}).get("label") or "baseline"
    series += [(f"{base_label} {s}-shot", {
        g: base_groups.get(g, {}).get(s, {}).get("score") for g in groups
    }) for s in shots]
  names = list(groups)
  width = 0.8 / max(len(series), 1)
  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.9 * len(names) * max(1, len(series))**0.5), 4.5))
  for i, (label, values) in enumerate(series):
    xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
    ys = [values.get(n) or 0.0 for n in names]
    ax.bar(xs, ys, width=width, label=label, hatch="//" if base and i >= len(shots) else None)
  if shows_chance(report):
    chances = [(j, _group_chance(groups[n], shots)) for j, n in enumerate(names)]
    known = [(j, c) for j, c in chances if c is not None]
    if known:
      ax.hlines([c for _, c in known], [j - 0.45 for j, _ in known], [j + 0.45 for j, _ in known], colors="black",
                linestyles="dashed", label="chance")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  ax.set_ylabel("mean headline score (0-100)")
  ax.set_title(f"{level} ({label})")
  ax.legend(fontsize=8)
  fig.tight_layout()
  out = pathlib.Path(out_png)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def write(report: Report, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Writes metrics.json, report.md and `<level>.png` per level into `out_dir`; returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"metrics": out / METRICS_FILE, "markdown": out / REPORT_FILE}
  tmp = out / (METRICS_FILE + ".tmp")
  tmp.write_text(
      json.dumps(_finite(report), indent=1, ensure_ascii=False, allow_nan=False, default=_json_default) + "\n",
      encoding="utf-8")
  os.replace(tmp, paths["metrics"])
  paths["markdown"].write_text(markdown(report), encoding="utf-8")
  for level, aggs in report["levels"].items():
    if any(a["score"] is not None for a in aggs.values()):  # Nothing to draw for a level whose tasks all failed.
      paths[level] = plot_level(report, level, out / f"{level}.png")
  return paths


def _finite(value: Any) -> Any:
  """NaN and infinities become null (JSON has neither)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def _json_default(value: Any) -> Any:
  if hasattr(value, "item"):
    return value.item()
  raise TypeError(f"metrics.json: cannot write {type(value).__name__} {value!r}")


def load(path: str | os.PathLike) -> Report:
  """Reads a metrics.json (or the folder holding one) written by `write`."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no evaluation report here")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  for key in ("tasks", "levels", "benchmarks", "categories"):
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
      raise ValueError(f"{path}: expected an evaluation report with a {key!r} object (metrics.json of "
                       "python -m optiml_jax.eval)")
  return data


def steps_table(reports: Mapping[int, Report]) -> str:
  """Markdown: the level scores of several checkpoints of one run, a row per step."""
  shots = sorted({s for r in reports.values() for s in _shots(r)}, key=int)
  levels = sorted({lv for r in reports.values() for lv in r["levels"]}, key=_level_order)
  header = ["step"] + [f"{lv} {s}-shot" for lv in levels for s in shots]
  rows = [[str(step)] + [_fmt(r["levels"].get(lv, {}).get(s, {}).get("score"))
                         for lv in levels
                         for s in shots]
          for step, r in sorted(reports.items())]
  return _table(header, rows)
