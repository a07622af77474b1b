"""Tests of optiml_jax.evaluation.evaluator: task selection, checkpoints, and seqio evaluation end to end.

The model is a tiny randomly initialised OPT; every metric the evaluator reports through seqio is checked
against the same quantity computed directly with `inference.score_options` / `greedy_decode`.
"""

import dataclasses
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data.sources import sni
from optiml_jax.evaluation import evaluator
from optiml_jax.evaluation import inference
from optiml_jax.evaluation import metrics
from optiml_jax.models import opt

REPO = pathlib.Path(__file__).resolve().parents[2]
BIGBENCH_MC = ("human_organs_senses", "analytic_entailment", "emojis_emotion_prediction")  # the last graded
MAX_INSTANCES = 3


@pytest.fixture(scope="module")
def model():
  config = opt.OPTConfig.preset("tiny", dropout=0.0, max_position_embeddings=512)
  init = jax.jit(lambda key: opt.OPT(config).init(key, jnp.ones((1, 4), jnp.int32))["params"])
  params = init(jax.random.PRNGKey(0))
  return config, jax.device_get(params)


@pytest.fixture(scope="module")
def scorer(model):
  config, params = model
  return inference.Scorer(config, params, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def vocabulary():
  return vocab_lib.OPTVocabulary()


@pytest.fixture(scope="module")
def toy_catalog(tmp_path_factory, vocabulary):
  root = tmp_path_factory.mktemp("toy")
  sni_dir = toybench.write(root / "toy", seed=0, num_instances=30)
  built = catalog.build(bench_config.load_config(toybench.CONFIG_PATH), sources.iter_all(sni_dir=sni_dir),
                        sni.read_split(sni_dir))
  built.save(root / "catalog")
  registry.register_catalog(root / "catalog", vocabulary, shots=(0, 2), mixtures=False)
  return built


@pytest.fixture(scope="module")
def bigbench_catalog(shared_dir, tmp_path_factory, vocabulary):
  root = tmp_path_factory.mktemp("bigbench")
  for name in BIGBENCH_MC:
    shutil.copytree(shared_dir / "data" / "bigbench" / name, root / "bigbench" / name)
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(config, sources.iter_all(bigbench_dir=root / "bigbench"))
  built.save(root / "catalog")
  registry.register_catalog(root / "catalog", vocabulary, shots=(0,), mixtures=False)
  return built


def _entry(name, role, kind="generation", num_eval=10, benchmark="sni", category="Misc."):
  return catalog.CatalogEntry(name=name, benchmark=benchmark, category=category, role=role, num_examples=0,
                              num_eval_instances=num_eval, rate=0.0, format="sni", path=f"/x/{name}.json", dataset="",
                              template="", kind=kind, num_instances=num_eval)


def test_select_tasks_by_level_pattern_and_benchmark_with_clear_errors():
  seqio.TaskRegistry.remove("test_evaluator:user_task")
  seqio.TaskRegistry.add(
      "test_evaluator:user_task",
      source=seqio.FunctionDataSource(lambda split, shuffle_files: tf.data.Dataset.from_tensors({"x": 1}),
                                      splits=("validation",)), output_features={})
  bench = catalog.Catalog(tasks=[
      _entry("sni:a", catalog.TRAIN),
      _entry("sni:b", catalog.HELD_OUT_TASK),
      _entry("bigbench:c", catalog.HELD_OUT_CATEGORY, "multiple_choice", benchmark="bigbench"),
      _entry("sni:empty", catalog.HELD_OUT_TASK, num_eval=0),
      _entry("pretraining:web", catalog.TRAIN, "lm", 0)
  ])
  specs, failed = evaluator.select_tasks(bench, ["held_out_category", "held_out_task"], (0, 5))
  assert [(s.task, s.shots, s.level) for s in specs] == [("sni:b", 0, "held_out_task"), ("sni:b", 5, "held_out_task"),
                                                         ("bigbench:c", 0, "held_out_category"),
                                                         ("bigbench:c", 5, "held_out_category")]
  assert [s.seqio_name for s in specs
         ] == ["sni:b", "sni:b.5shot", "bigbench:c.score_eval", "bigbench:c.5shot.score_eval"]
  assert [(r.task, r.shots) for r in failed] == [("sni:empty", 0), ("sni:empty", 5)]
  assert "no evaluation instances" in failed[0].error

  specs, failed = evaluator.select_tasks(bench, evaluator.LEVELS, (0,),
                                         tasks=["sni:*", "test_evaluator:user_task", "sni:missing",
                                                "pretraining:web"], benchmarks=["sni"], max_instances=3)
  assert [(s.task, s.level, s.max_instances) for s in specs] == [("sni:a", "held_out_instances", 3),
                                                                 ("sni:b", "held_out_task", 3),
                                                                 ("test_evaluator:user_task", "custom", 3)]
  errors = {r.task: r.error for r in failed}
  assert "absent from the catalog" in errors["sni:missing"]
  assert "kind 'lm'" in errors["pretraining:web"] and "no evaluation instances" in errors["sni:empty"]
  with pytest.raises(ValueError, match="unknown level"):
    evaluator.select_tasks(bench, ["level_four"])


def _validation(name, n):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split="validation", shuffle=False)
  return list(ds.take(n).as_numpy_iterator())


def _option_credit(example):
  if example["options_scores"].size:
    return example["options_scores"].tolist()
  return [float(o in set(example["references"])) for o in example["options_pretokenized"]]


def test_bigbench_multiple_choice_tasks_run_end_to_end_as_t5x_would_score_them(bigbench_catalog, scorer):
  specs, failed = evaluator.select_tasks(bigbench_catalog, evaluator.LEVELS, (0,), max_instances=MAX_INSTANCES)
  assert not failed and sorted(s.task for s in specs) == sorted(f"bigbench:{n}" for n in BIGBENCH_MC)
  assert {s.kind for s in specs} == {"multiple_choice"}
  results = evaluator.evaluate_tasks(specs, scorer, max_new_tokens=4)
  for spec, result in zip(specs, results):
    assert result.error is None, result.error
    examples = _validation(spec.task, MAX_INSTANCES)
    prompts = [[2] + ex["inputs"].tolist() for ex in examples]
    options = [[o.tolist() for o in ex["options"]] for ex in examples]
    # What picking each option earns (`_option_credit`): its graded score (emojis_emotion_prediction's
    # target_scores, as BIG-bench's multiple_choice_grade credits it), else 1 for a reference and 0 for the others.
    earns = [_option_credit(ex) for ex in examples]
    assert any(0 < e < 1 for row in earns for e in row) == (spec.task == "bigbench:emojis_emotion_prediction")
    expected = {}
    for normalize, key in ((False, "accuracy"), (True, "accuracy_norm")):
      scores = inference.score_options(scorer.model, scorer.params, prompts, options, normalize)
      expected[key] = 100.0 * np.mean([e[int(np.argmax(s))] for e, s in zip(earns, scores)])
    # The score of a uniform guess: the mean option score (the share of right options when ungraded).
    expected["chance"] = 100.0 * np.mean([np.mean(e) for e in earns])
    assert result.num_instances == MAX_INSTANCES
    assert result.metrics == pytest.approx(expected), spec.task
    assert (result.metric, result.score) == ("accuracy", pytest.approx(expected["accuracy"]))
    assert result.level == {"bigbench:analytic_entailment": "held_out_category"}.get(spec.task, "held_out_task")


def test_generation_task_scores_the_greedy_decoding_and_counts_truncated_prompts(toy_catalog, model):
  config, params = model
  spec = evaluator.EvalTask("sni:task030_toy_entail_color", 2, "sni:task030_toy_entail_color.2shot", "sni",
                            "Textual Entailment", "held_out_category", "generation", max_instances=3)
  max_length, max_new = 64, 6
  short = inference.Scorer(config, params, batch_size=4, max_length=max_length, progress=False)
  result = evaluator.evaluate_task(spec, short, max_new_tokens=max_new)
  assert result.error is None, result.error
  examples = _validation(spec.seqio_name, 3)
  prompts = [[2] + ex["inputs"].tolist() for ex in examples]
  limit = max_length - max_new
  assert result.num_truncated == sum(len(p) > limit for p in prompts) > 0
  # A cut prompt keeps its BOS in front of its last tokens, as a training row does (formatting.fit_to_row).
  kept = [p if len(p) <= limit else [2] + p[len(p) - limit + 1:] for p in prompts]
  decoded = inference.greedy_decode(short.model, short.params, kept, max_new, max_length=max_length)
  vocabulary = vocab_lib.OPTVocabulary()
  predictions = [vocabulary.decode(tokens).strip() for tokens in decoded]
  references = [[r.decode() for r in ex["references"]] for ex in examples]
  assert result.metrics["rougeL"] == pytest.approx(metrics.rouge_l(references, predictions)["rougeL"])
  assert result.metrics["exact_match"] == pytest.approx(metrics.exact_match(references, predictions)["exact_match"])
  assert (result.metric, result.num_instances) == ("rougeL", 3)


def test_the_evaluator_hands_the_scorer_the_bos_of_the_task_s_tokenizer(toy_catalog, model):
  config, params = model
  seen = []

  class Spy(inference.Scorer):

    def score_fn(self, length_normalize=False, bos_id=None):
      seen.append(("score", bos_id))
      return super().score_fn(length_normalize, bos_id=bos_id)

    def predict_fn(self, max_new_tokens=256, eos_id=None, bos_id=None):
      seen.append(("predict", bos_id))
      return super().predict_fn(max_new_tokens, eos_id, bos_id=bos_id)

  spy = Spy(config, params, batch_size=4, max_length=64, progress=False)
  spec = evaluator.EvalTask("sni:task030_toy_entail_color", 0, "sni:task030_toy_entail_color", "sni",
                            "Textual Entailment", "held_out_category", "generation", max_instances=1)
  assert evaluator.evaluate_task(spec, spy, max_new_tokens=4).error is None
  assert seen == [("score", 2), ("predict", 2)]  # OPT's </s>, which the feature converter puts first


def test_k_shot_variants_without_demonstrations_are_noted(bigbench_catalog, toy_catalog):
  bench = catalog.Catalog(tasks=bigbench_catalog.tasks + toy_catalog.tasks)
  specs, _ = evaluator.select_tasks(bench, evaluator.LEVELS, (0, 2),
                                    tasks=["bigbench:human_organs_senses", "sni:task030_toy_entail_color"])
  notes = {(s.task, s.shots): s.note for s in evaluator.note_missing_demonstrations(specs, bench)}
  assert "no demonstration exists" in notes[("bigbench:human_organs_senses", 2)]  # all 42 instances are eval ones
  assert notes[("bigbench:human_organs_senses", 0)] == ""
  assert notes[("sni:task030_toy_entail_color", 2)] == ""  # SNI positive examples
  counted = {(s.task, s.shots): s.demonstrations for s in evaluator.note_missing_demonstrations(specs, bench)}
  assert counted[("bigbench:human_organs_senses", 2)] == 0 and counted[("sni:task030_toy_entail_color", 2)] > 0
  assert counted[("bigbench:human_organs_senses", 0)] is None  # 0-shot: nothing to count


def test_a_k_shot_variant_without_demonstrations_is_evaluated_but_not_aggregated(toy_catalog, scorer):
  spec = evaluator.EvalTask("sni:task030_toy_entail_color", 2, "sni:task030_toy_entail_color.2shot", "sni",
                            "Textual Entailment", "held_out_category", "generation", max_instances=1)
  assert evaluator.evaluate_task(spec, scorer, max_new_tokens=2).aggregated
  bare = dataclasses.replace(spec, demonstrations=0)
  result = evaluator.evaluate_task(bare, scorer, max_new_tokens=2)
  assert result.error is None and result.score is not None and not result.aggregated
  zero = dataclasses.replace(spec, shots=0, seqio_name="sni:task030_toy_entail_color", demonstrations=0)
  assert evaluator.evaluate_task(zero, scorer, max_new_tokens=2).aggregated


def _user_task(name, rows, vocabulary, metric_fns):

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_generator(
        lambda: ({
            "inputs": vocabulary.encode(i),
            "targets": vocabulary.encode(t) + [2]
        } for i, t in rows), output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32)
        })

  seqio.TaskRegistry.remove(name)
  features = {
      "inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)
  }
  return seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)),
                                output_features=features, metric_fns=metric_fns)


def test_a_users_own_seqio_task_is_scored_with_its_own_metric_and_bad_tasks_do_not_stop_the_run(scorer, vocabulary):

  def mean_log_likelihood(targets, scores):
    del targets
    return {"mean_log_likelihood": float(np.mean(scores))}

  rows = [("The capital of France is", " Paris"), ("Two plus two is", " four"), ("Red, green and", " blue")]
  _user_task("test_evaluator:own", rows, vocabulary, [mean_log_likelihood])
  _user_task("test_evaluator:empty", [], vocabulary, [mean_log_likelihood])
  specs = [
      evaluator.EvalTask(n, 0, n, "custom", "custom", "custom", "custom")
      for n in ("test_evaluator:not_registered", "test_evaluator:empty", "test_evaluator:own")
  ]
  missing, empty, own = evaluator.evaluate_tasks(specs, scorer)
  assert "is not registered" in missing.error and "is empty" in empty.error
  assert own.error is None, own.error
  expected = inference.score_options(scorer.model, scorer.params, [[2] + vocabulary.encode(i) for i, _ in rows],
                                     [[vocabulary.encode(t) + [2]] for _, t in rows])
  assert own.metric == "mean_log_likelihood"
  assert own.score == pytest.approx(np.mean([s[0] for s in expected]), rel=1e-5)
