"""Tests of optiml_jax.evaluation.report: aggregation by level, benchmark and category, Markdown, charts."""

import json

import pytest

from optiml_jax.evaluation import report
from optiml_jax.evaluation.report import TaskResult


def _results(offset=0.0):
  """Five tasks at three levels, two shots; one failed task and truncated prompts."""
  rows = []
  for shots, bonus in ((0, 0.0), (5, 10.0)):
    rows += [
        TaskResult("sni:te1", shots, "sni", "Textual Entailment", "held_out_category", "generation", {
            "rougeL": 40.0 + bonus + offset,
            "exact_match": 20.0
        }, "rougeL", 40.0 + bonus + offset, num_instances=100, num_truncated=2),
        TaskResult("bigbench:te2", shots, "bigbench", "Textual Entailment", "held_out_category", "multiple_choice", {
            "accuracy": 60.0 + bonus + offset,
            "accuracy_norm": 55.0
        }, "accuracy", 60.0 + bonus + offset, num_instances=50),
        TaskResult("bigbench:cr", shots, "bigbench", "Coreference Resolution", "held_out_category", "multiple_choice",
                   {"accuracy": 30.0 + offset}, "accuracy", 30.0 + offset, num_instances=50),
        TaskResult("sni:qa", shots, "sni", "Question Answering", "held_out_task", "generation",
                   {"rougeL": 70.0 + offset}, "rougeL", 70.0 + offset, num_instances=100, num_truncated=1),
        TaskResult("sni:broken", shots, "sni", "Question Answering", "held_out_task", "generation",
                   error="ValueError: the 'validation' split is empty"),
        TaskResult("sni:train1", shots, "sni", "Mathematics", "held_out_instances", "generation",
                   {"rougeL": 90.0 + offset}, "rougeL", 90.0 + offset, num_instances=20),
    ]
  return rows


def test_aggregates_per_level_benchmark_and_category_with_shots():
  rep = report.build_report(_results(), {"label": "tuned", "checkpoint": "/ckpt"}, {"shots": [0, 5]})
  assert list(rep["levels"]) == ["held_out_category", "held_out_task", "held_out_instances"]
  level1 = rep["levels"]["held_out_category"]
  assert level1["0"]["score"] == pytest.approx((40 + 60 + 30) / 3)
  assert level1["5"]["score"] == pytest.approx((50 + 70 + 30) / 3)
  assert level1["0"]["num_tasks"] == 3 and level1["0"]["num_truncated"] == 2
  assert level1["0"]["metrics"]["accuracy"] == pytest.approx(45.0)  # mean over the tasks that have it
  level2 = rep["levels"]["held_out_task"]["0"]
  assert (level2["score"], level2["num_tasks"], level2["num_failed"]) == (70.0, 1, 1)
  assert rep["benchmarks"]["held_out_category"]["bigbench"]["5"]["score"] == pytest.approx((70 + 30) / 2)
  assert rep["categories"]["held_out_category"]["Textual Entailment"]["0"]["score"] == pytest.approx(50.0)
  assert rep["tasks"]["sni:te1"]["shots"]["5"]["metrics"] == {"rougeL": 50.0, "exact_match": 20.0}
  assert rep["tasks"]["sni:te1"]["level"] == "held_out_category"
  assert {(e["task"], e["shots"]) for e in rep["errors"]} == {("sni:broken", 0), ("sni:broken", 5)}


def test_notes_and_unknown_tasks_are_listed_but_not_aggregated():
  results = _results()
  results[3].note = "5-shot asked but no demonstration exists"
  results.append(TaskResult("nope", 0, "unknown", "unknown", "unknown", "unknown", error="absent from the catalog"))
  rep = report.build_report(results)
  assert "unknown" not in rep["levels"] and rep["tasks"]["nope"]["level"] == "unknown"
  assert rep["notes"] == [{"task": "sni:qa", "shots": 0, "note": "5-shot asked but no demonstration exists"}]
  text = report.markdown(rep)
  assert "## Notes" in text and "- nope (0-shot): absent from the catalog" in text


def test_a_k_shot_variant_without_demonstrations_is_left_out_of_the_k_shot_means():
  results = _results()
  # bigbench:cr has no demonstration: its 5-shot prompt is the 0-shot one, with the 0-shot score (30).
  cr5 = next(r for r in results if r.task == "bigbench:cr" and r.shots == 5)
  cr5.aggregated, cr5.note = False, "5-shot asked but no demonstration exists"
  rep = report.build_report(results)
  level1 = rep["levels"]["held_out_category"]
  assert level1["5"]["score"] == pytest.approx((50 + 70) / 2) and level1["5"]["num_tasks"] == 2
  assert level1["0"]["score"] == pytest.approx((40 + 60 + 30) / 3) and level1["0"]["num_tasks"] == 3
  assert "5" not in rep["categories"]["held_out_category"]["Coreference Resolution"]
  assert rep["benchmarks"]["held_out_category"]["bigbench"]["5"]["score"] == pytest.approx(70.0)
  listed = rep["tasks"]["bigbench:cr"]["shots"]["5"]
  assert (listed["score"], listed["aggregated"]) == (30.0, False)
  assert rep["tasks"]["bigbench:cr"]["shots"]["0"]["aggregated"] is True
  assert "5-shot: 5-shot asked but no demonstration exists" in report.markdown(rep)


def test_baseline_deltas_and_side_by_side_tables():
  tuned = report.build_report(_results(offset=5.0), {"label": "tuned"})
  base = report.build_report(_results(), {"label": "base"})
  rep = report.with_baseline(tuned, base)
  assert rep["deltas"]["levels"]["held_out_category"]["0"] == pytest.approx(5.0)
  assert rep["deltas"]["categories"]["held_out_instances"]["Mathematics"]["5"] == pytest.approx(5.0)
  summary = report.summary_table(rep)
  assert "| tuned 0-shot | base 0-shot | Δ |" in summary
  assert "| held_out_task | **all** | 1 | 75.0 | 70.0 | +5.0 |" in summary
  tasks = report.task_table(rep)
  row = "| sni:train1 | held_out_instances | Mathematics | rougeL | 95.0 | 90.0 | +5.0 | 95.0 | 90.0 | +5.0 | 0 |"
  assert row in tasks
  assert "ValueError" in tasks and "truncated" in tasks.splitlines()[0]


def test_group_deltas_pair_the_tasks_both_sides_scored_with_the_same_metric():
  tuned = _results(offset=5.0)  # every task 5 points above the baseline
  base = _results()
  # The baseline failed bigbench:cr, and was judged by accuracy_norm on bigbench:te2 at 5 shots (another
  # length_normalize); the tuned model failed sni:qa at 5 shots: held_out_task has no 5-shot task both scored.
  for r in base:
    if r.task == "bigbench:cr":
      r.score, r.metrics, r.error = None, {}, "RuntimeError: RESOURCE_EXHAUSTED"
    if r.task == "bigbench:te2" and r.shots == 5:
      r.metric, r.score = "accuracy_norm", r.metrics["accuracy_norm"]
  qa5 = next(r for r in tuned if r.task == "sni:qa" and r.shots == 5)
  qa5.score, qa5.metrics, qa5.error = None, {}, "RuntimeError: RESOURCE_EXHAUSTED"
  rep = report.with_baseline(report.build_report(tuned, {"label": "tuned"}), report.build_report(base))
  deltas, paired = rep["deltas"], rep["deltas"]["num_tasks"]
  # Level 1, 0 shots: te1 and te2, +5 each; the means over each side's tasks differ by -1.7 (cr only in the tuned).
  assert deltas["levels"]["held_out_category"]["0"] == pytest.approx(5.0)
  assert paired["levels"]["held_out_category"]["0"] == 2
  assert rep["levels"]["held_out_category"]["0"]["score"] - rep["baseline"]["levels"]["held_out_category"]["0"][
      "score"] == pytest.approx(-5 / 3)
  # 5 shots: te1 only (te2 compares accuracy with accuracy_norm); bigbench has no task both scored alike.
  assert deltas["levels"]["held_out_category"]["5"] == pytest.approx(5.0)
  assert paired["levels"]["held_out_category"]["5"] == 1
  assert deltas["benchmarks"]["held_out_category"]["bigbench"]["5"] is None
  assert paired["benchmarks"]["held_out_category"]["bigbench"]["5"] == 0
  assert deltas["levels"]["held_out_task"]["5"] is None
  assert deltas["categories"]["held_out_instances"]["Mathematics"] == {"0": 5.0, "5": 5.0}
  assert deltas["metric_mismatches"] == [{
      "task": "bigbench:te2",
      "shots": 5,
      "metric": "accuracy",
      "baseline_metric": "accuracy_norm"
  }]
  text = report.markdown(rep)
  level1 = "| held_out_category |"
  for row in (f"{level1} **all** | 3 (baseline 2) | 48.3 | 50.0 | +5.0 (over 2) | 55.0 | 52.5 | +5.0 (over 1) |",
              f"{level1} benchmark: bigbench | 2 (baseline 1) | 50.0 | 60.0 | +5.0 (over 1) | 55.0 | 55.0 | n/a |",
              f"{level1} category: Coreference Resolution | 1 (baseline 0) | 35.0 | - | - | 35.0 | - | - |",
              "| held_out_task | **all** | 1 | 75.0 | 70.0 | +5.0 | - | 70.0 | - |",
              "| held_out_instances | **all** | 1 | 95.0 | 90.0 | +5.0 | 95.0 | 90.0 | +5.0 |"):
    assert row in text, text
  assert "(over n)" in text and "n/a: no such task" in text
  row = next(line for line in text.splitlines() if line.startswith("| bigbench:te2 "))
  assert row.startswith(
      "| bigbench:te2 | held_out_category | Textual Entailment | accuracy (baseline: accuracy_norm) |")
  assert "| 65.0 | 60.0 | +5.0 | 75.0 | 55.0 | n/a | 0 |" in row
  assert "- bigbench:te2 (5-shot): accuracy here, accuracy_norm in the baseline" in text
  # Without such differences, no count and no legend.
  plain = report.markdown(report.with_baseline(report.build_report(_results(5.0)), report.build_report(_results())))
  assert "(over" not in plain and "n/a" not in plain and "(baseline " not in plain


def test_write_load_round_trip_markdown_and_one_png_per_level(tmp_path):
  results = _results()
  results[0].metrics["broken_metric"] = float("nan")
  rep = report.with_baseline(report.build_report(results, {
      "label": "tuned",
      "checkpoint": "/c",
      "step": 7
  }), report.build_report(_results(), {"label": "base"}))
  paths = report.write(rep, tmp_path)
  loaded = report.load(tmp_path)
  assert loaded["levels"] == json.loads(json.dumps(rep["levels"]))
  assert loaded["tasks"]["sni:te1"]["shots"]["0"]["metrics"]["broken_metric"] is None  # NaN -> null
  for level in report.LEVELS:
    png = paths[level].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
  text = (tmp_path / "report.md").read_text()
  assert "step 7" in text and "## Errors" in text and "cut from the left: 6" in text
  with pytest.raises(ValueError, match="evaluation report"):
    (tmp_path / "bad.json").write_text("{}")
    report.load(tmp_path / "bad.json")


def test_steps_table_lists_level_scores_by_step():
  reports = {200: report.build_report(_results(offset=2.0)), 100: report.build_report(_results())}
  table = report.steps_table(reports).splitlines()
  assert table[0].startswith("| step | held_out_category 0-shot | held_out_category 5-shot |")
  assert table[2].startswith("| 100 | 43.3 | 50.0 |") and table[3].startswith("| 200 | 45.3 | 52.0 |")


def _chance_results():
  """Level 1: a 2-option task (chance 50) and a generation task (chance 0); level 2: a 4-option task (25) and
  a multiple-choice task without a chance metric (unknown)."""

  def mc(task, level, accuracy, chance=None):
    metrics = {"accuracy": accuracy} if chance is None else {"accuracy": accuracy, "chance": chance}
    return TaskResult(task, 0, "sni", "Sentiment Analysis", level, "multiple_choice", metrics, "accuracy", accuracy,
                      num_instances=20)

  return [
      mc("sni:yes_no", "held_out_category", 90.0, chance=50.0),
      TaskResult("sni:gen", 0, "sni", "Mathematics", "held_out_category", "generation", {"rougeL": 30.0}, "rougeL",
                 30.0, num_instances=20),
      mc("sni:four", "held_out_task", 40.0, chance=25.0),
      mc("custom:acc", "held_out_task", 70.0),
  ]


def test_chance_baseline_per_task_group_table_and_chart(tmp_path):
  rep = report.build_report(_chance_results())
  assert rep["levels"]["held_out_category"]["0"]["chance"] == pytest.approx((50.0 + 0.0) / 2)
  assert rep["categories"]["held_out_category"]["Sentiment Analysis"]["0"]["chance"] == pytest.approx(50.0)
  assert rep["levels"]["held_out_task"]["0"]["chance"] is None  # one task's chance is unknown
  assert rep["categories"]["held_out_task"]["Sentiment Analysis"]["0"]["chance"] is None
  summary = report.summary_table(rep)
  assert summary.splitlines()[0] == "| level | group | tasks | chance | 0-shot |"
  assert "| held_out_category | **all** | 2 | 25.0 | 60.0 |" in summary
  assert "| held_out_task | **all** | 2 | - | 55.0 |" in summary
  tasks = report.task_table(rep)
  assert "| sni:yes_no | held_out_category | Sentiment Analysis | accuracy | 50.0 | 90.0 |" in tasks
  assert "| sni:gen | held_out_category | Mathematics | rougeL | 0.0 | 30.0 |" in tasks
  assert "| custom:acc | held_out_task | Sentiment Analysis | accuracy | - | 70.0 |" in tasks
  assert "chance: what guessing scores" in report.markdown(rep)
  paths = report.write(rep, tmp_path)
  assert paths["held_out_category"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_chance_column_without_a_chance_metric():
  rep = report.build_report(_results())
  assert rep["levels"]["held_out_instances"]["0"]["chance"] == 0.0  # a generation task only
  assert rep["levels"]["held_out_category"]["0"]["chance"] is None  # accuracy tasks without a chance metric
  assert "chance" not in report.summary_table(rep) and "chance" not in report.task_table(rep)
  assert "what guessing scores" not in report.markdown(rep)
