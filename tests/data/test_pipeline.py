"""Tests of optiml_jax.data.pipeline: deterministic, sharded, resumable numpy batch streams."""

import itertools
import json
import pathlib

import numpy as np
import pytest
import seqio

from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import packing
from optiml_jax.data import pipeline
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data.sources import sni

MIXTURE = "e_pipeline_mix"
LENGTHS = {"inputs": 40, "targets": 8}
TASKS = ("sni:task001_toy_add_small", "sni:task007_toy_reverse_word", "sni:task017_toy_movie_sentiment",
         "sni:task022_toy_antonym")


@pytest.fixture(scope="module")
def toy_catalog(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  sni_dir = toybench.write(root / "sni", seed=1, num_instances=40)
  built = catalog.build(bench_config.load_config(toybench.CONFIG_PATH), sources.iter_all(sni_dir=sni_dir),
                        sni.read_split(sni_dir))
  built.save(root / "catalog")
  registry.register_catalog(root / "catalog", mixtures=False)
  registry.add_mixture(MIXTURE, list(TASKS))
  return built


def _stream(**overrides):
  args = dict(name=MIXTURE, split="train", feature_lengths=LENGTHS, batch_size=3, seed=0, window_size=16)
  args.update(overrides)
  return pipeline.BatchStream(**args)


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert set(a) == set(b)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


@pytest.fixture(scope="module")
def reference(toy_catalog):
  """The first 7 batches of the default stream."""
  return list(itertools.islice(_stream(), 7))


def test_batches_have_the_model_features(reference):
  batch = reference[0]
  assert set(batch) == set(packing.FEATURE_ORDER)
  for value in batch.values():
    assert value.shape == (3, 48) and value.dtype == np.int32
  assert (batch["decoder_segment_ids"].max(axis=1) >= 2).all()  # toy examples are short: rows hold several


def test_same_seed_same_stream_other_seed_other_stream(reference):
  _assert_same(reference[:4], list(itertools.islice(_stream(), 4)))
  other = list(itertools.islice(_stream(seed=1), 4))
  assert any(
      not np.array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"]) for a, b in zip(reference, other))


def test_resume_from_saved_state_gives_the_same_next_batches(reference):
  stream = _stream()
  consumed = [next(stream) for _ in range(4)]
  _assert_same(consumed, reference[:4])
  state = json.loads(json.dumps(stream.state()))  # JSON-able, as stored in a checkpoint
  assert state["batches_consumed"] == 4
  resumed = _stream()
  resumed.restore(state)
  _assert_same([next(resumed) for _ in range(3)], reference[4:])
  assert resumed.state()["batches_consumed"] == 7


def test_only_the_sum_of_the_feature_lengths_counts(reference):
  # Rows of 48 positions either way; the state still records the lengths as given.
  _assert_same(reference[:3], list(itertools.islice(_stream(feature_lengths={"inputs": 8, "targets": 40}), 3)))


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
  """A catalog of one pre-training text file whose documents are longer than the rows, registered."""
  root = tmp_path_factory.mktemp("text")
  text_dir = root / "text"
  text_dir.mkdir()
  rng = np.random.default_rng(0)
  words = ("river", "stone", "light", "market", "winter", "garden", "engine", "letter", "harbor", "forest")
  documents = [" ".join(rng.choice(words, size=int(rng.integers(5, 80)))) + "." for _ in range(40)]
  (text_dir / "docs.txt").write_text("\n\n".join(documents) + "\n", encoding="utf-8")
  config = bench_config.load_config(pathlib.Path(__file__).resolve().parents[2] / "tasks" / "optiml_bench.yaml")
  built = catalog.build(config, sources.iter_all(text_dir=text_dir))
  built.save(root / "catalog")
  registry.register_catalog(root / "catalog", mixtures=False)
  (entry,) = built.tasks
  return entry


def test_long_documents_fill_whole_rows_and_resume_exactly(text_task):
  name = text_task.name
  args = dict(name=name, feature_lengths={"inputs": 16, "targets": 16}, batch_size=2, window_size=8)
  reference = list(itertools.islice(_stream(**args), 6))
  rows = np.concatenate([b["decoder_segment_ids"] for b in reference])
  weights = np.concatenate([b["decoder_loss_weights"] for b in reference])
  # Chunks of long documents fill rows of 32 by themselves, trained on every token.
  np.testing.assert_array_equal(weights, rows > 0)
  assert ((rows == 1).all(axis=1)).sum() >= 6
  # One pass: every token of every document is trained on once, and the short ends pack together.
  documents = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False)
  tokens = sum(ex["targets"].size for ex in documents.as_numpy_iterator())
  one_pass = list(_stream(**args, num_epochs=1, drop_remainder=False))
  assert sum(int(b["decoder_loss_weights"].sum()) for b in one_pass) == tokens
  assert any((b["decoder_segment_ids"].max(axis=1) >= 2).any() for b in one_pass)
  stream = _stream(**args)
  _assert_same([next(stream) for _ in range(3)], reference[:3])
  resumed = _stream(**args)
  resumed.restore(json.loads(json.dumps(stream.state())))
  _assert_same([next(resumed) for _ in range(3)], reference[3:])


def test_restore_refuses_a_state_of_another_stream(toy_catalog):
  state = _stream().state()
  with pytest.raises(ValueError, match=r"different stream \(batch_size: saved 3, this stream 4"):
    _stream(batch_size=4).restore(state)
  with pytest.raises(ValueError, match="version"):
    _stream().restore({**state, "version": 99})


def test_shards_differ_and_are_each_deterministic(toy_catalog):
  shard0 = list(itertools.islice(_stream(shard_index=0, shard_count=2), 2))
  shard1 = list(itertools.islice(_stream(shard_index=1, shard_count=2), 2))
  _assert_same(shard1, list(itertools.islice(_stream(shard_index=1, shard_count=2), 2)))
  assert not np.array_equal(shard0[0]["decoder_target_tokens"], shard1[0]["decoder_target_tokens"])
  # Each example of the unsharded stream's tasks goes to exactly one shard: shards never repeat a row.
  rows0 = {r.tobytes() for b in shard0 for r in b["decoder_target_tokens"]}
  rows1 = {r.tobytes() for b in shard1 for r in b["decoder_target_tokens"]}
  assert not rows0 & rows1
  with pytest.raises(ValueError, match="shard_index"):
    _stream(shard_index=2, shard_count=2)


def test_finite_unpacked_validation_stream_covers_every_eval_instance(toy_catalog):
  entry = toy_catalog.by_name()[TASKS[0]]
  stream = _stream(name=TASKS[0], split="validation", pack=False, shuffle=False, num_epochs=1, drop_remainder=False,
                   batch_size=8)
  batches = list(stream)
  rows = np.concatenate([b["decoder_target_tokens"] for b in batches])
  assert set(batches[0]) == set(packing.MODEL_FEATURE_NAMES)
  assert rows.shape[0] == entry.num_eval_instances
  weights = np.concatenate([b["decoder_loss_weights"] for b in batches])
  assert (weights.sum(axis=1) >= 2).all()  # every row trains on its target and </s>


def test_rows_follow_the_bos_and_eos_of_the_task_s_tokenizer(toy_catalog, tiny_tokenizer):
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top
  name = TASKS[0]
  # OPT's tokenizer (the catalog's default) feeds its </s> (2) before every example.
  assert (next(_stream(name=name, pack=False, shuffle=False))["decoder_input_tokens"][:, 0] == packing.OPT_BOS_ID).all()
  vocabulary = vocab.HFVocabulary(tiny_tokenizer("smollm2"))  # adds no BOS; <|im_end|> (2) ends each target
  entry = next(e for e in toy_catalog.tasks if e.name == name)
  registry.register_task(entry, vocabulary)
  try:
    stream = _stream(name=name, pack=False, shuffle=False, batch_size=2)
    assert stream.vocabulary == vocabulary
    batch = next(stream)
    first = next(
        seqio.get_mixture_or_task(name).get_dataset(sequence_length=LENGTHS, split="train",
                                                    shuffle=False).as_numpy_iterator())
  finally:
    registry.register_task(entry)  # back to OPT's, as the other tests registered it
  # The row is the prompt itself (no BOS before it), then the target, which ends with the tokenizer's EOS.
  n = len(first["inputs"])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][0, :n], first["inputs"])
  weighted = batch["decoder_target_tokens"][0][batch["decoder_loss_weights"][0] > 0]
  np.testing.assert_array_equal(weighted, first["targets"])
  assert weighted[-1] == vocabulary.eos_id == 2


def test_the_cap_on_segments_per_row_reaches_the_converter(reference):
  """`max_segments_per_row` (what `train.run` passes from `DataArgs`): a cap of 1 leaves one example per row,
  still packed features; the state records the cap and a state without it is refused."""
  stream = _stream(max_segments_per_row=1)
  batches = list(itertools.islice(stream, 2))
  assert set(batches[0]) == set(packing.FEATURE_ORDER)
  for batch in batches:
    assert (packing.count_segments(batch["decoder_segment_ids"]) == 1).all()
  assert (packing.count_segments(reference[0]["decoder_segment_ids"]) >= 2).all()  # uncapped rows hold several
  assert stream.state()["max_segments_per_row"] == 1 and _stream().state()["max_segments_per_row"] is None
  with pytest.raises(ValueError, match="max_segments_per_row: saved None, this stream 1"):
    _stream(max_segments_per_row=1).restore(_stream().state())
