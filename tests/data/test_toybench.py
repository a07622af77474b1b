"""Tests for optiml_jax.data.toybench: the synthetic bench in SNI's format and its catalog."""

import collections
import json

import pytest

from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import records
from optiml_jax.data import toybench


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return toybench.write(tmp_path_factory.mktemp("toy"), seed=0)


def _instances(toy_dir, slug):
  (name,) = [n for n in toybench.task_names() if n.endswith(f"_toy_{slug}")]
  return json.loads((toy_dir / "tasks" / f"{name}.json").read_text(encoding="utf-8"))["Instances"]


def test_layout_and_sni_fields(toy_dir):
  names = toybench.task_names()
  assert 30 <= len(names) <= 60 and len(set(names)) == len(names)
  assert sorted(p.stem for p in (toy_dir / "tasks").glob("*.json")) == sorted(names)
  train = (toy_dir / "splits" / "default" / "train_tasks.txt").read_text().split()
  test = (toy_dir / "splits" / "default" / "test_tasks.txt").read_text().split()
  assert sorted(train + test) == sorted(names) and not set(train) & set(test)
  for toy, name in zip(toybench.TASKS, names):
    task = json.loads((toy_dir / "tasks" / f"{name}.json").read_text(encoding="utf-8"))
    assert {
        "Definition", "Positive Examples", "Negative Examples", "Instances", "Categories", "Source", "Input_language",
        "Output_language", "Instruction_language", "Domains", "Instance License"
    } <= set(task)
    instances = task["Instances"]
    assert len(instances) == toybench.NUM_INSTANCES * toy.scale, name
    inputs = [i["input"] for i in instances]
    assert len(set(inputs)) == len(inputs), f"{name}: repeated inputs would leak held-out instances"
    assert not {d["input"] for d in task["Positive Examples"]} & set(inputs)
    assert all(len(i["input"].split()) <= 16 and len(i["output"][0].split()) <= 5 for i in instances), name


def test_deterministic_per_seed(tmp_path):
  a = toybench.write(tmp_path / "a", seed=3)
  b = toybench.write(tmp_path / "b", seed=3)
  c = toybench.write(tmp_path / "c", seed=4)
  name = toybench.task_names()[0] + ".json"
  assert (a / "tasks" / name).read_bytes() == (b / "tasks" / name).read_bytes()
  assert (a / "tasks" / name).read_bytes() != (c / "tasks" / name).read_bytes()


def test_answers_are_correct(toy_dir):
  for i in _instances(toy_dir, "add_small"):
    a, b = i["input"].split(" + ")
    assert int(i["output"][0]) == int(a) + int(b)
  for i in _instances(toy_dir, "reverse_word"):
    assert i["output"][0] == i["input"][::-1]
  for i in _instances(toy_dir, "sort_descending"):
    assert i["output"][0].split() == sorted(i["input"].split(), reverse=True)
  for slug, pick in (("list_max", max), ("list_min", min)):
    assert all(i["output"][0] == pick(i["input"].split()) for i in _instances(toy_dir, slug))
  for i in _instances(toy_dir, "coref_animal"):
    name, animal = i["input"].split(".")[0].split(" saw the ")
    assert i["output"][0] == (animal if "What" in i["input"] else name)
    assert sorted(i["options"]) == sorted([name, animal])


def test_multiple_choice_tasks_carry_their_options_and_balanced_answers(toy_dir):
  """Rank classification needs every instance's candidates with its answer among them; answers drawn evenly
  over the candidates make 1 / (number of options) the score of guessing (the report's chance column)."""
  multiple_choice = [t for t in toybench.TASKS if t.options or t.slug.startswith("coref_")]
  assert {t.slug for t in multiple_choice} >= {"movie_sentiment", "food_sentiment", "topic", "entail_place"}
  for toy in multiple_choice:
    instances = _instances(toy_dir, toy.slug)
    assert all(i["output"][0] in i["options"] and len(i["options"]) >= 2 for i in instances), toy.slug
    if toy.options:
      assert all(tuple(i["options"]) == toy.options for i in instances), toy.slug
      answers = collections.Counter(i["output"][0] for i in instances)
      assert set(answers) == set(toy.options), toy.slug
      assert min(answers.values()) > 0.6 * len(instances) / len(toy.options), (toy.slug, answers)
  generation = [t for t in toybench.TASKS if t not in multiple_choice]
  assert all("options" not in i for t in generation for i in _instances(toy_dir, t.slug))


def test_toy_catalog_roles_kinds_and_rates(toy_dir):
  from optiml_jax.data.sources import sni  # pylint: disable=g-import-not-at-top

  config = bench_config.load_config(toybench.CONFIG_PATH)
  cat = catalog.build(config, sni.iter_tasks(toy_dir), sni.read_split(toy_dir))
  assert not cat.skipped and not cat.dropped and not cat.unmapped and not cat.leakage
  roles = collections.Counter(t.role for t in cat.tasks)
  assert roles["held_out_category"] == 5 and roles["held_out_task"] == 4 and roles["train"] == 25
  held_categories = {t.category for t in cat.tasks if t.role == "held_out_category"}
  assert held_categories == {"Textual Entailment", "Coreference Resolution"}
  train_categories = {t.category for t in cat.tasks if t.role == "train"}
  assert {t.category for t in cat.tasks if t.role == "held_out_task"} <= train_categories
  assert sum(t.rate for t in cat.tasks) == pytest.approx(1.0)
  assert all(t.num_eval_instances == 20 for t in cat.tasks if t.role == "train")
  assert all(t.format == "sni" and t.benchmark == "sni" for t in cat.tasks)
  kinds = {t.name.split("_toy_")[1]: t.kind for t in cat.tasks}
  assert kinds["movie_sentiment"] == kinds["coref_object"] == records.MULTIPLE_CHOICE
  assert kinds["add_small"] == kinds["entail_color"] == records.GENERATION  # each level has both kinds
  # Examples-proportional mixing: a core task (10x the instances) is drawn ~10x as often as another.
  rates = {t.name.split("_toy_")[1]: t.rate for t in cat.tasks if t.role == "train"}
  core = [t.slug for t in toybench.TASKS if t.scale > 1]
  assert len(core) == 4 and all(rates[s] == pytest.approx(rates["movie_sentiment"]) for s in core)
  held = config.held_out_instances_per_task
  core_examples, other_examples = toybench.NUM_INSTANCES * toybench.CORE_SCALE - held, toybench.NUM_INSTANCES - held
  assert rates["movie_sentiment"] == pytest.approx(rates["add_small"] * core_examples / other_examples)
