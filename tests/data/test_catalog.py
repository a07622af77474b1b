"""Tests for optiml_jax.data.catalog: config, categories, roles, de-duplication, leakage, rates, save/load."""

import copy
import dataclasses
import json
import pathlib

import pytest
import yaml

from optiml_jax import resources
from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import leakage
from optiml_jax.data import records
from optiml_jax.data.sources import promptsource

REPO = pathlib.Path(__file__).resolve().parents[2]
BENCH_YAML = REPO / "tasks" / "optiml_bench.yaml"

BASE_CONFIG = {
    "name": "test_bench",
    "benchmarks": {
        "sni": {
            "share": 25
        },
        "promptsource": {
            "share": 45
        },
        "crossfit": {
            "share": 4
        },
        "exmix": {
            "share": 2
        },
        "t5": {
            "share": 2
        },
        "bigbench": {
            "share": 0,
            "eval_only": True
        },
        "pretraining": {
            "share": 5,
            "fixed_share": True,
            "category": "Language Modeling"
        },
    },
    "limits": {
        "max_examples_per_task": 30,
        "max_eval_instances": 4,
        "held_out_instances_per_task": 3
    },
    "rates": {
        "method": "examples_proportional",
        "cap": 4096,
        "temperature": 1.0
    },
    "held_out": {
        "categories": ["Textual Entailment"],
        "sni_test_split": True,
        "sni_train": "all",
        "tasks": ["promptsource:held_*"],
        "datasets": []
    },
    "dedup": {
        "secondary": ["crossfit", "exmix", "t5"]
    },
    "leakage": {
        "ngram": 13,
        "threshold": 0.01,
        "policy": "drop_train",
        "template_fraction": 0.5,
        "max_train_instances": None
    },
    "taxonomy": {
        "categories": [
            "Question Answering", "Textual Entailment", "Paraphrasing", "Misc.", "Logical Reasoning",
            "Sentiment Analysis", "Language Modeling"
        ],
        "fallback": "Misc.",
        "overrides": {
            "bigbench:special_*": "Sentiment Analysis"
        },
        "datasets": {
            "super_glue": "Question Answering",
            "super_glue/rte": "Textual Entailment",
            "glue_mrpc": "Paraphrasing"
        },
        "keywords": {
            "logical reasoning": "Logical Reasoning",
            "reading comprehension": "Question Answering"
        },
    },
}


def _config(tmp_path, changes=None, name="bench.yaml"):
  data = copy.deepcopy(BASE_CONFIG)
  for dotted, value in (changes or {}).items():
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
      node = node[key]
    if value is _DELETE:
      del node[last]
    else:
      node[last] = value
  path = tmp_path / name
  path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
  return bench_config.load_config(path)


_DELETE = object()


def _words(tag, i, n=14):
  """A distinct n-word text for instance i of a task."""
  return " ".join(f"{tag}{i}x{k}" for k in range(n))


def make_task(benchmark, local, num, dataset="", categories=(), kind=records.GENERATION, texts=None, fail_at=None):
  texts = texts or [_words(local, i) for i in range(num)]
  instances = tuple(records.Instance(id=f"{local}-{i}", input=t, targets=(f"answer {i}",)) for i, t in enumerate(texts))

  def open_instances():
    for i, instance in enumerate(instances):
      if fail_at is not None and i == fail_at:
        raise records.SourceError(f"/src/{benchmark}/{local}", f"instance {i}: missing field 'output'")
      yield instance

  return records.TaskSource(name=records.task_name(benchmark, local), benchmark=benchmark, dataset=dataset or local,
                            categories=tuple(categories), definition="", demonstrations=(),
                            path=f"/src/{benchmark}/{local}", kind=kind, open_instances=open_instances, format="test")


# ---------------------------------------------------------------------------------------------------------------
# Config.


def test_bench_yaml_declares_the_opt_iml_recipe():
  config = bench_config.load_config(BENCH_YAML)
  shares = {b: c.share for b, c in config.benchmarks.items()}
  assert shares == {
      "sni": 25,
      "promptsource": 45,
      "flan": 20,
      "crossfit": 4,
      "exmix": 2,
      "t5": 2,
      "unifiedskg": 2,
      "reasoning": 1,
      "pretraining": 5,
      "bigbench": 0
  }
  assert {b for b, c in config.benchmarks.items() if c.fixed_share} == {"reasoning", "pretraining"}
  assert config.benchmarks["flan"].max_examples_per_task == 30_000
  assert (config.max_examples_per_task, config.max_eval_instances) == (100_000, 100)
  assert (config.rates.method, config.rates.cap) == ("examples_proportional", 4096)
  assert set(config.held_out.categories) == {"Textual Entailment", "Coreference Resolution", "Dialogue Act Recognition"}
  assert (config.leakage.ngram, config.leakage.threshold, config.leakage.policy) == (13, 0.01, "drop_train")
  assert config.dedup_secondary == ("crossfit", "exmix", "t5")
  assert len(config.taxonomy.categories) == 76 + 3  # SNI's 76 task types + three for other sources
  assert config.echo()["sha256"] and config.echo()["data"]["name"] == "optiml_bench"


def test_bench_yaml_covers_the_real_p3_datasets_and_sni_categories(shared_dir):
  config = bench_config.load_config(BENCH_YAML)
  sni_categories = set()
  for path in (shared_dir / "data" / "natural-instructions" / "tasks").glob("*.json"):
    sni_categories.update(json.loads(path.read_text(encoding="utf-8"))["Categories"])
  assert sni_categories <= set(config.taxonomy.categories)
  for stem in ("glue_mrpc_equivalent", "cnn_dailymail_3_0_0_tldr_summary", "paws_labeled_final_Meaning"):
    task = make_task("promptsource", stem, 1, dataset=stem)
    assert catalog.categorize(task, config)[1], stem


@pytest.mark.parametrize("change, message", [
    ({
        "benchmarks.foo": {
            "share": 3
        }
    }, r"benchmarks\.foo: unknown benchmark"),
    ({
        "colour": 1
    }, r"colour: unknown key"),
    ({
        "benchmarks.sni": {
            "share": "a lot"
        }
    }, r"benchmarks\.sni\.share: expected number"),
    ({
        "benchmarks.sni": {
            "share": 1,
            "weight": 2
        }
    }, r"benchmarks\.sni\.weight: unknown key"),
    ({
        "held_out.categories": ["Dialogue Act Recognition"]
    }, r"held_out\.categories: category 'Dialogue Act"),
    ({
        "leakage.policy": "drop_both"
    }, r"leakage\.policy: 'drop_both' is not one of"),
    ({
        "dedup.secondary": ["unifiedskg"]
    }, r"dedup\.secondary: benchmark 'unifiedskg' is not declared"),
    ({
        "limits.max_eval_instances": 0
    }, r"limits\.max_eval_instances: must be >= 1"),
    ({
        "taxonomy.datasets": {
            "glue/mrpc": "Paraphrasing",
            "glue_mrpc": "Paraphrasing"
        }
    }, r"same key as"),
    ({
        "taxonomy.categories": _DELETE
    }, r"taxonomy\.categories: missing required key"),
    ({
        "rates.method": "temperature"
    }, r"rates\.method"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
  with pytest.raises(bench_config.ConfigError, match=message) as info:
    _config(tmp_path, change)
  assert str(tmp_path / "bench.yaml") in str(info.value)


def test_malformed_yaml(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("benchmarks: [unclosed\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError, match="not valid YAML"):
    bench_config.load_config(path)


def test_a_definition_extends_another_and_overrides_what_it_names(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copy(resources.find_task_file("optiml_bench.yaml"), tmp_path / "optiml_bench.yaml")
  (tmp_path / "child.yaml").write_text(
      "extends: optiml_bench.yaml\nname: child\nheld_out:\n  categories: [Paraphrasing]\nrates:\n  cap: 10\n",
      encoding="utf-8")
  base, child = (bench_config.load_config(tmp_path / n) for n in ("optiml_bench.yaml", "child.yaml"))
  assert child.name == "child" and child.held_out.categories == ("Paraphrasing",)  # a list is replaced whole
  assert child.rates.cap == 10 and child.rates.method == base.rates.method  # a mapping merges key by key
  assert child.benchmarks == base.benchmarks and child.taxonomy == base.taxonomy
  assert child.sha256 != base.sha256
  # The shipped one: the paper's bench with more categories held out.
  shipped = bench_config.load_config(resources.find_task_file("reproduce_small.yaml"))
  assert set(base.held_out.categories) < set(shipped.held_out.categories)
  (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError, match=r"loop.yaml: extends: .*extends itself"):
    bench_config.load_config(tmp_path / "loop.yaml")
  (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError, match=r"orphan.yaml: extends: .*nowhere.yaml not found"):
    bench_config.load_config(tmp_path / "orphan.yaml")


def test_custom_benchmark_must_be_marked(tmp_path):
  config = _config(tmp_path, {"benchmarks.mydata": {"share": 3, "custom": True}})
  assert config.benchmarks["mydata"].custom


# ---------------------------------------------------------------------------------------------------------------
# Categories and roles.


def test_categorize_order(tmp_path):
  config = _config(tmp_path)
  cases = [
      (make_task("bigbench", "special_x", 1, categories=["logical reasoning"]), "Sentiment Analysis"),  # override
      (make_task("pretraining", "web", 1, categories=["Question Answering"]), "Language Modeling"),  # fixed
      (make_task("sni", "task1", 1, categories=["question answering"]), "Question Answering"),  # raw = taxonomy
      (make_task("promptsource", "rte_t", 1, dataset="super_glue/rte"), "Textual Entailment"),  # longest prefix
      (make_task("promptsource", "cb_t", 1, dataset="super_glue/cb"), "Question Answering"),  # shorter prefix
      (make_task("promptsource", "m", 1, dataset="GLUE-MRPC"), "Paraphrasing"),  # normalized
      (make_task("bigbench", "b", 1, categories=["reading comprehension", "logical reasoning"]),
       "Logical Reasoning"),  # keyword priority follows the config, not the task
  ]
  for task, expected in cases:
    assert catalog.categorize(task, config) == (expected, True), task.name
  assert catalog.categorize(make_task("bigbench", "z", 1, categories=["zero-shot"]), config) == ("Misc.", False)


def test_split_counts_rule():
  assert catalog.split_counts("train", records.GENERATION, 100, 3, 30, 4) == (30, 3)
  assert catalog.split_counts("train", records.GENERATION, 4, 3, 30, 4) == (2, 2)  # at most half held out
  assert catalog.split_counts("train", records.LANGUAGE_MODELING, 10, 3, 30, 4) == (10, 0)
  assert catalog.split_counts("held_out_task", records.GENERATION, 100, 3, 30, 4) == (0, 4)
  assert catalog.split_counts("held_out_category", records.GENERATION, 2, 3, 30, 4) == (0, 2)
  # Repeats (k, j) of a held-out instance j (j < 3) after the held-out ones do not train; others do.
  repeats = [(1, 0), (5, 0), (6, 2), (7, 3), (9, 1)]  # (1, 0) is held out itself, (7, 3) repeats a trained one
  assert catalog.split_counts("train", records.GENERATION, 100, 3, 300, 4, repeats) == (94, 3)
  assert catalog.split_counts("train", records.GENERATION, 100, 3, 30, 4, repeats) == (30, 3)


# ---------------------------------------------------------------------------------------------------------------
# Build.


def _sources():
  leaked_eval = _words("task_test", 1)
  return [
      make_task("sni", "task_train_a", 100, dataset="quoref", categories=["Question Answering"]),
      make_task("sni", "task_train_b", 10, categories=["Question Answering"]),
      make_task("sni", "task_test", 8, categories=["Question Answering"]),
      make_task("sni", "task_te", 6, categories=["Textual Entailment"]),
      make_task("promptsource", "rte_template", 9, dataset="super_glue/rte"),
      make_task("promptsource", "mrpc_template", 12, dataset="glue/mrpc"),
      make_task("promptsource", "held_one", 5, dataset="glue/mrpc"),
      make_task("crossfit", "glue-mrpc", 20, dataset="glue-mrpc"),  # PromptSource has it: dropped
      make_task("crossfit", "rare", 20, dataset="rare_data"),
      make_task("t5", "rare_t5", 20, dataset="rare-data"),  # CrossFit (earlier secondary) has it: dropped
      make_task("exmix", "unique", 20, dataset="unique_data"),
      make_task("bigbench", "puzzle", 7, categories=["logical reasoning"]),
      make_task("pretraining", "web", 50, kind=records.LANGUAGE_MODELING),
      # Its training stream repeats an eval instance of sni:task_test.
      make_task("sni", "task_leaky", 10, categories=["Question Answering"],
                texts=[_words("leaky", i) for i in range(9)] + [leaked_eval]),
      make_task("sni", "task_broken", 5, categories=["Question Answering"], fail_at=3),
      make_task("sni", "task_empty", 0, categories=["Question Answering"]),
      make_task("sni", "task_train_b", 10, categories=["Question Answering"]),  # duplicate name
      records.Skipped("/src/sni/task_bad.json", "invalid JSON"),
  ]


SPLITS = {"train": ["task_train_a", "task_missing_1"], "test": ["task_test", "task_te", "task_missing_2"]}


@pytest.fixture
def built(tmp_path):
  return catalog.build(_config(tmp_path), _sources(), SPLITS), {
      t.name: t for t in _sources() if isinstance(t, records.TaskSource)
  }


def test_roles(built):
  cat, _ = built
  roles = {t.name: t.role for t in cat.tasks}
  assert roles["sni:task_te"] == roles["promptsource:rte_template"] == "held_out_category"
  assert roles["sni:task_test"] == roles["bigbench:puzzle"] == roles["promptsource:held_one"] == "held_out_task"
  for name in ("sni:task_train_a", "sni:task_train_b", "promptsource:mrpc_template", "crossfit:rare", "exmix:unique",
               "pretraining:web"):
    assert roles[name] == "train", name


def test_held_out_tasks_never_trained_and_rates_sum_to_one(built):
  cat, _ = built
  for t in cat.tasks:
    if t.role != "train":
      assert (t.rate, t.num_examples) == (0.0, 0), t.name
      assert t.num_eval_instances == min(t.num_instances, 4)
    else:
      assert t.rate > 0, t.name
  assert sum(t.rate for t in cat.tasks) == pytest.approx(1.0)
  assert sum(t.rate for t in cat.tasks if t.benchmark == "pretraining") == pytest.approx(0.05)


def test_held_out_instances_never_in_the_training_stream(built):
  cat, sources = built
  for entry in cat.tasks:
    task = sources[entry.name]
    evals = [i.id for i in catalog.eval_instances(entry, task)]
    trains = [i.id for i in catalog.train_instances(entry, task)]
    all_ids = [i.id for i in task.instances()]
    assert evals == all_ids[:entry.num_eval_instances]
    assert not set(evals) & set(trains)
    assert len(trains) == entry.num_examples
    if entry.role == "train":
      assert trains == all_ids[entry.num_eval_instances:entry.num_eval_instances + entry.num_examples]
  big = cat.by_name()["sni:task_train_a"]
  assert (big.num_eval_instances, big.num_examples) == (3, 30)  # capped at max_examples_per_task


def test_dataset_of_secondary_benchmarks_kept_once(built):
  cat, _ = built
  names = {t.name for t in cat.tasks}
  assert "crossfit:glue-mrpc" not in names and "crossfit:glue_mrpc" not in names
  assert "t5:rare_t5" not in names and "crossfit:rare" in names
  reasons = {d["name"]: d["reason"] for d in cat.dropped}
  assert "promptsource" in reasons["crossfit:glue_mrpc"]
  assert "crossfit" in reasons["t5:rare_t5"]
  secondary_datasets = [
      bench_config.normalize(t.dataset) for t in cat.tasks if t.benchmark in ("crossfit", "exmix", "t5")
  ]
  all_other = {bench_config.normalize(t.dataset) for t in cat.tasks if t.benchmark not in ("crossfit", "exmix", "t5")}
  assert len(secondary_datasets) == len(set(secondary_datasets)) and not set(secondary_datasets) & all_other


def test_leakage_drops_the_train_task(built):
  cat, _ = built
  assert "sni:task_leaky" not in cat.by_name()
  (pair,) = cat.leakage
  assert (pair["train_task"], pair["eval_task"], pair["hit_instances"],
          pair["eval_instances"]) == ("sni:task_leaky", "sni:task_test", 1, 4)
  assert pair["action"] == "dropped train task"
  assert any(d["name"] == "sni:task_leaky" and "leakage" in d["reason"] for d in cat.dropped)


def test_leakage_report_policy_keeps_both(tmp_path):
  cat = catalog.build(_config(tmp_path, {"leakage.policy": "report"}), _sources(), SPLITS)
  assert cat.by_name()["sni:task_leaky"].rate > 0 and cat.leakage[0]["action"] == "reported"


def test_skipped_and_missing_split_tasks(built):
  cat, _ = built
  reasons = {s.path: s.reason for s in cat.skipped}
  assert reasons["/src/sni/task_broken"] == "instance 3: missing field 'output'"
  assert reasons["/src/sni/task_empty"] == "no instances"
  assert reasons["/src/sni/task_bad.json"] == "invalid JSON"
  assert "duplicate task name sni:task_train_b" in reasons["/src/sni/task_train_b"]
  assert cat.missing_split_tasks == {"train": ["task_missing_1"], "test": ["task_missing_2"]}
  assert "SNI test split: 1 listed task(s) absent" in catalog.summary(cat)


def test_undeclared_benchmark_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="benchmark 'flan', which .* does not declare"):
    catalog.build(_config(tmp_path), [make_task("flan", "anli_t1", 3)])


def test_sni_train_split_only(tmp_path):
  cat = catalog.build(_config(tmp_path, {"held_out.sni_train": "split"}), _sources(), SPLITS)
  assert "sni:task_train_b" not in cat.by_name() and "sni:task_train_a" in cat.by_name()
  # Without the split lists it cannot choose: an error rather than every SNI task trained.
  with pytest.raises(ValueError, match="held_out.sni_train: split .* no split was given"):
    catalog.build(_config(tmp_path, {"held_out.sni_train": "split"}), _sources(), None)


def test_save_is_atomic_and_load_round_trips(built, tmp_path):
  cat, _ = built
  out = tmp_path / "out" / "catalog"
  out.mkdir(parents=True)
  (out / "catalog.json").write_text("an earlier catalog")
  (out / "summary.txt").write_text("its summary")
  path = cat.save(out)
  assert path == out / "catalog.json" and (out / "summary.txt").read_text() != "its summary"
  assert sorted(p.name for p in out.parent.iterdir()) == ["catalog"]  # no temporary folder left
  data = json.loads(path.read_text(encoding="utf-8"))
  assert set(data) >= {"tasks", "leakage", "skipped", "dropped", "missing_split_tasks", "unmapped", "config"}
  assert set(data["tasks"][0]) >= {
      "name", "benchmark", "category", "role", "num_examples", "num_eval_instances", "rate", "format", "path",
      "dataset", "template", "kind"
  }
  loaded = catalog.load(out)
  assert loaded.tasks == cat.tasks and loaded.skipped == cat.skipped and loaded.leakage == cat.leakage


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no catalog here"):
    catalog.load(tmp_path)
  (tmp_path / "catalog.json").write_text(json.dumps({"tasks": [{"name": "x"}]}))
  with pytest.raises(ValueError, match=r"tasks\[0\] lacks field"):
    catalog.load(tmp_path)


def test_save_never_replaces_a_folder_that_holds_anything_but_a_catalog(built, tmp_path):
  """A catalog replaces its whole folder: a source checkout or notes given as --out by mistake must survive."""
  cat, _ = built
  tmp_path = tmp_path / "work"
  tmp_path.mkdir()
  (tmp_path / "notes.txt").write_text("important")
  with pytest.raises(ValueError, match=r"holds files that are not a catalog's \(notes.txt\)"):
    cat.save(tmp_path)
  assert (tmp_path / "notes.txt").read_text() == "important" and not (tmp_path / "catalog.json").exists()
  with pytest.raises(ValueError, match="is a file"):
    cat.save(tmp_path / "notes.txt")
  with pytest.raises(ValueError, match="notes.txt is a file, not a folder"):
    cat.save(tmp_path / "notes.txt" / "catalog")
  assert (tmp_path / "notes.txt").read_text() == "important"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temporary folder left
  (tmp_path / "empty").mkdir()
  assert cat.save(tmp_path / "empty") == tmp_path / "empty" / "catalog.json"


def _entry_json(built):
  cat, _ = built
  return json.loads(json.dumps(dataclasses.asdict(cat.tasks[0])))


@pytest.mark.parametrize("data, message", [
    ("{\"tasks\": [", r"not a catalog's JSON \(Expecting value"),
    ({
        "tasks": [5]
    }, r"tasks\[0\]: expected an object, got 5"),
    ({
        "tasks": [],
        "skipped": [{
            "path": "a.json"
        }]
    }, r"skipped\[0\]: expected an object with 'path' and 'reason'"),
    ({
        "num_examples": "many"
    }, r"num_examples: expected int, got 'many'"),
    ({
        "rate": None
    }, r"rate: expected float, got None"),
    ({
        "rate": float("nan")
    }, r"must be finite and >= 0"),
    ({
        "category": 3
    }, r"category: expected str, got 3"),
    ({
        "raw_categories": "Sentiment"
    }, r"raw_categories: expected a list of strings"),
])
def test_load_names_the_file_entry_and_field_of_a_malformed_catalog(built, tmp_path, data, message):
  if isinstance(data, dict) and "tasks" not in data:
    data = {"tasks": [{**_entry_json(built), **data}]}
  (tmp_path / "catalog.json").write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
  with pytest.raises(ValueError, match=message) as error:
    catalog.load(tmp_path)
  assert str(tmp_path / "catalog.json") in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# Real data: SNI + P3 + BIG-bench samples.


def test_real_data_catalog(shared_dir):
  from optiml_jax.data import sources  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import sni  # pylint: disable=g-import-not-at-top

  data = shared_dir / "data"
  config = bench_config.load_config(BENCH_YAML)
  splits = sni.read_split(data / "natural-instructions")
  cat = catalog.build(
      config, sources.iter_all(sni_dir=data / "natural-instructions", p3_dir=data / "p3",
                               bigbench_dir=data / "bigbench"), splits)
  by_name = cat.by_name()
  assert {t.benchmark for t in cat.tasks} == {"sni", "promptsource", "bigbench"}
  assert sum(t.rate for t in cat.tasks) == pytest.approx(1.0)
  held_categories = set(config.held_out.categories)
  for t in cat.tasks:
    assert t.role in catalog.ROLES
    assert (t.role == "held_out_category") == (t.category in held_categories), t.name
    if t.role != "train":
      assert t.rate == 0.0 and t.num_examples == 0
    assert t.category in config.taxonomy.categories
  assert all(t.role != "train" for t in cat.tasks if t.benchmark == "bigbench")
  # Every SNI test task present is held out; absent ones are reported.
  present = {t.name for t in cat.tasks} | {d["name"] for d in cat.dropped}
  for name in splits["test"]:
    full = records.task_name("sni", name)
    if full in by_name:
      assert by_name[full].role != "train"
    else:
      assert name in cat.missing_split_tasks["test"] or full in present
  assert len(cat.missing_split_tasks["test"]) > 50  # the sample holds few of the 119 test tasks
  # Benchmark shares renormalised over the two present training benchmarks.
  rate_of = lambda b: sum(t.rate for t in cat.tasks if t.benchmark == b)
  assert rate_of("sni") == pytest.approx(25 / 70) and rate_of("promptsource") == pytest.approx(45 / 70)
  # The audit found the BIG-bench Hard copies inside SNI and dropped those training tasks.
  assert any(p["train_task"].startswith("sni:task17") and p["eval_task"].startswith("bigbench:") for p in cat.leakage)
  dropped = {d["name"] for d in cat.dropped}
  assert all(p["train_task"] in dropped and p["train_task"] not in by_name for p in cat.leakage)
  # Re-auditing the final catalog finds nothing over the threshold.
  reopened = {
      t.name: t for t in sources.iter_all(sni_dir=data / "natural-instructions", p3_dir=data / "p3", bigbench_dir=data /
                                          "bigbench") if isinstance(t, records.TaskSource)
  }
  eval_texts = {
      t.name: [catalog.instance_text(i)
               for i in catalog.eval_instances(t, reopened[t.name])] for t in cat.tasks if t.role != "train"
  }
  streams = {t.name: list(catalog.train_instances(t, reopened[t.name])) for t in cat.tasks if t.role == "train"}
  train_texts = ((name, map(catalog.instance_text, stream)) for name, stream in streams.items())
  assert leakage.audit(eval_texts, train_texts, config.leakage.threshold) == []
  # Each training stream holds num_examples instances, none a repeat of a held-out instance (P3's sample repeats
  # some held-out lines further down, e.g. duorc's title generation 14 of its 20).
  for name, stream in streams.items():
    entry, task = by_name[name], reopened[name]
    assert len(stream) == entry.num_examples, name
    held_out = catalog.held_out_answers(entry, task)
    assert not any(catalog.repeats_held_out(i, held_out) for i in stream), name
  assert by_name["promptsource:duorc_SelfRC_title_generation"].num_examples == 64 - 20 - 14
  text = catalog.summary(cat)
  assert "bigbench" in text and "held_out_category" in text and "unmapped (fallback category)" in text
  assert any("few_shot_nlg" in u["key"] for u in cat.unmapped)


# ---------------------------------------------------------------------------------------------------------------
# Aliases, per-benchmark caps, secondary datasets kept once, fallback into a held-out category, original tasks.

ALIASES = {
    "super_glue/rte": ["superglue-rte", "glue/rte", "glue_rte_v002"],
    "glue/qqp": ["glue-qqp", "qqp", "glue_qqp_v002"],
    "some_nli": ["some-nli-v2"],
}


def test_shipped_alias_table_joins_the_benchmarks_spellings():
  config = bench_config.load_config(BENCH_YAML)
  rte = config.canonical("super_glue/rte")
  for spelling in ("superglue-rte", "glue/rte", "glue-rte", "rte", "glue_rte_v002", "super_glue_rte_v102"):
    assert config.canonical(spelling) == rte, spelling  # CrossFit, TFDS/FLAN, ExMix/T5 spellings
  assert config.canonical("wino_grande") == config.canonical("winogrande/winogrande_xl") == "winogrande"
  assert config.canonical("not_aliased") == "not_aliased"
  # Every canonical name lands in the taxonomy through the dataset map (none falls back to Misc.).
  for canonical in set(config.aliases.values()):
    assert catalog._dataset_category(canonical, config.taxonomy.datasets), canonical  # pylint: disable=protected-access
  # The example: a CrossFit superglue-rte is Textual Entailment, a fully held-out category.
  task = make_task("crossfit", "superglue-rte", 30, dataset="superglue-rte")
  assert catalog.categorize(task, config) == ("Textual Entailment", True)


@pytest.mark.parametrize("change, message", [
    ({
        "aliases": {
            "a": ["x"],
            "b": ["X"]
        }
    }, r"aliases\.b: spelling 'X' \('x'\) is already an alias of 'a'"),
    ({
        "aliases": {
            "a": ["b"],
            "b": ["c"]
        }
    }, r"aliases\.a: spelling 'b' is itself a canonical entry"),
    ({
        "aliases": {
            "a": "x"
        }
    }, r"aliases\.a: expected a list of dataset spellings"),
    ({
        "rates.caps": {
            "flan": 10
        }
    }, r"rates\.caps\.flan: not a benchmark declared"),
    ({
        "rates.caps": {
            "sni": 0
        }
    }, r"rates\.caps\.sni: expected a positive int, got 0"),
    ({
        "held_out.unmapped_policy": "ignore"
    }, r"held_out\.unmapped_policy: expected one of \('error', 'hold_out'\)"),
])
def test_alias_cap_and_policy_errors_name_the_key(tmp_path, change, message):
  with pytest.raises(bench_config.ConfigError, match=message):
    _config(tmp_path, change)


def test_the_training_stream_passes_over_repeats_of_held_out_instances(tmp_path):
  """Sources repeat instances under other ids (P3 files repeat lines): a training instance with the input and
  answer of one of the task's held-out instances would train on a third-level evaluation answer, so it is left
  out; the same input with another answer is another instance, and trains."""
  texts = [_words("rep", i) for i in range(12)]
  texts[7] = "  " + texts[1] + "\n"  # the held-out instance 1 again, under another id and with other spacing
  texts[10] = texts[2]
  task = make_task("sni", "task_repeats", 12, categories=["Question Answering"], texts=texts)
  # make_task answers instance i with "answer i": give the repeats their held-out instance's answers, but one.
  instances = [
      dataclasses.replace(i, targets=(f"answer {k}",)) if k in (1, 2) else i
      for i, k in zip(task.instances(), [0, 1, 2, 3, 4, 5, 6, 1, 8, 9, 2, 11])
  ]
  instances[5] = dataclasses.replace(instances[5], input=texts[0])  # held-out 0's question, answer 5: trains
  task = dataclasses.replace(task, open_instances=lambda: iter(instances))
  cat = catalog.build(_config(tmp_path), [task], {})
  entry = cat.by_name()["sni:task_repeats"]
  assert (entry.role, entry.num_eval_instances, entry.num_examples) == ("train", 3, 7)
  evals = [i.id for i in catalog.eval_instances(entry, task)]
  trains = [i.id for i in catalog.train_instances(entry, task)]
  assert evals == [f"task_repeats-{i}" for i in range(3)]
  assert trains == [f"task_repeats-{i}" for i in (3, 4, 5, 6, 8, 9, 11)]
  registry_like = [i for i in instances[3:] if catalog.repeats_held_out(i, catalog.held_out_answers(entry, task))]
  assert [i.id for i in registry_like] == ["task_repeats-7", "task_repeats-10"]


def test_aliases_drive_dedup_categories_and_held_out_datasets(tmp_path):
  config = _config(tmp_path, {"aliases": ALIASES, "held_out.datasets": ["qqp"]})
  tasks = [
      make_task("promptsource", "rte_t", 9, dataset="super_glue/rte"),
      make_task("crossfit", "superglue-rte", 20, dataset="superglue-rte"),  # P3's RTE: dropped
      make_task("exmix", "glue_rte_v002", 20, dataset="glue_rte_v002"),  # also P3's RTE: dropped
      make_task("promptsource", "qqp_t", 9, dataset="glue/qqp"),
      make_task("sni", "task_q", 10, categories=["Question Answering"]),
  ]
  cat = catalog.build(config, tasks)
  assert set(cat.by_name()) == {"promptsource:rte_t", "promptsource:qqp_t", "sni:task_q"}
  reasons = {d["name"]: d["reason"] for d in cat.dropped}
  assert reasons["crossfit:superglue_rte"] == "duplicate dataset: 'superglue-rte' is also in promptsource"
  assert reasons["exmix:glue_rte_v002"] == "duplicate dataset: 'glue_rte_v002' is also in promptsource"
  # held_out.datasets names qqp: P3's glue/qqp is the same dataset.
  assert cat.by_name()["promptsource:qqp_t"].role == "held_out_task"
  # Without the alias table the CrossFit copy is neither de-duplicated nor mapped: it trains, in the fallback.
  plain = catalog.build(_config(tmp_path, name="plain.yaml"), tasks)
  assert plain.by_name()["crossfit:superglue_rte"].role == "train"
  assert plain.by_name()["crossfit:superglue_rte"].category == "Misc."
  assert "crossfit: superglue-rte" in [u["key"] for u in plain.unmapped]


def test_a_dataset_only_secondary_benchmarks_offer_is_kept_once(tmp_path):
  config = _config(tmp_path, {"aliases": ALIASES})
  tasks = [
      make_task("t5", "qqp", 20, dataset="qqp"),
      make_task("exmix", "glue_qqp_v002", 20, dataset="glue_qqp_v002"),
      make_task("crossfit", "glue-qqp", 20, dataset="glue-qqp"),
      make_task("crossfit", "qqp_again", 20, dataset="glue/qqp"),  # the same benchmark offering it twice
      make_task("sni", "task_q", 10, categories=["Question Answering"]),
  ]
  cat = catalog.build(config, tasks)
  kept = [t.name for t in cat.tasks if t.benchmark != "sni"]
  assert kept == ["crossfit:glue_qqp"]  # the first-listed secondary benchmark, its first task
  reasons = {d["name"]: d["reason"] for d in cat.dropped}
  assert reasons == {
      n: f"duplicate dataset: {d!r} is kept once, as crossfit:glue_qqp"
      for n, d in [("t5:qqp", "qqp"), ("exmix:glue_qqp_v002", "glue_qqp_v002"), ("crossfit:qqp_again", "glue/qqp")]
  }
  # Without CrossFit the next secondary benchmark keeps it; it is never dropped from all of them.
  cat = catalog.build(config, [t for t in tasks if t.benchmark != "crossfit"])
  assert [t.name for t in cat.tasks if t.benchmark != "sni"] == ["exmix:glue_qqp_v002"]


def test_training_task_falling_back_while_its_dataset_is_held_out_is_an_error(tmp_path):
  tasks = [
      # An SNI task of the held-out category names its source dataset ...
      make_task("sni", "task_nli", 10, dataset="some_nli", categories=["Textual Entailment"]),
      # ... which P3 spells differently; no dataset map covers it, so it falls back to Misc. (a secondary
      # benchmark's copy would be dropped as a duplicate of the SNI task's dataset first).
      make_task("promptsource", "some-nli-v2_t", 20, dataset="some-nli-v2"),
      make_task("sni", "task_q", 10, categories=["Question Answering"]),
  ]
  with pytest.raises(catalog.UnmappedHeldOutError) as info:
    catalog.build(_config(tmp_path, {"aliases": ALIASES}), tasks)
  message = str(info.value)
  for part in ("promptsource:some_nli_v2_t", "'some-nli-v2'", "'Textual Entailment'", "sni:task_nli", "Misc."):
    assert part in message, part
  # The documented alternative: hold the task out in that category.
  cat = catalog.build(_config(tmp_path, {"aliases": ALIASES, "held_out.unmapped_policy": "hold_out"}), tasks)
  entry = cat.by_name()["promptsource:some_nli_v2_t"]
  assert (entry.role, entry.category, entry.rate) == ("held_out_category", "Textual Entailment", 0.0)
  assert cat.unmapped == [{
      "key": "promptsource: some-nli-v2",
      "category": "Textual Entailment",
      "tasks": 1,
      "examples": ["promptsource:some_nli_v2_t"]
  }]
  # Known through the alias table alone: a spelling the taxonomy maps to the held-out category.
  aliases = {"rte_data": ["super_glue/rte", "rte-crossfit"]}
  with pytest.raises(catalog.UnmappedHeldOutError, match=r"crossfit:rte_crossfit.*'Textual Entailment'"):
    catalog.build(_config(tmp_path, {"aliases": aliases}), [
        make_task("crossfit", "rte-crossfit", 20, dataset="rte-crossfit"),
        make_task("sni", "task_q", 10, categories=["Question Answering"])
    ])


def test_templates_that_are_not_the_original_task_are_never_evaluated_on(tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  inverted = lambda task: dataclasses.replace(task, original_task=False, template="question_from_answer")
  tasks = [
      make_task("promptsource", "rte_answer", 9, dataset="super_glue/rte"),
      inverted(make_task("promptsource", "rte_question", 9, dataset="super_glue/rte")),  # held-out category
      inverted(make_task("promptsource", "held_question", 9, dataset="glue/mrpc")),  # held-out task
      inverted(make_task("promptsource", "mrpc_question", 9, dataset="glue/mrpc")),  # a training task
      make_task("sni", "task_q", 10, categories=["Question Answering"]),
  ]
  cat = catalog.build(_config(tmp_path), tasks)
  roles = {t.name: t.role for t in cat.tasks}
  assert roles == {
      "promptsource:rte_answer": "held_out_category",
      "promptsource:mrpc_question": "train",
      "sni:task_q": "train"
  }
  reasons = {d["name"]: d["reason"] for d in cat.dropped}
  assert set(reasons) == {"promptsource:rte_question", "promptsource:held_question"}
  assert all(r.startswith("not the original task: template 'question_from_answer'") for r in reasons.values())
  assert "not the original task: 2" in catalog.summary(cat)


def test_rates_caps_reach_the_catalog(tmp_path):
  tasks = [
      make_task("sni", "a", 13, categories=["Question Answering"]),
      make_task("sni", "b", 33, categories=["Question Answering"]),
      make_task("promptsource", "c", 13, dataset="glue/mrpc"),
      make_task("promptsource", "d", 33, dataset="glue/mrpc")
  ]
  # 3 held-out instances each: 10 and 30 training examples.
  rates_of = lambda cat: {t.name: t.rate for t in cat.tasks}
  plain = rates_of(catalog.build(_config(tmp_path), tasks))
  capped = rates_of(catalog.build(_config(tmp_path, {"rates.caps": {"promptsource": 10}}, name="c.yaml"), tasks))
  assert plain["sni:b"] / plain["sni:a"] == pytest.approx(3) == capped["sni:b"] / capped["sni:a"]
  assert plain["promptsource:d"] / plain["promptsource:c"] == pytest.approx(3)
  assert capped["promptsource:d"] == pytest.approx(capped["promptsource:c"])


# ---------------------------------------------------------------------------------------------------------------
# The bench definition's numbers and `extends` chains (bench_config.py), and the readers' inconsistent tasks in a
# build (sources/). Kept apart from the catalog tests above.


@pytest.mark.parametrize("change, key, expected", [
    ({
        "benchmarks.sni": {
            "share": float("inf")
        }
    }, "benchmarks.sni.share", "expected a finite number >= 0, got inf"),
    ({
        "benchmarks.sni": {
            "share": float("nan")
        }
    }, "benchmarks.sni.share", "expected a finite number >= 0, got nan"),
    ({
        "benchmarks.pretraining.share": float("-inf")
    }, "benchmarks.pretraining.share", "expected a finite number >= 0, got -inf"),
    ({
        "benchmarks.sni": {
            "share": -1
        }
    }, "benchmarks.sni.share", "expected a finite number >= 0, got -1"),
    ({
        "rates.temperature": float("nan")
    }, "rates.temperature", "expected a finite number > 0, got nan"),
    ({
        "rates.temperature": float("inf")
    }, "rates.temperature", "expected a finite number > 0, got inf"),
    ({
        "leakage.threshold": float("nan")
    }, "leakage.threshold", "expected a finite number in [0, 1), got nan"),
    ({
        "leakage.template_fraction": float("inf")
    }, "leakage.template_fraction", "expected a finite number in (0, 1], got inf"),
    ({
        "rates.cap": float("inf")
    }, "rates.cap", "expected int, got inf"),
    ({
        "rates.caps": {
            "sni": float("inf")
        }
    }, "rates.caps.sni", "expected a positive int, got inf"),
    ({
        "limits.max_examples_per_task": float("nan")
    }, "limits.max_examples_per_task", "expected int, got nan"),
])
def test_config_numbers_must_be_finite(tmp_path, change, key, expected):
  """YAML's .inf / .nan passed `share < 0` (and `temperature <= 0`) and ended as NaN rates in catalog.json."""
  with pytest.raises(bench_config.ConfigError) as error:
    _config(tmp_path, change)
  assert str(error.value) == f"{tmp_path / 'bench.yaml'}: {key}: {expected}"


def test_config_fixed_shares_over_the_whole_mixture_name_the_file(tmp_path):
  path = tmp_path / "bench.yaml"
  with pytest.raises(bench_config.ConfigError) as error:
    _config(tmp_path, {"benchmarks.pretraining.share": 101})
  assert str(error.value) == (f"{path}: benchmarks.pretraining.share: the fixed shares pretraining: 101 add up to "
                              "101%, over 100% of the mixture")
  with pytest.raises(bench_config.ConfigError) as error:
    _config(tmp_path, {
        "benchmarks.pretraining.share": 50,
        "benchmarks.reasoning": {
            "share": 50.5,
            "fixed_share": True
        }
    })
  assert str(error.value) == (f"{path}: benchmarks: the fixed shares pretraining: 50, reasoning: 50.5 add up to "
                              "100.5%, over 100% of the mixture")
  config = _config(tmp_path, {
      "benchmarks.pretraining.share": 95,
      "benchmarks.reasoning": {
          "share": 5,
          "fixed_share": True
      }
  })
  assert config.benchmarks["reasoning"].share + config.benchmarks["pretraining"].share == 100  # exactly all: allowed


def test_config_extends_cycles_name_the_chain(tmp_path):
  (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(tmp_path / "loop.yaml")
  assert str(error.value) == f"{tmp_path / 'loop.yaml'}: extends: loop.yaml: the file extends itself"
  (tmp_path / "top.yaml").write_text("extends: a.yaml\n", encoding="utf-8")
  (tmp_path / "a.yaml").write_text("extends: b.yaml\n", encoding="utf-8")
  (tmp_path / "b.yaml").write_text("extends: ./a.yaml\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(tmp_path / "top.yaml")  # top.yaml starts the chain but is no part of the cycle
  a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
  assert str(error.value) == f"{b}: extends: ./a.yaml: a cycle of extends: {a} -> {b} -> {a}"


def test_config_nested_too_deeply_is_a_config_error(tmp_path):
  (tmp_path / "deep.yaml").write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError, match=r"deep.yaml: \(file\): not valid YAML: nested too deeply"):
    bench_config.load_config(tmp_path / "deep.yaml")


@pytest.mark.parametrize("section, value, got", [
    ("held_out", [], "list"),
    ("leakage", False, "bool"),
    ("limits", 0, "int"),
    ("dedup", "", "str"),
])
def test_config_a_falsy_section_of_the_wrong_type_is_refused(tmp_path, section, value, got):
  """`held_out: []` was read as an empty section: no category held out, and the zero-shot numbers contaminated."""
  with pytest.raises(bench_config.ConfigError) as error:
    _config(tmp_path, {section: value})
  assert str(error.value) == f"{tmp_path / 'bench.yaml'}: {section}: expected a mapping, got {got}"


def test_config_a_wrong_section_in_an_extending_file_is_refused(tmp_path):
  # The review's case: a file extending the paper's bench held out no category at all.
  assert _config(tmp_path, {"dedup": None}).dedup_secondary == ()  # null (`dedup:`) is still an empty section
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copy(resources.find_task_file("optiml_bench.yaml"), tmp_path / "optiml_bench.yaml")
  (tmp_path / "falsy.yaml").write_text("extends: optiml_bench.yaml\nheld_out: []\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(tmp_path / "falsy.yaml")
  assert str(error.value) == f"{tmp_path / 'falsy.yaml'}: held_out: expected a mapping, got list"


def test_config_duplicate_keys_are_refused_with_their_lines(tmp_path):
  """YAML keeps the last of two equal keys: a first `held_out:` adding a category was dropped silently."""
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copy(resources.find_task_file("optiml_bench.yaml"), tmp_path / "optiml_bench.yaml")
  path = tmp_path / "dup.yaml"
  path.write_text(
      "extends: optiml_bench.yaml\nheld_out:\n  categories: [Question Answering]\nheld_out:\n"
      "  sni_test_split: true\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(path)
  assert str(error.value) == f"{path}: held_out: duplicate key (line 4; first on line 2): YAML keeps only the last"
  path.write_text("extends: optiml_bench.yaml\nrates: {cap: 10, temperature: 2, cap: 20}\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(path)
  assert str(error.value) == f"{path}: rates.cap: duplicate key (line 2; first on line 2): YAML keeps only the last"
  # In the file that is extended: that file and its line are named.
  (tmp_path / "base.yaml").write_text("name: a\nname: b\n", encoding="utf-8")
  path.write_text("extends: base.yaml\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError) as error:
    bench_config.load_config(path)
  assert str(error.value) == (f"{tmp_path / 'base.yaml'}: name: duplicate key (line 2; first on line 1): YAML keeps "
                              "only the last")
  # The same key in two mappings, and a YAML merge key, are no duplicates.
  path.write_text(
      "extends: optiml_bench.yaml\nx: &defaults {cap: 10}\nrates:\n  <<: *defaults\n  cap: 20\n"
      "leakage: {ngram: 13}\n", encoding="utf-8")
  with pytest.raises(bench_config.ConfigError, match=r": x: unknown key"):  # parsed: the checks go on
    bench_config.load_config(path)


def _jsonl_lines(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_build_skips_tasks_whose_options_are_partial_or_miss_the_answer(tmp_path):
  """The generic JSONL and P3 readers now apply the SNI reader's rule, and the build reports such a task in
  `skipped` (file, line and field) instead of evaluating it as a multiple-choice task it is not."""
  from optiml_jax.data import sources  # pylint: disable=g-import-not-at-top
  crossfit, p3 = tmp_path / "crossfit", tmp_path / "p3"
  crossfit.mkdir()
  p3.mkdir()
  colours = ["red", "blue", "green"]
  _jsonl_lines(crossfit / "colours.jsonl", [{
      "src": f"Which colour is item {i} of the crossfit quiz?",
      "tgt": colours[i % 3],
      "options": colours
  } for i in range(12)])
  _jsonl_lines(crossfit / "colours_partial.jsonl", [{
      "src": f"Partial options quiz question number {i}?",
      "tgt": colours[i % 3],
      **({
          "options": colours
      } if i != 7 else {})
  } for i in range(12)])
  _jsonl_lines(crossfit / "colours_missing.jsonl", [{
      "src": f"Missing answer quiz question number {i}?",
      "tgt": "purple" if i == 4 else colours[i % 3],
      "options": colours
  } for i in range(12)])
  topics = ["World", "Sports", "Business"]
  _jsonl_lines(p3 / "ag_news_classify.jsonl", [{
      "inputs_pretokenized": f"News article number {i} of the day: which topic?",
      "targets_pretokenized": topics[i % 3],
      "answer_choices": topics
  } for i in range(12)])
  _jsonl_lines(p3 / "ag_news_recall.jsonl", [{
      "inputs_pretokenized": f"Recall article number {i}: which topic?",
      "targets_pretokenized": topics[i % 3],
      **({
          "answer_choices": topics
      } if i < 10 else {})
  } for i in range(12)])
  cat = catalog.build(_config(tmp_path), sources.iter_all(p3_dir=p3, jsonl_dirs=[("crossfit", crossfit)]))
  assert sorted(cat.by_name()) == ["crossfit:colours", "promptsource:ag_news_classify"]
  assert {t.kind for t in cat.tasks} == {records.MULTIPLE_CHOICE}
  reasons = {pathlib.Path(s.path).name: s.reason for s in cat.skipped}
  assert reasons == {
      "ag_news_recall.jsonl": ("line 11: no 'answer_choices', but the task is multiple choice (line 1 has "
                               "'answer_choices'); a multiple-choice task needs 'answer_choices' on every line"),
      "colours_partial.jsonl": ("line 8: no 'options', but the task is multiple choice (line 1 has 'options'); a "
                                "multiple-choice task needs 'options' on every line"),
      "colours_missing.jsonl": ("line 5: field 'options': none of ['red', 'blue', 'green'] is a reference output "
                                "['purple']"),
  }
  assert {s.path for s in cat.skipped} == {
      str(p3 / "ag_news_recall.jsonl"),
      str(crossfit / "colours_partial.jsonl"),
      str(crossfit / "colours_missing.jsonl")
  }


def test_the_sample_s_repeated_p3_lines_never_train_a_held_out_answer(shared_dir):
  """duorc_SelfRC_title_generation of the P3 sample repeats 14 of its 20 held-out (input, answer) lines further down;
  they would train on the third level's answers. Its other training lines stay."""
  path = shared_dir / "data" / "p3" / "data_per_template" / "duorc_SelfRC_title_generation.jsonl"
  task = promptsource.read_task(path)
  num = sum(1 for _ in task.instances())
  entry = catalog.CatalogEntry(name=task.name, benchmark="promptsource", category="Misc.", role=catalog.TRAIN,
                               num_examples=num - 20, num_eval_instances=20, rate=1.0, format="promptsource",
                               path=str(path), dataset=task.dataset, template="", kind=task.kind, num_instances=num)
  held_out = {(i.input.strip(), i.targets[0].strip()) for i in catalog.eval_instances(entry, task)}
  window = list(task.instances())[20:]
  trains = list(catalog.train_instances(entry, task))
  assert sum((i.input.strip(), i.targets[0].strip()) in held_out for i in window) == 14
  assert not any((i.input.strip(), i.targets[0].strip()) in held_out for i in trains)
  assert len(trains) == len(window) - 14


def test_another_tasks_held_out_instance_is_left_out_of_a_training_stream(tmp_path):
  """Tasks of one dataset render the same examples, not always in the same order: template B's line 7 is the
  example template A holds out as its instance 1 (third level), so B does not train on it. B's own held-out
  instances, and A's other lines, are untouched; the catalog records which line left and counts the rest."""
  pair = lambda k: _words("pair", k)  # pylint: disable=unnecessary-lambda-assignment
  a = make_task("promptsource", "mrpc_generate_paraphrase", 12, dataset="glue_mrpc",
                texts=[f"Paraphrase the following sentence: {pair(k)}" for k in range(12)])
  b_texts = [f"Are these the same? {_words('other', k)}" for k in range(12)]
  b_texts[7] = f"Are these the same? {pair(1)}"
  b = make_task("promptsource", "mrpc_equivalent", 12, dataset="glue_mrpc", texts=b_texts)
  lone = make_task("sni", "task_lone", 12, categories=["Question Answering"], texts=[pair(k) for k in range(12)])
  cat = catalog.build(_config(tmp_path), [a, b, lone], {})
  entries = cat.by_name()
  entry_a, entry_b = entries["promptsource:mrpc_generate_paraphrase"], entries["promptsource:mrpc_equivalent"]
  assert (entry_b.role, entry_b.num_eval_instances, entry_b.excluded_instances, entry_b.num_examples) == ("train", 3,
                                                                                                          (7,), 8)
  assert [i.id for i in catalog.train_instances(entry_b, b)] == [f"mrpc_equivalent-{k}" for k in range(3, 12) if k != 7]
  assert entry_a.excluded_instances == () and entry_a.num_examples == 9
  # Another dataset's task (here one holding the same texts) is the 13-gram audit's business, not this rule's.
  assert entries["sni:task_lone"].excluded_instances == ()
  assert "another task's held-out instances: 1 in 1 task(s)" in catalog.summary(cat)
  cat.save(tmp_path / "cat")
  assert catalog.load(tmp_path / "cat").by_name()["promptsource:mrpc_equivalent"] == entry_b


def test_the_sample_s_mrpc_templates_never_train_on_each_other_s_held_out_pairs(shared_dir):
  """glue_mrpc_generate_paraphrase keeps only the positive pairs of MRPC, so its first 20 lines (held out) sit
  further down in its sibling templates, whose own first 20 lines are other pairs: 11 of them were trained on."""
  config = bench_config.load_config(BENCH_YAML)
  folder = shared_dir / "data" / "p3" / "data_per_template"
  tasks = [promptsource.read_task(p) for p in sorted(folder.glob("glue_mrpc_*.jsonl"))]
  by_name = {t.name: t for t in tasks}
  entries = catalog.build(config, tasks, {}).by_name()
  paraphrase = "promptsource:glue_mrpc_generate_paraphrase"
  held = [(i.input.split(":", 1)[1].strip(), i.targets[0])
          for i in catalog.eval_instances(entries[paraphrase], by_name[paraphrase])]
  siblings = [n for n, e in entries.items() if n != paraphrase and e.role == catalog.TRAIN]
  assert len(held) == 20 and len(siblings) >= 4
  for name in siblings:
    window = list(by_name[name].instances())[20:]
    trained = list(catalog.train_instances(entries[name], by_name[name]))
    holds = lambda lines: sum(any(s1 in t.input and s2 in t.input for t in lines) for s1, s2 in held)  # pylint: disable=unnecessary-lambda-assignment,cell-var-from-loop
    assert holds(window) == 11, name
    assert holds(trained) == 0, name
    assert len(trained) == len(window) - len(entries[name].excluded_instances)
  assert catalog.template_groups(entries)[paraphrase] == "promptsource:glue/mrpc"


def test_one_datasets_templates_share_the_sampling_cap(tmp_path):
  """OPT-IML's PromptSource tasks are datasets with 5.7 prompts each: two templates of a dataset weigh one capped
  task, where before each took the whole cap and the dataset's share grew with its number of templates."""
  templates = [
      dataclasses.replace(make_task("promptsource", f"mrpc_t{k}", 23, dataset="glue_mrpc"), template=f"t{k}")
      for k in range(2)
  ]
  lone = make_task("promptsource", "other_t", 23, dataset="glue_mrpc_other")
  entries = catalog.build(_config(tmp_path, {"rates.cap": 10}), [*templates, lone], {}).by_name()
  rate = {n: e.rate for n, e in entries.items()}
  assert entries["promptsource:mrpc_t0"].num_examples == 20  # 23 less 3 held out: each over the cap of 10
  assert rate["promptsource:mrpc_t0"] == pytest.approx(rate["promptsource:mrpc_t1"])
  assert rate["promptsource:mrpc_t0"] + rate["promptsource:mrpc_t1"] == pytest.approx(rate["promptsource:other_t"])
