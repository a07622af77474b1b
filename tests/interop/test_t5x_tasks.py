"""Tests of optiml_jax.interop.t5x_tasks: registration from gin and the Tasks t5x's eval / infer evaluate.

Needs seqio only (not t5x); the t5x runs over these Tasks are in tests/interop/test_t5x_cli.py.
"""

import json
import pathlib

import numpy as np
import pytest
import seqio
import tokenizers

from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab
from optiml_jax.data.sources import sni
from optiml_jax.interop import t5x_tasks

REPO = pathlib.Path(__file__).resolve().parents[2]
MC_TASK = "crossfit:quiz_mc"
GEN_TASK = "sni:task005_toy_add_large"  # a held-out task of the toy bench


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("t5x_tasks")
  sni_dir = toybench.write(root / "sni", seed=0, num_instances=30)
  jsonl_dir = root / "crossfit"
  jsonl_dir.mkdir()
  rows = [{
      "src": f"Quiz {i}: which colour is item {i}?",
      "tgt": ["red", "blue"][i % 2],
      "options": ["red", "blue"]
  } for i in range(30)]
  (jsonl_dir / "quiz_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(config, sources.iter_all(sni_dir=sni_dir, jsonl_dirs=[("crossfit", jsonl_dir)]),
                        sni.read_split(sni_dir))
  built.save(root / "catalog")
  return str(root / "catalog")


def test_registered_returns_the_name_after_registering_the_catalog(catalog_dir):
  assert t5x_tasks.registered(catalog_dir) == registry.TRAIN_MIXTURE
  assert registry.TRAIN_MIXTURE in seqio.MixtureRegistry.names()
  assert t5x_tasks.registered(catalog_dir, name=MC_TASK) == MC_TASK
  with pytest.raises(ValueError, match="'nope' is neither a Task nor a Mixture.*optiml_bench_train"):
    t5x_tasks.registered(catalog_dir, name="nope")


def test_eval_mixture_picks_tasks_by_role_or_name(catalog_dir):
  name = t5x_tasks.eval_mixture(catalog_dir, name="level1", roles=("held_out_category",))
  members = [t.name for t in seqio.get_mixture_or_task(name).tasks]
  bench = {e.name: e for e in catalog.load(catalog_dir).tasks}
  # Rank classification for multiple-choice tasks (the toy bench's yes/no and coreference tasks), decoding else.
  expected = sorted(n + (".score_eval" if e.kind == "multiple_choice" else ".gen")
                    for n, e in bench.items()
                    if e.role == "held_out_category")
  assert {e.rsplit(".", 1)[1] for e in expected} == {"gen", "score_eval"}
  assert sorted(members) == expected and expected
  mixed = t5x_tasks.eval_mixture(catalog_dir, name="two", tasks=[MC_TASK, GEN_TASK])
  assert sorted(t.name for t in seqio.get_mixture_or_task(mixed).tasks) == [f"{MC_TASK}.score_eval", f"{GEN_TASK}.gen"]
  decoded = t5x_tasks.eval_mixture(catalog_dir, name="dec", tasks=[MC_TASK], rank_multiple_choice=False, shots=2)
  assert [t.name for t in seqio.get_mixture_or_task(decoded).tasks] == [f"{MC_TASK}.2shot.gen"]
  with pytest.raises(ValueError, match="unknown roles \\['level9'\\]"):
    t5x_tasks.eval_mixture(catalog_dir, roles=("level9",))
  with pytest.raises(ValueError, match="tasks \\['sni:nope'\\] are not in the catalog"):
    t5x_tasks.eval_mixture(catalog_dir, tasks=["sni:nope"])


def test_generation_task_has_dense_features_and_the_evaluation_metrics(catalog_dir):
  t5x_tasks.registered(catalog_dir)
  task = seqio.TaskRegistry.get(t5x_tasks.generation_task(GEN_TASK))
  assert [f.__name__ for f in task.predict_metric_fns] == ["rouge_l", "exact_match"]
  examples = list(task.get_dataset(None, split="validation", shuffle=False).take(3).as_numpy_iterator())
  assert examples and all("options" not in ex and ex["references"].size >= 1 for ex in examples)
  assert task.postprocess_fn("  42 ", example=examples[0], is_target=False) == "42"


def test_generation_task_leaves_the_targets_length_free_for_decoding(catalog_dir):
  """A decoded prompt keeps its last "inputs" tokens (t5x generates into the rest of the row), while the base Task,
  for training and scoring, fits prompt + target to the whole row."""
  t5x_tasks.registered(catalog_dir)
  name = t5x_tasks.generation_task(GEN_TASK)
  lengths = {"inputs": 6, "targets": 10}
  full = list(seqio.get_mixture_or_task(GEN_TASK).get_dataset(None, split="validation", shuffle=False).take(8))
  decoded = list(seqio.TaskRegistry.get(name).get_dataset(lengths, split="validation", shuffle=False).take(8))
  fitted = list(seqio.get_mixture_or_task(GEN_TASK).get_dataset(lengths, split="validation", shuffle=False).take(8))
  assert len(full) == len(decoded) == len(fitted) == 8
  for f, d, r in zip(full, decoded, fitted):
    f_inputs, f_targets = f["inputs"].numpy(), f["targets"].numpy()
    assert f_inputs.size > 6 and f_targets.size <= 10
    np.testing.assert_array_equal(d["inputs"].numpy(), f_inputs[-6:])
    np.testing.assert_array_equal(d["targets"].numpy(), f_targets)
    np.testing.assert_array_equal(r["inputs"].numpy(), f_inputs[-(16 - f_targets.size):])  # BOS + 16 - 1 tokens


def test_a_decoded_prompt_does_not_depend_on_the_length_of_its_reference(catalog_dir):
  """A reference longer than the "targets" length (an SNI answer of 300 tokens under t5x/eval.gin's 256) still
  leaves the prompt its last "inputs" tokens, as `python -m optiml_jax.eval` gives it: the base Task's row fit,
  run first, cut the prompt by as many tokens as the reference has beyond the "targets" length."""
  t5x_tasks.registered(catalog_dir)
  name = t5x_tasks.generation_task(GEN_TASK)
  lengths = {"inputs": 6, "targets": 1}  # the toy references are 2 tokens
  full = list(seqio.get_mixture_or_task(GEN_TASK).get_dataset(None, split="validation", shuffle=False).take(8))
  decoded = list(seqio.TaskRegistry.get(name).get_dataset(lengths, split="validation", shuffle=False).take(8))
  assert len(full) == len(decoded) == 8
  for f, d in zip(full, decoded):
    assert f["targets"].numpy().size == 2 and f["inputs"].numpy().size > 6
    np.testing.assert_array_equal(d["inputs"].numpy(), f["inputs"].numpy()[-6:])
    np.testing.assert_array_equal(d["targets"].numpy(), [2])  # the reference cut to its EOS (OPT's </s>)


def test_rank_classification_task_needs_answer_candidates(catalog_dir):
  t5x_tasks.registered(catalog_dir)
  name = t5x_tasks.rank_classification_task(MC_TASK)
  rows = list(
      seqio.TaskRegistry.get(name).get_dataset(None, split="validation", shuffle=False).take(4).as_numpy_iterator())
  np.testing.assert_array_equal([r["idx"] for r in rows], [[0, 0], [0, 1], [1, 0], [1, 1]])
  assert [bool(r["is_correct"]) for r in rows[:2]].count(True) == 1
  with pytest.raises(ValueError, match="not 'multiple_choice'"):
    t5x_tasks.rank_classification_task(GEN_TASK)
  with pytest.raises(ValueError, match="is not registered"):
    t5x_tasks.rank_classification_task("crossfit:missing")


def _char_tokenizer(folder: pathlib.Path) -> pathlib.Path:
  """A tokenizer.json folder (one id per printable character, `</s>` = 3 its EOS, no BOS added): a model's own
  tokenizer that is not OPT's."""
  folder.mkdir()
  tokens = ["<unk>", "<|endoftext|>", "<s>", "</s>"] + [chr(c) for c in range(32, 127)]
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
  tokenizer.decoder = tokenizers.decoders.Fuse()
  tokenizer.add_special_tokens(tokens[:4])
  tokenizer.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(
      json.dumps({
          "bos_token": "<s>",
          "eos_token": "</s>",
          "unk_token": "<unk>",
          "add_bos_token": False
      }), encoding="utf-8")
  return folder


def test_tasks_tokenize_with_the_model_vocabulary_and_switch_back(catalog_dir, tmp_path):
  chars = vocab.HFVocabulary(_char_tokenizer(tmp_path / "chars"))

  def first_targets():
    task = seqio.TaskRegistry.get(MC_TASK)
    return next(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())["targets"]

  assert t5x_tasks.registered(catalog_dir, name=MC_TASK, vocabulary=chars) == MC_TASK
  assert seqio.TaskRegistry.get(MC_TASK).output_features["targets"].vocabulary == chars
  targets = first_targets()
  assert targets[-1] == chars.eos_id == 3 and chars.decode(targets) in (" red", " blue")
  mixture = t5x_tasks.eval_mixture(catalog_dir, name="chars", tasks=[MC_TASK], vocabulary=chars)
  scored = seqio.get_mixture_or_task(mixture).tasks[0]
  assert scored.output_features["targets"].vocabulary == chars
  t5x_tasks.registered(catalog_dir, name=MC_TASK)  # OPT's again: the catalog is registered anew
  targets = first_targets()
  assert targets[-1] == 2 and vocab.OPTVocabulary().decode(targets) in (" red", " blue")
