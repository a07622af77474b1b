"""Tests of optiml_jax.data.registry: seqio Tasks from a catalog, splits, features, mixtures and their rates."""

import dataclasses
import itertools
import json
import pathlib
import sys

import gin
import numpy as np
import pytest
import seqio

from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import formatting
from optiml_jax.data import packing
from optiml_jax.data import rates
from optiml_jax.data import records
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data.sources import sni

REPO = pathlib.Path(__file__).resolve().parents[2]
EOS = 2
MC_TASK = "crossfit:quiz_mc"
GEN_TASK = "crossfit:capitals"
LM_TASK = "pretraining:web"
GRADED_TASK = "bigbench:intent_recognition"
GRADED_SCORES = {"play music": 1.0, "set an alarm": 0.25, "book a table": 0.0}


def write_graded_task(bigbench_dir: pathlib.Path, num_examples: int = 6) -> None:
  """GRADED_TASK under `bigbench_dir`: a BIG-bench multiple-choice task whose choices carry GRADED_SCORES (an
  evaluation-only task; also the bench cache's tests' graded task)."""
  graded = bigbench_dir / "intent_recognition"
  graded.mkdir(parents=True)
  (graded / "task.json").write_text(
      json.dumps({
          "name": "intent_recognition",
          "description": "Recognise the intent.",
          "keywords": ["multiple choice"],
          "examples": [{
              "input": f"Utterance {i}: put on some jazz in room {i}",
              "target_scores": GRADED_SCORES
          } for i in range(num_examples)]
      }), encoding="utf-8")


def _write_jsonl(path: pathlib.Path, rows) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """A small bench of four benchmarks (toy SNI tasks, a JSONL benchmark with a multiple-choice task, a BIG-bench
  task with graded choices, and pre-training text), built with the repository's tasks/optiml_bench.yaml and
  registered with 0 and 2 shots."""
  root = tmp_path_factory.mktemp("bench")
  sni_dir = toybench.write(root / "sni", seed=0, num_instances=60)
  jsonl_dir = root / "crossfit"
  jsonl_dir.mkdir()
  _write_jsonl(jsonl_dir / "quiz_mc.jsonl", [{
      "src": f"Quiz {i}: which colour is item number {i} painted in the catalogue?",
      "tgt": ["red", "blue", "green"][i % 3],
      "options": ["red", "blue", "green"]
  } for i in range(40)])
  _write_jsonl(jsonl_dir / "capitals.jsonl", [{
      "inputs": f"Country code {i} of the registry list: name its capital city please.",
      "targets": f"City {i}"
  } for i in range(30)])
  write_graded_task(root / "bigbench")
  text_dir = root / "text"
  text_dir.mkdir()
  (text_dir / "web.txt").write_text(
      "\n\n".join(f"Document {i} talks about the weather in town number {i}.\nIt has two lines." for i in range(30)) +
      "\n", encoding="utf-8")
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(
      config,
      sources.iter_all(sni_dir=sni_dir, bigbench_dir=root / "bigbench", jsonl_dirs=[("crossfit", jsonl_dir)],
                       text_dir=text_dir), sni.read_split(sni_dir))
  built.save(root / "catalog")
  vocabulary = vocab_lib.OPTVocabulary()
  registered = registry.register_catalog(root / "catalog", vocabulary, shots=(0, 2))
  return {
      "catalog": built,
      "dir": root / "catalog",
      "config": config,
      "vocab": vocabulary,
      "registered": registered,
      "entries": built.by_name()
  }


def _examples(name, split, sequence_length=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=sequence_length, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def _source_instances(entry):
  return list(sources.reopen(entry.format, entry.path, entry.benchmark).instances())


def test_every_catalog_task_is_registered_with_its_variants_and_registration_is_idempotent(bench):
  names = set(bench["registered"].tasks)
  for entry in bench["catalog"].tasks:
    assert entry.name in names and f"{entry.name}.2shot" in names
    task = seqio.TaskRegistry.get(entry.name)
    expected = (({"validation"} if entry.num_eval_instances else set()) |
                ({"train"} if entry.role == catalog.TRAIN else set()))
    assert set(task.splits) == expected, entry.name
  assert {e.role for e in bench["catalog"].tasks} == set(catalog.ROLES)
  # The evaluation's metrics ride on the Tasks: generation tasks are decoded and scored; others are not.
  assert seqio.TaskRegistry.get(GEN_TASK).predict_metric_fns
  assert not seqio.TaskRegistry.get(MC_TASK).metric_fns
  assert seqio.TaskRegistry.get(f"{MC_TASK}.2shot.score_eval").score_metric_fns
  again = registry.register_catalog(bench["dir"], bench["vocab"], shots=(0, 2))
  assert again == bench["registered"]
  assert set(bench["registered"].mixtures) == {registry.TRAIN_MIXTURE, registry.TRAIN_MIXTURE_UNIFORM}


def test_held_out_instances_never_reach_the_train_split(bench):
  for name in ("sni:task001_toy_add_small", GEN_TASK, MC_TASK):
    entry = bench["entries"][name]
    assert entry.role == catalog.TRAIN and entry.num_eval_instances > 0
    instances = _source_instances(entry)
    for variant in (name, f"{name}.2shot"):
      train = _examples(variant, "train")
      evals = _examples(variant, "validation")
      train_ids = [e["instance_id"].decode() for e in train]
      eval_ids = [e["instance_id"].decode() for e in evals]
      assert eval_ids == [i.id for i in instances[:entry.num_eval_instances]]
      assert train_ids == [i.id for i in instances[entry.num_eval_instances:][:entry.num_examples]]
      # Neither the training stream nor any demonstration ever shows an evaluation instance: no block of a
      # source (definition, demonstrations, example) is an evaluation instance other than the example itself.
      prompts = {
          i.id: {formatting.with_delimiter(i.input, d) for d in formatting.DELIMITERS}
          for i in instances[:entry.num_eval_instances]
      }
      for example in train + evals:
        own = example["instance_id"].decode()
        blocks = example["inputs_pretokenized"].decode().split(formatting.BLOCK_SEPARATOR)
        for instance_id, forbidden in prompts.items():
          if instance_id != own:
            for block in blocks:
              assert not any(block == f or block.startswith(f + " ") for f in forbidden), (variant, own, instance_id)
      if variant.endswith("shot"):
        assert all(len(e["inputs_pretokenized"].decode().split(formatting.BLOCK_SEPARATOR)) >= 3 for e in evals)


def test_held_out_task_has_only_validation(bench):
  entry = bench["entries"]["sni:task005_toy_add_large"]
  assert entry.role == catalog.HELD_OUT_TASK
  assert seqio.TaskRegistry.get(entry.name).splits == ("validation",)
  examples = _examples(f"{entry.name}.2shot", "validation")
  assert len(examples) == entry.num_eval_instances
  task = sources.reopen(entry.format, entry.path, entry.benchmark)
  # SNI demonstrations come from the task's positive examples, after the definition.
  text = examples[0]["inputs_pretokenized"].decode()
  assert text.startswith(task.definition)
  assert sum(d.input in text for d in task.demonstrations) == 2


def test_example_features_match_formatting_and_tokenization(bench):
  vocabulary = bench["vocab"]
  entry = bench["entries"][MC_TASK]
  task = sources.reopen(entry.format, entry.path, entry.benchmark)
  assert task.kind == records.MULTIPLE_CHOICE
  instances = _source_instances(entry)
  for example, instance in zip(_examples(MC_TASK, "validation"), instances):
    delimiter = formatting.choose_delimiter(registry.DEFAULT_SEED, MC_TASK, instance.id)
    source, target = formatting.format_example(task, instance, (), delimiter)
    inputs, targets = formatting.tokenize_example(vocabulary, source, target)
    assert example["inputs_pretokenized"].decode() == source
    assert example["targets_pretokenized"].decode() == target
    np.testing.assert_array_equal(example["inputs"], inputs)
    np.testing.assert_array_equal(example["targets"], targets)
    assert [r.decode() for r in example["references"]] == list(instance.targets)
    assert [o.decode() for o in example["options_pretokenized"]] == list(instance.options)
    options = example["options"]
    assert len(options) == len(instance.options) == 3
    for option_ids, option in zip(options, instance.options):
      assert list(option_ids) == vocabulary.encode(" " + option) + [EOS]
    assert any(list(o) == list(example["targets"]) for o in options)


def test_graded_option_scores_ride_with_the_options_of_validation_examples(bench):
  entry = bench["entries"][GRADED_TASK]
  instances = _source_instances(entry)
  assert entry.num_eval_instances == len(instances) == 6
  for variant in (GRADED_TASK, f"{GRADED_TASK}.2shot"):
    examples = _examples(variant, "validation")
    assert [e["instance_id"].decode() for e in examples] == [i.id for i in instances]
    for example, instance in zip(examples, instances):
      assert example["options_scores"].dtype == np.float32
      assert example["options_scores"].tolist() == [GRADED_SCORES[o] for o in instance.options]
      assert [o.decode() for o in example["options_pretokenized"]] == list(instance.options)
  # Ungraded options carry no scores, and training examples no option features at all.
  assert all(e["options_scores"].size == 0 for e in _examples(MC_TASK, "validation"))
  assert not any(k.startswith("options") for k in _examples(MC_TASK, "train")[0])
  mc = bench["entries"][MC_TASK]
  plain = next(registry.iter_examples(mc, registry.reopen_task(mc), "validation", 0, bench["vocab"]))
  assert plain["options_scores"].shape == (0,) and plain["options_scores"].dtype == np.float32


def test_score_eval_rows_of_a_graded_task_earn_their_option_s_score(bench):
  rows = _examples(f"{GRADED_TASK}.score_eval", "validation")
  instances = _source_instances(bench["entries"][GRADED_TASK])
  assert len(rows) == sum(len(i.options) for i in instances) == 18
  for row in rows:
    instance, option = (int(v) for v in row["idx"])
    text = instances[instance].options[option]
    assert row["targets_pretokenized"].decode() == text
    assert float(row["option_score"]) == GRADED_SCORES[text] and bool(row["is_correct"]) == (text == "play music")
  plain = _examples(f"{MC_TASK}.score_eval", "validation")
  assert plain and all(float(r["option_score"]) == float(r["is_correct"]) for r in plain)


def test_lm_task_trains_on_the_whole_text(bench):
  entry = bench["entries"][LM_TASK]
  assert entry.kind == records.LANGUAGE_MODELING and entry.role == catalog.TRAIN
  example = _examples(LM_TASK, "train")[0]
  assert example["inputs"].size == 0
  text = example["targets_pretokenized"].decode()
  assert text.startswith("Document 0 talks")
  assert list(example["targets"]) == bench["vocab"].encode(text.rstrip()) + [EOS]
  rows = list(packing.pad_examples([(example["inputs"], example["targets"])], 64))
  assert rows[0]["decoder_loss_weights"].sum() == example["targets"].size


def test_sequence_length_fits_each_example_to_one_row_cutting_the_prompt_from_the_left(bench):
  name = "sni:task001_toy_add_small.2shot"
  full = _examples(name, "train")
  cut = _examples(name, "train", {"inputs": 12, "targets": 3})  # rows of 15 positions; OPT feeds </s> first
  assert len(full) == len(cut)
  assert isinstance(seqio.TaskRegistry.get(name), registry.OptimlTask)
  assert any(f["inputs"].size + f["targets"].size > 15 for f in full)
  for f, c in zip(full, cut):
    np.testing.assert_array_equal(c["targets"], f["targets"])  # the whole target (these are short)
    np.testing.assert_array_equal(c["inputs"], f["inputs"][-(15 - f["targets"].size):])  # the prompt's end
  # More than 12 prompt tokens are kept (seqio's own trim would have cut inputs[:12] from the start), and any
  # split of the same 15 positions gives the same examples: only the sum counts.
  assert any(c["inputs"].size > 12 for c in cut)
  other_split = _examples(name, "train", {"inputs": 1, "targets": 14})
  for c, o in zip(cut, other_split):
    np.testing.assert_array_equal(c["inputs"], o["inputs"])
    np.testing.assert_array_equal(c["targets"], o["targets"])
  # A target longer than the row alone keeps its first tokens and its </s>, and no prompt ("City 7": 3 tokens).
  capitals = _examples(GEN_TASK, "train")
  for f, c in zip(capitals, _examples(GEN_TASK, "train", {"inputs": 1, "targets": 1})):
    assert f["targets"].size > 2
    assert c["inputs"].size == 0 and c["targets"].tolist() == [f["targets"][0], EOS]


def test_pre_training_text_is_split_into_row_sized_chunks(bench):
  entry = bench["entries"][LM_TASK]
  full = _examples(LM_TASK, "train")
  lengths = {"inputs": 3, "targets": 5}  # rows of 8 positions, BOS included: 8 tokens of text each
  chunked = _examples(LM_TASK, "train", lengths)
  assert len(full) == entry.num_examples and len(chunked) > 2 * len(full)
  by_document: dict[str, list] = {}
  for c in chunked:
    assert c["inputs"].size == 0 and 0 < c["targets"].size <= 8
    by_document.setdefault(c["instance_id"].decode(), []).append(c["targets"].tolist())
  assert list(by_document) == [f["instance_id"].decode() for f in full]  # documents in order, chunks together
  for f in full:
    chunks = by_document[f["instance_id"].decode()]
    assert list(itertools.chain(*chunks)) == f["targets"].tolist()  # the whole document, </s> at the very end only
    assert all(len(c) == 8 for c in chunks[:-1]) and all(EOS not in c for c in chunks[:-1])
  again = [c["targets"].tolist() for c in _examples(LM_TASK, "train", lengths)]
  assert again == list(itertools.chain(*by_document.values()))  # deterministic
  # Every token of the text is trained on, in rows of whole chunks: short last chunks pack together.
  rows = list(packing.pack_examples([(c["inputs"], c["targets"]) for c in chunked], 8))
  assert sum(int(r["decoder_loss_weights"].sum()) for r in rows) == sum(f["targets"].size for f in full)
  assert any(r["decoder_segment_ids"].max() >= 2 for r in rows)


def test_score_eval_rows_keep_each_option_whole(bench):
  name = f"{MC_TASK}.score_eval"
  assert isinstance(seqio.TaskRegistry.get(name), registry.OptimlTask)
  full = _examples(name, "validation")
  cut = _examples(name, "validation", {"inputs": 2, "targets": 4})  # rows of 6 positions
  assert len(full) == len(cut) > 0
  for f, c in zip(full, cut):
    np.testing.assert_array_equal(c["targets"], f["targets"])
    np.testing.assert_array_equal(c["inputs"], f["inputs"][-(6 - f["targets"].size):])
    assert c["inputs"].size > 2


def test_mixture_through_seqio_and_the_feature_converter(bench):
  # A few tasks of each kind (the whole training mixture reads the same way, only slower to start).
  registry.add_mixture("e_small_mix", ["sni:task001_toy_add_small.2shot", "sni:task022_toy_antonym", MC_TASK, LM_TASK],
                       shares={
                           "sni": 2,
                           "crossfit": 1,
                           "pretraining": 1
                       })
  lengths = {"inputs": 48, "targets": 16}
  ds = seqio.get_dataset("e_small_mix", lengths, packing.OptimlFeatureConverter(pack=True), dataset_split="train",
                         shuffle=True, num_epochs=None, seed=3, batch_size=4)
  batches = list(ds.take(3).as_numpy_iterator())
  for batch in batches:
    assert set(batch) == set(packing.MODEL_FEATURE_NAMES + packing.PACKING_FEATURE_NAMES)
    assert batch["decoder_target_tokens"].shape == (4, 64)
    assert (batch["decoder_segment_ids"].max(axis=1) >= 2).all()  # short examples share rows
    first = batch["decoder_positions"] == 0
    assert (batch["decoder_input_tokens"][first & (batch["decoder_segment_ids"] > 0)] == EOS).all()
  unpacked = seqio.get_mixture_or_task("e_small_mix").get_dataset(sequence_length=lengths, split="train", shuffle=True,
                                                                  seed=3, num_epochs=None)
  examples = list(unpacked.take(300).as_numpy_iterator())
  assert set(examples[0]) == {"inputs", "targets"}
  rows = list(packing.pad_examples([(e["inputs"], e["targets"]) for e in examples], 64))
  for e, row in zip(examples, rows):
    assert row["decoder_loss_weights"].sum() == e["targets"].size  # target tokens and </s> only


def test_training_mixture_rates_are_the_catalog_rates(bench):
  train = [e for e in bench["catalog"].tasks if e.role == catalog.TRAIN and e.num_examples > 0]
  assert {e.benchmark for e in train} == {"sni", "crossfit", "pretraining"}
  config = bench["config"]
  shares = {b: c.share for b, c in config.benchmarks.items()}
  fixed = [b for b, c in config.benchmarks.items() if c.fixed_share]
  expected = rates.examples_proportional({e.name: e.num_examples for e in train}, {e.name: e.benchmark for e in train},
                                         shares, config.rates.cap, config.rates.temperature, fixed)
  mixture = seqio.MixtureRegistry.get(registry.TRAIN_MIXTURE)
  assert {t.name for t in mixture.tasks} == set(expected)
  for task in mixture.tasks:
    assert mixture.get_rate(task) == pytest.approx(expected[task.name])
    assert mixture.get_rate(task) == pytest.approx(bench["entries"][task.name].rate)
  # Pre-training text is a fixed 5% of the mixture.
  assert sum(mixture.get_rate(t) for t in mixture.tasks if t.name.startswith("pretraining:")) == pytest.approx(0.05)
  uniform = seqio.MixtureRegistry.get(registry.TRAIN_MIXTURE_UNIFORM)
  expected_uniform = rates.uniform({e.name: e.num_examples for e in train}, {e.name: e.benchmark for e in train},
                                   shares, fixed)
  for task in uniform.tasks:
    assert uniform.get_rate(task) == pytest.approx(expected_uniform[task.name])


def test_add_mixture_by_benchmark_and_task_with_strategies(bench):
  sni_train = {e.name: e for e in bench["catalog"].tasks if e.benchmark == "sni" and e.role == catalog.TRAIN}
  mixture = registry.add_mixture("e_test_mix", ["sni", f"{GEN_TASK}.2shot"], shares={
      "sni": 3,
      "crossfit": 1
  }, cap=100, temperature=2.0)
  names = {t.name for t in mixture.tasks}
  assert names == set(sni_train) | {f"{GEN_TASK}.2shot"}
  counts = {n: e.num_examples for n, e in sni_train.items()}
  counts[f"{GEN_TASK}.2shot"] = bench["entries"][GEN_TASK].num_examples
  benchmark_of = {n: ("crossfit" if n.startswith("crossfit") else "sni") for n in counts}
  expected = rates.examples_proportional(counts, benchmark_of, {"sni": 3, "crossfit": 1}, 100, 2.0)
  for task in mixture.tasks:
    assert mixture.get_rate(task) == pytest.approx(expected[task.name])
  assert mixture.get_rate(seqio.TaskRegistry.get(f"{GEN_TASK}.2shot")) == pytest.approx(0.25)

  plain = registry.add_mixture("e_test_mix", [GEN_TASK, MC_TASK])  # same name again: replaced
  n_gen, n_mc = bench["entries"][GEN_TASK].num_examples, bench["entries"][MC_TASK].num_examples
  assert plain.get_rate(seqio.TaskRegistry.get(GEN_TASK)) == pytest.approx(n_gen / (n_gen + n_mc))
  uniform = registry.add_mixture("e_test_uniform", [GEN_TASK, MC_TASK], strategy="uniform")
  assert uniform.get_rate(seqio.TaskRegistry.get(MC_TASK)) == pytest.approx(0.5)

  with pytest.raises(ValueError, match="neither a registered catalog task nor a benchmark"):
    registry.add_mixture("e_bad", ["no_such_task"])
  with pytest.raises(ValueError, match="no training examples"):
    registry.add_mixture("e_bad", ["sni:task005_toy_add_large"])
  with pytest.raises(ValueError, match="unknown strategy"):
    registry.add_mixture("e_bad", ["sni"], strategy="random")


def test_mixture_registered_from_a_module_imported_by_gin(bench, tmp_path, monkeypatch):
  module = tmp_path / "e_user_mixtures.py"
  module.write_text(
      "from optiml_jax.data import registry\n"
      f"registry.register_catalog({str(bench['dir'])!r}, shots=(0,), mixtures=False)\n"
      "registry.add_mixture('e_gin_mix', ['crossfit'], shares={'crossfit': 1})\n", encoding="utf-8")
  monkeypatch.syspath_prepend(str(tmp_path))
  seqio.MixtureRegistry.remove("e_gin_mix")
  try:
    gin.parse_config("import e_user_mixtures")
  finally:
    gin.clear_config()
    sys.modules.pop("e_user_mixtures", None)
  mixture = seqio.get_mixture_or_task("e_gin_mix")
  assert {t.name for t in mixture.tasks} == {GEN_TASK, MC_TASK}


def test_shuffled_blocks_permutes_within_blocks_deterministically():
  items = list(range(25))
  out = list(registry.shuffled_blocks(items, 10, seed=4))
  assert out == list(registry.shuffled_blocks(items, 10, seed=4))
  assert out != list(registry.shuffled_blocks(items, 10, seed=5))
  for start in (0, 10, 20):
    assert sorted(out[start:start + 10]) == items[start:start + 10]
  assert out[:10] != items[:10]
  with pytest.raises(ValueError, match="block_size"):
    list(registry.shuffled_blocks(items, 0, seed=0))


@pytest.mark.parametrize("style", ["smollm2", "llama3", "llama2"])
def test_tasks_tokenize_with_another_tokenizer_and_its_bos_policy(bench, tiny_tokenizer, style):
  vocabulary = registry.default_vocabulary(tiny_tokenizer(style))
  assert isinstance(vocabulary, vocab_lib.HFVocabulary) and registry.default_vocabulary() == bench["vocab"]
  entry = bench["entries"][GEN_TASK]
  try:
    registry.register_task(entry, vocabulary)
    lengths = {"inputs": 64, "targets": 16}
    examples = _examples(GEN_TASK, registry.EVAL_SPLIT, lengths)  # fitted to rows of 80, as the converter's
    converter = packing.OptimlFeatureConverter.for_vocabulary(vocabulary, pack=False)
    rows = list(
        seqio.get_dataset(GEN_TASK, lengths, converter, dataset_split=registry.EVAL_SPLIT,
                          shuffle=False).as_numpy_iterator())
  finally:
    registry.register_task(entry, bench["vocab"])  # the other tests read the OPT registration
  assert len(rows) == len(examples) > 0
  budget = 80 if vocabulary.bos_id is not None else 81  # tokens in 80 positions: the BOS takes one, if any
  for example, row in zip(examples, rows):
    assert example["targets"][-1] == vocabulary.eos_id and vocabulary.eos_id not in example["inputs"]
    inputs, targets = formatting.tokenize_example(vocabulary, example["inputs_pretokenized"].decode(),
                                                  example["targets_pretokenized"].decode())
    assert example["targets"].tolist() == targets.tolist()  # short targets: whole
    assert example["inputs"].tolist() == inputs.tolist()[-(budget - len(targets)):]
    sequence = list(vocabulary.prefix_ids) + example["inputs"].tolist() + example["targets"].tolist()
    n = len(sequence) - 1
    assert row["decoder_input_tokens"][:n].tolist() == sequence[:-1]
    assert row["decoder_target_tokens"][:n].tolist() == sequence[1:]
    scored = len(vocabulary.prefix_ids) + len(example["inputs"]) - 1
    assert row["decoder_loss_weights"][:n].tolist() == [0] * scored + [1] * (n - scored)
  assert seqio.get_mixture_or_task(GEN_TASK).output_features["targets"].vocabulary == bench["vocab"]


def test_k_shot_examples_never_show_their_own_instance_again(tmp_path):
  """A prompt repeated under two ids (P3 exports some prompts on several lines): an evaluated instance's k-shot
  prompt must not take its copy, one of the unused instances its demonstrations come from, which would hold its
  own answer."""
  path = tmp_path / "repeats.jsonl"
  rows = [{"src": f"Question {i}: what is the colour of box {i}?", "tgt": f"colour {i}"} for i in range(40)]
  rows[20:] = [dict(row) for row in rows[:20]]  # each evaluated instance repeated among the unused ones
  _write_jsonl(path, rows)
  task = sources.reopen("jsonl", str(path), "crossfit")
  entry = catalog.CatalogEntry(name=task.name, benchmark="crossfit", category="Misc.", role=catalog.HELD_OUT_TASK,
                               num_examples=0, num_eval_instances=20, rate=0.0, format="jsonl", path=str(path),
                               dataset=task.dataset, template="", kind=task.kind, num_instances=40)
  examples = list(registry.iter_examples(entry, task, registry.EVAL_SPLIT, 19, vocab_lib.OPTVocabulary()))
  for example in examples:
    question = example["inputs_pretokenized"].rsplit("\n\n", 1)[-1]
    question = question[:question.index("?") + 1]
    assert example["inputs_pretokenized"].count(question) == 1, example["instance_id"]
  assert len(examples) == 20 and all(ex["inputs_pretokenized"].count("\n\n") == 19 for ex in examples)


def test_k_shot_training_prompts_never_hold_a_held_out_instance(shared_dir):
  """task697 of the SNI sample: its positive example 1 is also its instance task697-454de825..., one of the 20
  held out (level 3) when the task trains. A k-shot training prompt must not show it with its answer."""
  path = shared_dir / "data" / "natural-instructions" / "tasks" / "task697_mmmlu_answer_generation_formal_logic.json"
  task = sni.read_task(path)
  num = sum(1 for _ in task.instances())
  entry = catalog.CatalogEntry(name=task.name, benchmark="sni", category="Misc.", role=catalog.TRAIN,
                               num_examples=num - 20, num_eval_instances=20, rate=1.0, format="sni", path=str(path),
                               dataset=task.dataset, template="", kind=task.kind, num_instances=num)
  held_out = [i.input.strip() for i in catalog.eval_instances(entry, task)]
  copies = [d for d in task.demonstrations if d.input.strip() in held_out]
  assert copies  # the sample's repeat
  own, fallback = registry.demonstration_pools(entry, task)
  assert own == tuple(d for d in task.demonstrations if d not in copies) and len(fallback) == num - 20
  assert not set(registry.demonstration_pool(entry, task)) & set(copies)
  vocabulary = vocab_lib.OPTVocabulary()
  inputs = {i.id: i.input.strip() for i in task.instances()}
  for shots in (2, 5):
    for split in (registry.TRAIN_SPLIT, registry.EVAL_SPLIT):
      for example in registry.iter_examples(entry, task, split, shots, vocabulary):
        own_text = inputs[example["instance_id"]]
        for c in copies:  # in its own prompt only as the query itself
          assert example["inputs_pretokenized"].count(c.input.strip()) == (c.input.strip() == own_text), (shots, split)
  # A held-out task keeps its own demonstrations (SNI's protocol); only the example itself is passed over.
  held = dataclasses.replace(entry, role=catalog.HELD_OUT_TASK, num_examples=0, num_eval_instances=num)
  assert registry.demonstration_pools(held, task, fallback=False) == (task.demonstrations, ())


def test_k_shot_prompts_never_show_a_line_the_catalog_excluded_from_training(tmp_path):
  """`excluded_instances` are lines of a training task that copy another task's held-out instance (the catalog's
  `held_out_elsewhere`, by their index in the source): left out of the training stream, and never shown as a
  k-shot demonstration either, where the model would train on that held-out answer just as well; nor is a
  positive example of the task that repeats such a line."""
  path = tmp_path / "siblings.jsonl"
  _write_jsonl(path, [{"src": f"Question {i}: what is in box {i}?", "tgt": f"thing {i}"} for i in range(30)])
  task = sources.reopen("jsonl", str(path), "crossfit")
  positive = (records.Instance("positive-0", "Question 25: what is in box 25? ", ("thing 25",)),
              records.Instance("positive-1", "Question 99: what is in box 99?", ("thing 99",)))
  task = dataclasses.replace(task, demonstrations=positive)
  excluded = (12, 15, 25)
  entry = catalog.CatalogEntry(name=task.name, benchmark="crossfit", category="Misc.", role=catalog.TRAIN,
                               num_examples=20 - len(excluded), num_eval_instances=10, rate=1.0, format="jsonl",
                               path=str(path), dataset=task.dataset, template="", kind=task.kind, num_instances=30,
                               excluded_instances=excluded)
  lines = list(task.instances())
  own, fallback = registry.demonstration_pools(entry, task)
  assert own == positive[1:]  # positive-0 repeats line 25, past the pool's window
  assert fallback == tuple(lines[k] for k in range(10, 30) if k not in excluded)
  _, window = registry.demonstration_pools(entry, task, size=5)  # the first 5 lines after the held-out ones
  assert window == (lines[10], lines[11], lines[13], lines[14])
  copies = [lines[k].input for k in excluded]
  vocabulary = vocab_lib.OPTVocabulary()
  for split in (registry.TRAIN_SPLIT, registry.EVAL_SPLIT):
    examples = list(registry.iter_examples(entry, task, split, 5, vocabulary))
    assert len(examples) == {registry.TRAIN_SPLIT: 17, registry.EVAL_SPLIT: 10}[split]
    for example in examples:
      assert example["inputs_pretokenized"].count("\n\n") == 5  # five demonstrations still
      assert not [c for c in copies if c in example["inputs_pretokenized"]], (split, example["instance_id"])


def test_registering_k_shot_variants_alone_leaves_the_0_shot_mixtures_out(bench, caplog):
  """`register_catalog(shots=(2,))` (e.g. a few-shot evaluation) registers the 2-shot Tasks it was asked for; the
  training mixtures mix 0-shot Tasks it did not register, so they are left out with a warning saying how to get
  them (it failed with seqio's "Provider name not registered"); a mixture of a benchmark's 0-shot Tasks says
  what is missing."""
  for name in (registry.TRAIN_MIXTURE, registry.TRAIN_MIXTURE_UNIFORM):
    seqio.MixtureRegistry.remove(name)
  one = "sni:task001_toy_add_small"
  try:
    with caplog.at_level("WARNING"):
      registered = registry.register_catalog(bench["dir"], bench["vocab"], shots=(2,))
    assert registered.mixtures == ()
    assert set(registered.tasks) == {n for n in bench["registered"].tasks if n.endswith(".2shot")}
    assert registry.TRAIN_MIXTURE not in seqio.MixtureRegistry.names()
    assert "mixtures not registered (add 0 to shots" in caplog.text
    seqio.TaskRegistry.remove(one)  # as if only k-shot variants had been registered
    with pytest.raises(ValueError, match=f"benchmark 'sni' mixes .* 0-shot, and '{one}' is not registered"):
      registry.add_mixture("e_sni_only", ["sni"])
  finally:
    assert registry.register_catalog(bench["dir"], bench["vocab"], shots=(0, 2)) == bench["registered"]
  assert registry.TRAIN_MIXTURE in seqio.MixtureRegistry.names()
