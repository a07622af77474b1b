"""Tests for the BIG-bench JSON task reader (real samples in ../shared and tasks written here)."""

import json
import pathlib

import pytest

from optiml_jax.data import records
from optiml_jax.data.sources import bigbench


def _bigbench_dir(shared_dir: pathlib.Path) -> pathlib.Path:
  return shared_dir / "data" / "bigbench"


def _raw(task: records.TaskSource) -> dict:
  return json.loads(pathlib.Path(task.path).read_text(encoding="utf-8"))


def _write_task(folder: pathlib.Path, obj) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / "task.json"
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


def _toy(**overrides):
  task = {
      "name": "toy",
      "description": "Answer.",
      "keywords": ["arithmetic"],
      "examples": [{
          "input": "1 + 1 =",
          "target": "2"
      }]
  }
  task.update(overrides)
  return task


def test_every_real_task_reads(shared_dir):
  results = list(bigbench.iter_tasks(_bigbench_dir(shared_dir)))
  assert [r for r in results if isinstance(r, records.Skipped)] == []
  assert len(results) == len(list(_bigbench_dir(shared_dir).glob("*/task.json"))) == 85
  kinds = {r.kind for r in results}
  assert kinds == {records.MULTIPLE_CHOICE, records.GENERATION}
  for task in results:
    raw = _raw(task)
    assert task.name == f"bigbench:{pathlib.Path(task.path).parent.name}" and task.format == "bigbench"
    assert task.categories == tuple(raw["keywords"])
    all_scored = all("target_scores" in e for e in raw["examples"])
    assert task.kind == (records.MULTIPLE_CHOICE if all_scored else records.GENERATION)
    first = next(task.instances())
    assert first.targets and (first.input or first.options)  # misconceptions_russian: choices only.


def test_multiple_choice_task(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "anachronisms" / "task.json")
  raw = _raw(task)
  assert task.kind == records.MULTIPLE_CHOICE
  assert task.definition == raw["description"]  # No task_prefix: the description instructs.
  instances = list(task.instances())
  assert len(instances) == len(raw["examples"]) and instances == list(task.open_instances())
  for instance, example in zip(instances, raw["examples"]):
    scores = example["target_scores"]
    assert sorted(instance.options) == sorted(scores)
    assert instance.targets == tuple(o for o in instance.options if scores[o] == max(scores.values()))
    # anachronisms sets append_choices_to_input false, input prefix "\n" and an output prefix question.
    assert "choice:" not in instance.input
    assert instance.input == (example["input"] + raw["example_output_prefix"]).strip()
  # The choice order is shuffled (fixed per example), so the answer's position carries no signal.
  assert len({i.options for i in instances}) > 1


def test_choices_are_appended_with_the_default_prefixes(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "general_knowledge" / "task.json")
  raw = _raw(task)
  assert "example_input_prefix" not in raw and "append_choices_to_input" in raw
  instance, example = next(task.instances()), raw["examples"][0]
  assert instance.input == "Q: " + example["input"] + "".join("\n  choice: " + o for o in instance.options) + "\nA:"


def test_string_flag_false_keeps_choices_out(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "identify_odd_metaphor" / "task.json")
  assert _raw(task)["append_choices_to_input"] == "false"
  assert all("choice:" not in i.input for i in task.instances())


def test_generation_task_with_several_references(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "simple_arithmetic_multiple_targets_json" / "task.json")
  raw = _raw(task)
  assert task.kind == records.GENERATION
  instances = list(task.instances())
  references = [[e["target"]] if isinstance(e["target"], str) else e["target"] for e in raw["examples"]]
  assert [i.targets for i in instances] == [tuple(r) for r in references]
  assert any(len(r) > 1 for r in references)
  assert all(i.options == () for i in instances)
  assert instances[0].id == "simple_arithmetic_multiple_targets_json-0"


def test_task_prefix_is_the_definition_and_example_prefix_stays(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "word_sorting" / "task.json")
  raw = _raw(task)
  assert task.definition == raw["task_prefix"].strip()
  instance = next(task.instances())
  assert instance.input == f"List: {raw['examples'][0]['input']}\nSorted:"
  tense = bigbench.read_task(_bigbench_dir(shared_dir) / "tense" / "task.json")
  with_prefix = [(i, e) for i, e in zip(tense.instances(), _raw(tense)["examples"]) if "task_prefix" in e]
  assert with_prefix and all(i.input.startswith(e["task_prefix"]) for i, e in with_prefix)


def test_composite_task_names(tmp_path):
  root = tmp_path / "benchmark_tasks"
  _write_task(root / "arith", {"name": "arith", "description": "Composite.", "keywords": ["mathematics"]})
  _write_task(root / "arith" / "add", _toy(name="add"))
  _write_task(root / "arith" / "sub", _toy(name="sub"))
  _write_task(root / "plain", _toy(name="plain"))
  tasks = list(bigbench.iter_tasks(tmp_path))  # Descends into benchmark_tasks/.
  assert [(t.name, t.dataset) for t in tasks] == [("bigbench:arith:add", "arith"), ("bigbench:arith:sub", "arith"),
                                                  ("bigbench:plain", "plain")]
  assert bigbench.read_task(root / "arith" / "add" / "task.json").name == "bigbench:arith:add"


# The last four: Python's json reads NaN and Infinity; max() over a NaN score found no best choice and the build
# died with "generator raised StopIteration", a NaN after a number was kept as the option's graded score, and an
# integer too large for a float raised OverflowError.
@pytest.mark.parametrize("task, expected", [
    ({
        "name": "x",
        "description": "d",
        "keywords": []
    }, "missing required field 'examples'"),
    (_toy(examples=[]), "'examples': empty list"),
    (_toy(examples=[{
        "input": "a",
        "target": "b"
    }, {
        "input": "c"
    }]), "examples[1]: missing required field 'target' or 'target_scores'"),
    (_toy(examples=[{
        "target": "b"
    }]), "examples[0]: missing required field 'input'"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {
            "x": "high"
        }
    }]), "examples[0].target_scores['x']"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {}
    }]), "examples[0].target_scores"),
    (_toy(append_choices_to_input="maybe"), "'append_choices_to_input'"),
    (_toy(examples=[{
        "input": "a",
        "target": [" ", ""]
    }]), "no example has a non-empty target"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {
            "x": float("nan"),
            "y": 1
        }
    }]), "examples[0].target_scores['x']: expected a finite number, got nan"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {
            "y": 1,
            "x": float("nan")
        }
    }]), "examples[0].target_scores['x']: expected a finite number, got nan"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {
            "y": 0,
            "x": float("-inf")
        }
    }]), "examples[0].target_scores['x']: expected a finite number, got -inf"),
    (_toy(examples=[{
        "input": "a",
        "target_scores": {
            "y": 0,
            "x": 10**400
        }
    }]), "examples[0].target_scores['x']: expected a finite number, got 1000"),
])
def test_bad_tasks_are_skipped_with_the_field(tmp_path, task, expected):
  _write_task(tmp_path / "a_good", _toy())
  path = _write_task(tmp_path / "b_bad", task)
  results = list(bigbench.iter_tasks(tmp_path))
  assert isinstance(results[0], records.TaskSource)
  assert results[1] == records.Skipped(str(path), results[1].reason) and expected in results[1].reason


def test_invalid_json_is_skipped(tmp_path):
  path = tmp_path / "broken" / "task.json"
  path.parent.mkdir()
  path.write_text('{"examples": [', encoding="utf-8")
  (skipped,) = bigbench.iter_tasks(tmp_path)
  assert isinstance(skipped, records.Skipped) and "invalid JSON" in skipped.reason


def test_tied_best_choices_put_big_benchs_own_target_first(shared_dir):
  # geometric_shapes scores "circle" and "ellipse" both 1 and names "circle" its target: BIG-bench's target (and
  # the training target, targets[0]) is "circle", and either choice counts as right (multiple_choice_grade).
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "geometric_shapes" / "task.json")
  tied = [(i, e) for i, e in zip(task.instances(), _raw(task)["examples"]) if len(i.targets) > 1]
  assert tied
  for instance, example in tied:
    best = {c for c, s in example["target_scores"].items() if s == 1}
    assert set(instance.targets) == best and instance.targets[0] == example["target"]
  # Without a "target", the first best choice in target_scores order is BIG-bench's target.
  proverbs = bigbench.read_task(_bigbench_dir(shared_dir) / "swedish_to_german_proverbs" / "task.json")
  instance = next(proverbs.instances())
  assert _raw(proverbs)["examples"][0]["input"] == "Alla vägar bär till Rom."
  assert instance.targets == ("Alle Wege führen nach Rom.", "Alle Wege sind aus Rom.")


def test_tied_choices_in_a_written_task(tmp_path):
  scores = {"b": 1, "a": 0, "c": 1}
  path = _write_task(tmp_path / "tie", _toy(examples=[{"input": "x", "target_scores": scores}]))
  assert next(bigbench.read_task(path).instances()).targets == ("b", "c")
  path = _write_task(tmp_path / "tie2", _toy(examples=[{"input": "x", "target_scores": scores, "target": "c"}]))
  assert next(bigbench.read_task(path).instances()).targets == ("c", "b")


def test_choices_and_references_lose_surrounding_whitespace(shared_dir, tmp_path):
  # gre_reading_comprehension has choices that start with a space: joined to the prompt with the formatter's own
  # space, they would be scored (and trained) after a lone-space token.
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "gre_reading_comprehension" / "task.json")
  raw_choices = [c for e in _raw(task)["examples"] for c in e["target_scores"]]
  assert any(c != c.strip() for c in raw_choices)
  for instance in task.instances():
    assert all(o == o.strip() for o in instance.options + instance.targets)
  path = _write_task(
      tmp_path / "ws",
      _toy(examples=[{
          "input": "a",
          "target": [" b\n", "c "]
      }, {
          "input": "d",
          "target_scores": {
              " e": 0.5,
              "e": 1,
              "f ": 0
          }
      }]))
  first, second = bigbench.read_task(path).instances()
  assert first.targets == ("b", "c")
  assert sorted(second.options) == ["e", "f"] and second.targets == ("e",)


def test_example_without_a_reference_is_dropped(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "physics_questions" / "task.json")
  examples = _raw(task)["examples"]
  empty = [k for k, e in enumerate(examples) if e["input"] == "" and e["target"] == ""]
  assert len(empty) == 1
  instances = list(task.instances())
  assert len(instances) == len(examples) - 1 and all(i.targets and all(i.targets) for i in instances)
  assert f"physics_questions-{empty[0]}" not in {i.id for i in instances}
  assert [i.id for i in instances] == [f"physics_questions-{k}" for k in range(len(examples)) if k != empty[0]]


def test_an_empty_top_choice_is_no_reference(tmp_path):
  # As an empty target: a whitespace-only choice is no reference (docs/bench.md), and an example whose top score
  # only such a choice holds is dropped, the others keeping their ids; it stays an answer candidate.
  path = _write_task(
      tmp_path / "blank",
      _toy(examples=[{
          "input": "x",
          "target_scores": {
              " ": 1,
              "b": 0
          }
      }, {
          "input": "y",
          "target_scores": {
              "": 1,
              "c": 1,
              "d": 0
          },
          "target": ""
      }, {
          "input": "z",
          "target_scores": {
              "\t": 0,
              "e": 1
          }
      }]))
  tied, plain = bigbench.read_task(path).instances()
  assert tied.id == "blank-1" and tied.targets == ("c",) and sorted(tied.options) == ["", "c", "d"]
  assert plain.id == "blank-2" and plain.targets == ("e",) and sorted(plain.options) == ["", "e"]
  only_blank = _write_task(tmp_path / "root" / "only_blank",
                           _toy(examples=[{
                               "input": "x",
                               "target_scores": {
                                   " ": 1,
                                   "b": 0
                               }
                           }]))
  (skipped,) = bigbench.iter_tasks(tmp_path / "root")
  assert skipped == records.Skipped(str(only_blank), "field 'examples': no example has a non-empty target")


def test_graded_scores_are_kept_in_option_order(tmp_path):
  # BIG-bench's multiple_choice_grade credits the picked choice with its score: the reader keeps every score.
  scores = {"joy": 0.69, "anticipation": 0.28, "anger": 0.0, "trust": 0.33}
  path = _write_task(
      tmp_path / "graded",
      _toy(examples=[{
          "input": "x",
          "target_scores": scores
      }, {
          "input": "y",
          "target_scores": {
              " e": 0.5,
              "e": 0.9,
              "f ": 0
          }
      }]))
  graded, merged = bigbench.read_task(path).instances()
  assert sorted(graded.options) == sorted(scores) and graded.targets == ("joy",)
  assert graded.option_scores == tuple(scores[o] for o in graded.options)
  # Choices equal after stripping are one choice with the higher score.
  assert dict(zip(merged.options, merged.option_scores)) == {"e": 0.9, "f": 0.0}
  generation = bigbench.read_task(_write_task(tmp_path / "gen", _toy()))
  assert next(generation.instances()).option_scores == ()


def test_real_graded_task_carries_its_scores(shared_dir):
  task = bigbench.read_task(_bigbench_dir(shared_dir) / "emojis_emotion_prediction" / "task.json")
  instances = list(task.instances())
  examples = _raw(task)["examples"]
  assert len(instances) == len(examples)
  for instance, example in zip(instances, examples):
    assert dict(zip(instance.options, instance.option_scores)) == example["target_scores"]
  # The first example (a rainbow): "joy" 0.69 is the answer, "anticipation" earns 0.28.
  first = dict(zip(instances[0].options, instances[0].option_scores))
  assert instances[0].targets == ("joy",) and first["joy"] == 0.69 and first["anticipation"] == 0.28
  assert sum(1 for i in instances for s in i.option_scores if 0 < s < 1) > len(instances)
