"""The claim of `python -m optiml_jax.reproduce`: the tasks picked per level, the table, the first-answer rows."""

import json

import pytest

from optiml_jax.data import catalog as catalog_lib
from optiml_jax.reproduction import claim


def _entry(name, category, role, eval_instances=10, kind="generation", rate=None):
  rate = (1.0 if role == catalog_lib.TRAIN else 0.0) if rate is None else rate  # as the catalog sets rates
  return catalog_lib.CatalogEntry(name=name, benchmark=name.split(":")[0], category=category, role=role, num_examples=0,
                                  num_eval_instances=eval_instances, rate=rate, format="sni", path="", dataset="",
                                  template="", kind=kind, num_instances=eval_instances)


def test_pick_tasks_spreads_each_level_over_its_categories():
  tasks = [
      _entry("sni:a1", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:a2", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:a3", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:b1", "B", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:c1", "C", catalog_lib.HELD_OUT_TASK),
      _entry("sni:c2", "C", catalog_lib.HELD_OUT_TASK, eval_instances=0),  # nothing to evaluate
      _entry("sni:t1", "T", catalog_lib.TRAIN),
      _entry("sni:t2", "C", catalog_lib.TRAIN, eval_instances=0),  # C is trained on
  ]
  picked = claim.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)
  assert picked == {
      "held_out_category": ["sni:a1", "sni:b1", "sni:a2"],  # one per category before a second of any
      "held_out_task": ["sni:c1"],
      "held_out_instances": ["sni:t1"]
  }
  assert claim.task_names(picked) == ["sni:a1", "sni:b1", "sni:a2", "sni:c1", "sni:t1"]  # level by level


def test_pick_tasks_refuses_a_count_that_is_not_positive():
  tasks = [_entry("sni:a1", "A", catalog_lib.HELD_OUT_CATEGORY), _entry("sni:a2", "A", catalog_lib.HELD_OUT_CATEGORY)]
  for per_level in (0, -1):  # -1 sliced [:-1], every task but the last
    with pytest.raises(ValueError, match="per_level must be positive"):
      claim.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=per_level)


def test_pick_tasks_gives_each_level_both_kinds_and_mixes_benchmarks():
  # As the real sample's held-out tasks: many multiple-choice BIG-bench tasks in categories whose names sort
  # first, generation tasks of SNI and BIG-bench in others. The claim needs a ROUGE-L and an accuracy row.
  mc, task = "multiple_choice", catalog_lib.HELD_OUT_TASK
  tasks = [
      _entry("bigbench:m1", "A", task, kind=mc),
      _entry("bigbench:m2", "B", task, kind=mc),
      _entry("bigbench:m3", "C", task, kind=mc),
      _entry("bigbench:g1", "D", task),
      _entry("sni:g2", "D", task),
      _entry("sni:g3", "D", task),
      _entry("sni:g4", "E", task),
  ] + [_entry(f"sni:train_{c}", c, catalog_lib.TRAIN, eval_instances=0) for c in "ABCDE"]  # all trained on
  picked = claim.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)["held_out_task"]
  assert picked == ["bigbench:g1", "bigbench:m1", "sni:g4"]  # generation first, then categories take turns
  everything = claim.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=10)["held_out_task"]
  # Within category D the benchmarks take turns (g1 of BIG-bench, then SNI's g2) before SNI's second task.
  assert everything == ["bigbench:g1", "bigbench:m1", "sni:g4", "bigbench:m2", "sni:g2", "bigbench:m3", "sni:g3"]


def test_pick_tasks_takes_level_2_only_from_categories_that_are_trained_on():
  # As ../shared/data's sample: SNI's test split and BIG-bench hold tasks of categories no training task has
  # (Cause Effect Classification: SuperGLUE COPA); measured as level 2, they would be level 1 under its name.
  task, train = catalog_lib.HELD_OUT_TASK, catalog_lib.TRAIN
  tasks = [
      _entry("sni:copa", "Cause Effect Classification", task),
      _entry("bigbench:known_unknowns", "Answerability Classification", task, kind="multiple_choice"),
      _entry("sni:web_nlg", "Data to Text", task),
      _entry("bigbench:qa", "Question Answering", task, kind="multiple_choice"),
      _entry("sni:wiki_bio", "Data to Text", train),
      _entry("sni:squad", "Question Answering", train, eval_instances=0),
      _entry("sni:never_drawn", "Answerability Classification", train, rate=0.0),  # not in the mixture
  ]
  picked = claim.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)
  assert picked["held_out_task"] == ["sni:web_nlg", "bigbench:qa"]
  assert picked["held_out_instances"] == ["sni:wiki_bio"]  # level 3: tasks the mixture trains on


def _task(level, kind, scores):
  return {"level": level, "kind": kind, "shots": {k: {"score": v} for k, v in scores.items()}}


def _tasks(**spec):
  """{"tasks": ...} of held-out tasks, each given as name=(kind, 0-shot score[, 5-shot score])."""
  tasks = {name: _task("held_out_task", kind, dict(zip(("0", "5"), scores))) for name, (kind, *scores) in spec.items()}
  return {"tasks": tasks}


def _report(tuned, base):
  """A report (`tuned`) with its baseline (`base`), each a `_tasks(...)`."""
  return {**tuned, "baseline": base}


def test_claim_table_means_each_level_and_kind_over_the_tasks_both_models_scored():
  # y failed at 5-shot (no score).
  report = _report(_tasks(x=("generation", 30.0, 40.0), y=("generation", 50.0, None), z=("multiple_choice", 60.0)),
                   _tasks(x=("generation", 10.0, 20.0), y=("generation", 20.0, 30.0), z=("multiple_choice", 50.0)))
  table = claim.claim_table(report)
  assert table["held_out_task"]["generation"]["0"] == {"base": 15.0, "tuned": 40.0, "delta": 25.0, "tasks": 2}
  assert table["held_out_task"]["generation"]["5"] == {"base": 20.0, "tuned": 40.0, "delta": 20.0, "tasks": 1}
  assert table["held_out_task"]["multiple_choice"]["0"]["delta"] == 10.0
  # A task without demonstrations counts at 0-shot only (its 5-shot prompt is the 0-shot one).
  without_x = claim.claim_table(report, without_demonstrations={"x"})["held_out_task"]["generation"]
  assert without_x["0"]["tasks"] == 2 and "5" not in without_x
  markdown = claim.claim_markdown(table)
  # The 5-shot cells cover 1 task (y failed there): the count says so, as the README's table does.
  assert "| held_out_task | ROUGE-L (2; 5-shot 1) | 15.0 | 40.0 | +25.0 | 20.0 | 40.0 | +20.0 |" in markdown
  assert "| held_out_task | ROUGE-L (2) | 15.0 | 40.0 | +25.0 | - | - | - |" in claim.claim_markdown(
      claim.claim_table(report, without_demonstrations={"x", "y"}))
  assert "| held_out_task | accuracy (1) | 50.0 | 60.0 | +10.0 | - | - | - |" in markdown
  # The base in its chat template: a column of its own, over the same tasks, with the tuned model's delta to it.
  chat = _tasks(x=("generation", 35.0, 45.0), y=("generation", 25.0, 5.0))
  with_chat = claim.claim_table(report, chat=chat)["held_out_task"]
  assert with_chat["generation"]["0"] == {
      "base": 15.0,
      "tuned": 40.0,
      "delta": 25.0,
      "tasks": 2,
      "chat": 30.0,
      "delta_chat": 10.0
  }
  assert with_chat["generation"]["5"]["chat"] == 45.0  # y failed at 5-shot for the tuned model: left out
  assert "chat" not in with_chat["multiple_choice"]["0"]  # z has no chat score: no mean over other tasks
  markdown = claim.claim_markdown(claim.claim_table(report, chat=chat))
  assert "| level | metric (tasks) | base 0-shot | base, chat 0-shot | tuned 0-shot | Δ 0-shot | Δ chat 0-shot |" in (
      markdown)
  assert ("| held_out_task | ROUGE-L (2; 5-shot 1) | 15.0 | 30.0 | 40.0 | +25.0 | +10.0 | 20.0 | 45.0 | 40.0 | +20.0 "
          "| -5.0 |") in markdown
  assert "| held_out_task | accuracy (1) | 50.0 | - | 60.0 | +10.0 | - | - | - | - | - | - |" in markdown


def test_first_answer_rows_score_each_prediction_up_to_its_first_blank_line(tmp_path):
  # A chat model given a few-shot prompt answers, then writes the next example: scored whole, ROUGE-L punishes
  # the run-on; the first-answer row scores the answer alone, from the evaluator's inference logs.
  assert claim.first_answer("mat\n\nThe _ is too large. Answer: mat") == "mat"
  assert claim.first_answer("one line\nand another") == "one line\nand another"
  logs = {
      ("base", "g", "0"): [{
          "prediction": "mat\n\nInput: x Answer: mat",
          "target": ["mat"]
      }],
      ("tuned", "g", "0"): [{
          "prediction": "mat",
          "target": ["mat"]
      }],
      ("base", "g", "5"): [{
          "prediction": "rug",
          "target": ["mat"]
      }],
      ("tuned", "g", "5"): None,  # no log: the cell is left out
  }
  report = _report(_tasks(g=("generation", 100.0, 0.0), m=("multiple_choice", 50.0)),
                   _tasks(g=("generation", 40.0, 0.0), m=("multiple_choice", 50.0)))
  first = claim.first_answer_report(report, lambda side, task, shots: logs[(side, task, shots)])
  assert set(first["tasks"]) == {"g"} and first["tasks"]["g"]["kind"] == claim.FIRST_ANSWER
  row = claim.claim_table(first)["held_out_task"][claim.FIRST_ANSWER]
  assert row == {"0": {"base": 100.0, "tuned": 100.0, "delta": 0.0, "tasks": 1}}
  assert "| held_out_task | ROUGE-L, first answer (1) | 100.0 | 100.0 | +0.0 | - | - | - |" in (claim.claim_markdown(
      claim.claim_table(first)))
  # The base in its chat template is rescored from its own logs (side "chat").
  logs[("chat", "g", "0")] = [{"prediction": "rug\n\nmore", "target": ["mat"]}]
  logs[("chat", "g", "5")] = [{"prediction": "mat", "target": ["mat"]}]
  chat = _tasks(g=("generation", 0.0, 100.0))
  first = claim.first_answer_report(report, lambda side, task, shots: logs[(side, task, shots)], chat)
  assert first["chat"]["tasks"]["g"]["shots"] == {"0": {"score": 0.0}, "5": {"score": 100.0}}
  assert claim.claim_table(first, chat=first["chat"])["held_out_task"][claim.FIRST_ANSWER]["0"]["chat"] == 0.0
  # The logs as seqio's JSONLogger names them: <seqio name>-<step>.jsonl, the latest step read; a k-shot
  # variant's log is not the 0-shot task's.
  (tmp_path / "sni:t.5shot-000000.jsonl").write_text(json.dumps({"prediction": "b", "target": ["b"]}) + "\n")
  (tmp_path / "sni:t-000000.jsonl").write_text(json.dumps({"prediction": "old", "target": ["a"]}) + "\n")
  (tmp_path / "sni:t-000020.jsonl").write_text(json.dumps({"prediction": "a", "target": ["a"]}) + "\n")
  (tmp_path / "sni:t-metrics.jsonl").write_text("{}\n")
  assert claim.read_inference_log(tmp_path, "sni:t") == [{"prediction": "a", "target": ["a"]}]
  assert claim.read_inference_log(tmp_path, "sni:t.5shot") == [{"prediction": "b", "target": ["b"]}]
  assert claim.read_inference_log(tmp_path, "sni:u") is None
