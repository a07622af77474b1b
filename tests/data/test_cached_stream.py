"""Tests of optiml_jax.data.cached_stream: batches drawn by index from the bench cache resume without replay, do
not depend on the number of processes, sample tasks as the uncached seqio stream does, and are the same whether
the stream reads its mixture from the seqio registry or from the cache alone (no seqio)."""

import collections
import dataclasses
import itertools
import json
import shlex
import shutil

import numpy as np
import pytest

from optiml_jax import bench as bench_cli
from optiml_jax.data import cache
from optiml_jax.data import cache_beam
from optiml_jax.data import cached_stream
from optiml_jax.data import catalog
from optiml_jax.data import formatting
from optiml_jax.data import packing_np
from optiml_jax.data import pipeline
from optiml_jax.data import registry
from optiml_jax.data import sampling
from optiml_jax.trainer import runtime

pytest.importorskip("apache_beam", reason="the cache is built with Apache Beam (the test extra installs it)")

LENGTHS = {"inputs": 96, "targets": 32}
ROW = sum(LENGTHS.values())


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
  from tests.data import test_cache  # pylint: disable=import-outside-toplevel  (the same small bench)
  root = tmp_path_factory.mktemp("cached_stream")
  catalog_dir = test_cache.make_bench(root)
  cache_beam.build(catalog_dir, root / "cache", pipeline_args=test_cache.IN_PROCESS)
  registry.register_catalog(None, cache_dir=root / "cache")
  return catalog_dir, str(root / "cache")


def _stream(cache_dir, batch_size=4, index=0, count=1, seed=3, pack=True):
  return cached_stream.CachedBatchStream(registry.TRAIN_MIXTURE, LENGTHS, batch_size, seed, cache_dir=cache_dir,
                                         shard_index=index, shard_count=count, pack=pack)


def _equal(a, b) -> bool:
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_rows_are_packed_decoder_features_with_target_only_loss(cached):
  _, cache_dir = cached
  batch = next(_stream(cache_dir))
  assert set(batch) == set(pipeline_features()) and all(v.shape == (4, ROW) for v in batch.values())
  tokens, targets, weights = (
      batch[k] for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"))
  segments, positions = batch["decoder_segment_ids"], batch["decoder_positions"]
  for row in range(4):
    starts = np.flatnonzero((positions[row] == 0) & (segments[row] > 0))
    assert len(starts) >= 1 and tokens[row, starts[0]] == 2  # OPT's BOS before every example
    real = segments[row] > 0
    assert weights[row][~real].sum() == 0 and weights[row][real].sum() > 0
    within = real[1:] & (segments[row, 1:] == segments[row, :-1])  # next position of the same example
    assert np.array_equal(tokens[row, 1:][within], targets[row, :-1][within])
  assert (segments > 0).mean() > 0.8  # packed: rows mostly full


def pipeline_features():
  return ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids",
          "decoder_positions")


@pytest.mark.parametrize("at", [1, 7])
def test_resume_from_a_json_state_continues_exactly(cached, at):
  _, cache_dir = cached
  reference = _stream(cache_dir)
  uninterrupted = [next(reference) for _ in range(at + 6)]
  first = _stream(cache_dir)
  for _ in range(at):
    next(first)
  state = json.loads(json.dumps(first.state()))
  resumed = _stream(cache_dir)
  resumed.restore(state)
  assert resumed.batches_consumed == at
  for want in uninterrupted[at:]:
    assert _equal(want, next(resumed))


def test_global_batches_do_not_depend_on_the_number_of_processes(cached):
  _, cache_dir = cached
  one = _stream(cache_dir, batch_size=4)
  two = [_stream(cache_dir, batch_size=2, index=i, count=2) for i in range(2)]
  for _ in range(5):
    whole, halves = next(one), [next(s) for s in two]
    assert _equal(whole, {k: np.concatenate([h[k] for h in halves]) for k in whole})


def test_a_checkpoint_of_two_processes_resumes_exactly_on_one(cached):
  """The trainer's reshard path: `runtime.data_state_of_this_process` carries the global position."""
  _, cache_dir = cached
  two = [_stream(cache_dir, batch_size=2, index=i, count=2) for i in range(2)]
  for _ in range(4):
    for s in two:
      next(s)
  meta = {"step": 4, "data": [json.loads(json.dumps(s.state())) for s in two]}
  resumed = _stream(cache_dir, batch_size=4)
  resumed.restore(runtime.data_state_of_this_process(meta, "/model_dir", resumed.state()))
  reference = _stream(cache_dir, batch_size=4)
  for _ in range(4):
    next(reference)
  for _ in range(3):
    assert _equal(next(reference), next(resumed))


def test_a_state_of_another_stream_or_global_batch_is_refused(cached):
  _, cache_dir = cached
  state = _stream(cache_dir, seed=3).state()
  with pytest.raises(ValueError, match="seed"):
    _stream(cache_dir, seed=4).restore(state)
  with pytest.raises(ValueError, match="global batch"):
    _stream(cache_dir, batch_size=8).restore(state)


def _task_of_prefix(catalog_dir, vocabulary, k=10):
  """First k tokens of every training example (and pre-training chunk) -> its task."""
  owner = {}
  for entry in catalog.load(catalog_dir).tasks:
    if entry.role != catalog.TRAIN or entry.num_examples == 0:
      continue
    task = registry.reopen_task(entry)
    for ex in registry.iter_examples(entry, task, "train", 0, vocabulary):
      for inputs, targets in formatting.row_examples(ex["inputs"], ex["targets"], ROW, vocabulary.eos_id):
        read = np.concatenate([inputs, targets])[:-1]  # what the row feeds after the BOS (all but the last)
        owner.setdefault(tuple(read[:k]), set()).add(entry.name)
  return {key: names.pop() for key, names in owner.items() if len(names) == 1}


def _task_counts(batches, owner, k=10):
  counts = collections.Counter()
  for batch in batches:
    tokens, segments, positions = batch["decoder_input_tokens"], batch["decoder_segment_ids"], batch[
        "decoder_positions"]
    for row, start in zip(*np.nonzero((positions == 0) & (segments > 0))):
      own = tokens[row][segments[row] == segments[row, start]]  # this example's tokens, BOS first
      counts[owner.get(tuple(own[1:1 + k]), "?")] += 1
  return counts


def _distance(a, b) -> float:
  """Total variation distance of two count distributions."""
  keys = set(a) | set(b)
  ta, tb = sum(a.values()), sum(b.values())
  return 0.5 * sum(abs(a[k] / ta - b[k] / tb) for k in keys)


def test_task_frequencies_match_the_uncached_stream_and_the_rates(cached):
  catalog_dir, cache_dir = cached
  vocabulary = registry.default_vocabulary()
  owner = _task_of_prefix(catalog_dir, vocabulary)
  stream = _stream(cache_dir, batch_size=8, seed=11)
  cached_counts = _task_counts([next(stream) for _ in range(80)], owner)
  registry.register_catalog(catalog_dir)  # uncached Tasks, same names and rates
  try:
    uncached = pipeline.BatchStream(registry.TRAIN_MIXTURE, "train", LENGTHS, 8, seed=11)
    uncached_counts = _task_counts([next(uncached) for _ in range(80)], owner)
  finally:
    registry.register_catalog(None, cache_dir=cache_dir)
  assert cached_counts["?"] < 0.02 * sum(cached_counts.values())
  assert _distance(cached_counts, uncached_counts) < 0.12, (cached_counts, uncached_counts)
  rates = dict(cached_stream.mixture_tasks(registry.TRAIN_MIXTURE))
  total = sum(r for name, r in rates.items() if not name.startswith("pretraining"))
  drawn = sum(v for name, v in cached_counts.items() if name in rates and not name.startswith("pretraining"))
  for name, rate in rates.items():
    if not name.startswith("pretraining"):  # (a long document gives several chunks per draw)
      assert abs(cached_counts[name] / drawn - rate / total) < 0.06, name


def test_long_pretraining_documents_are_split_into_row_sized_chunks(cached):
  _, cache_dir = cached
  shard = cache.read_shard(cache_dir, "pretraining:web", 0, "train")
  longest = max(range(len(shard)), key=lambda i: shard.index[i, 2])
  inputs, targets = shard.tokens_of(longest)
  chunks = formatting.row_examples(inputs, targets, ROW, 2)
  assert len(inputs) == 0 and len(chunks) >= 2  # the bench's documents are longer than a row
  stream = cached_stream.CachedBatchStream("pretraining:web", LENGTHS, 4, 0, cache_dir=cache_dir)
  segments_seen = []
  for _ in range(80):  # short final chunks wait in open rows until 8 of them are open: ~200 documents
    batch = next(stream)
    for row in range(4):
      ids = batch["decoder_segment_ids"][row]
      for segment in set(ids[ids > 0].tolist()):
        at = ids == segment
        segments_seen.append((batch["decoder_target_tokens"][row][at], batch["decoder_loss_weights"][row][at]))
  for _, chunk in chunks:  # every chunk is an example of its own, with loss on every token it predicts
    found = [w for t, w in segments_seen if len(t) == len(chunk) and np.array_equal(t, chunk)]
    assert found and all(w.all() for w in found)


def test_a_mixture_task_missing_from_the_cache_is_named(cached, tmp_path):
  _, cache_dir = cached
  import shutil  # pylint: disable=import-outside-toplevel
  copy = tmp_path / "cache"
  shutil.copytree(cache_dir, copy)
  manifest = cache.read_manifest(copy)
  dropped = cache.shard_name("sni:task001_toy_add_small", 0, "train")
  shards = {k: v for k, v in manifest.shards.items() if k != dropped}
  cache.write_manifest(
      copy,
      cache.Manifest(manifest.vocabulary, manifest.tokenizer_dir, manifest.seed, manifest.pool_size, manifest.shots,
                     shards))
  with pytest.raises(cache.CacheError, match="task001_toy_add_small"):
    _stream(str(copy))


def test_unpacked_rows_hold_one_example_each(cached):
  _, cache_dir = cached
  batch = next(_stream(cache_dir, pack=False))
  assert set(batch) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}
  assert (batch["decoder_input_tokens"][:, 0] == 2).all()  # each row starts with its example's BOS


# --- From the cache alone (no seqio): `CachedBatchStream.from_cache`, what `train.run` uses ------------------------


@pytest.mark.parametrize("name,pack", [(registry.TRAIN_MIXTURE, True), (registry.TRAIN_MIXTURE_UNIFORM, True),
                                       ("crossfit:quiz_mc", True), (registry.TRAIN_MIXTURE, False)])
def test_the_stream_from_the_cache_alone_is_the_registered_stream_batch_for_batch_and_after_a_resume(
    cached, name, pack):
  _, cache_dir = cached
  registered = cached_stream.CachedBatchStream(name, LENGTHS, 2, 5, cache_dir=cache_dir, shard_index=1, shard_count=2,
                                               pack=pack)
  alone = cached_stream.CachedBatchStream.from_cache(cache_dir, name, LENGTHS, 2, 5, shard_index=1, shard_count=2,
                                                     pack=pack)
  assert alone.vocabulary is None and registered.vocabulary is not None
  for _ in range(6):
    assert _equal(next(registered), next(alone))
  state = json.loads(json.dumps(registered.state()))
  assert state == alone.state()
  resumed = cached_stream.CachedBatchStream.from_cache(cache_dir, name, LENGTHS, 2, 5, shard_index=1, shard_count=2,
                                                       pack=pack)
  resumed.restore(state)  # a checkpoint of the registered path, resumed without seqio
  for _ in range(6):
    assert _equal(next(registered), next(resumed))


def test_the_cache_alone_gives_the_registered_tasks_rates_and_token_ids(cached):
  _, cache_dir = cached
  for name in (registry.TRAIN_MIXTURE, registry.TRAIN_MIXTURE_UNIFORM, "sni:task001_toy_add_small"):
    alone, registered = cached_stream.cache_tasks(cache_dir, name), cached_stream.registered_tasks(name, cache_dir)
    assert dataclasses.replace(registered, vocabulary=None) == alone
    assert len(alone.rates) > 1 or name.startswith("sni:")
  assert (alone.bos_id, alone.eos_id) == (2, 2)  # OPT's </s>, as the manifest recorded it


def test_a_name_that_is_no_training_mixture_or_task_of_the_catalog_is_refused(cached):
  _, cache_dir = cached
  with pytest.raises(ValueError, match="'nope' is neither a training mixture"):
    cached_stream.CachedBatchStream.from_cache(cache_dir, "nope", LENGTHS, 2, 0)
  held_out = next(e.name for e in catalog.load(cache_dir).tasks if e.role != catalog.TRAIN)
  with pytest.raises(ValueError, match="has no training examples"):
    cached_stream.cache_tasks(cache_dir, held_out)
  with pytest.raises(cache.CacheError, match=r"no training shard .*task001_toy_add_small\.5shot"):
    cached_stream.cache_tasks(cache_dir, sampling.variant_name("sni:task001_toy_add_small", 5))


def test_an_old_cache_without_its_tokenizer_record_names_the_command_that_adds_it(cached, tmp_path):
  """A cache built before cache.json recorded BOS, EOS and vocabulary size: the registered path still reads it, the
  seqio-free one says how to record them, and that command rewrites cache.json only."""
  from tests.data import test_cache  # pylint: disable=import-outside-toplevel
  _, cache_dir = cached
  old = tmp_path / "cache"
  shutil.copytree(cache_dir, old)
  data = json.loads((old / cache.MANIFEST_FILE).read_text())
  del data["tokenizer"]
  (old / cache.MANIFEST_FILE).write_text(json.dumps(data))
  assert cache.read_manifest(old).tokenizer is None
  registered = cached_stream.CachedBatchStream(registry.TRAIN_MIXTURE, LENGTHS, 2, 0, cache_dir=old)
  with pytest.raises(cache.CacheError, match="built before it recorded its tokenizer's BOS id, EOS id and vocabulary "
                     "size") as error:
    cached_stream.CachedBatchStream.from_cache(old, registry.TRAIN_MIXTURE, LENGTHS, 2, 0)
  message = str(error.value)
  assert str(old / cache.MANIFEST_FILE) in message and "without TensorFlow and seqio" in message
  command = message.split("`")[1]
  assert command.startswith("python -m optiml_jax.bench cache ")
  shards = {p.name: p.stat().st_mtime_ns for p in (old / cache.SHARDS_DIR).iterdir()}
  assert bench_cli.main(shlex.split(command)[3:] + test_cache.IN_PROCESS) == 0
  assert {p.name: p.stat().st_mtime_ns for p in (old / cache.SHARDS_DIR).iterdir()} == shards  # none rewritten
  assert cache.read_manifest(old).tokenizer == cache.read_manifest(cache_dir).tokenizer
  alone = cached_stream.CachedBatchStream.from_cache(old, registry.TRAIN_MIXTURE, LENGTHS, 2, 0)
  for _ in range(3):
    assert _equal(next(registered), next(alone))


# --- A cap on segments per row (`max_segments_per_row`: the packed-layout attention kernel's static bound) ------


def _capped(cache_dir, cap, **kwargs):
  return cached_stream.CachedBatchStream.from_cache(cache_dir, registry.TRAIN_MIXTURE, LENGTHS, 4, 3,
                                                    max_segments_per_row=cap, **kwargs)


def test_the_cap_bounds_the_segments_of_every_row_and_resumes_exactly(cached):
  _, cache_dir = cached
  batches = list(itertools.islice(_capped(cache_dir, 3), 6))
  uncapped = list(itertools.islice(_capped(cache_dir, None), 6))
  counts = np.stack([packing_np.count_segments(b["decoder_segment_ids"]) for b in batches])
  free = np.stack([packing_np.count_segments(b["decoder_segment_ids"]) for b in uncapped])
  assert counts.max() == 3 and counts.min() >= 1 and free.max() > 3  # the toy examples would pack more
  # A row at the cap is complete with room left: it ends in padding, and rows are less full than without the cap.
  assert any(((b["decoder_segment_ids"] == 0).any(axis=1) & (c == 3)).any() for b, c in zip(batches, counts))
  fill = [np.mean([(b["decoder_segment_ids"] > 0).mean() for b in run]) for run in (batches, uncapped)]
  assert fill[0] < fill[1]
  for b in batches:  # still whole examples with target-only loss: every segment starts at position 0 with the BOS
    starts = (b["decoder_positions"] == 0) & (b["decoder_segment_ids"] > 0)
    assert (b["decoder_input_tokens"][starts] == 2).all()
  first = _capped(cache_dir, 3)
  for _ in range(2):
    next(first)
  state = json.loads(json.dumps(first.state()))
  assert state["max_segments_per_row"] == 3
  resumed = _capped(cache_dir, 3)
  resumed.restore(state)
  for want in batches[2:]:
    assert _equal(want, next(resumed))
  registered = cached_stream.CachedBatchStream(registry.TRAIN_MIXTURE, LENGTHS, 4, 3, cache_dir=cache_dir,
                                               max_segments_per_row=3)
  assert all(_equal(want, next(registered)) for want in batches[:2])  # the registered path takes the cap too


def test_no_cap_keeps_the_stream_and_a_state_of_another_cap_is_refused(cached):
  _, cache_dir = cached
  for want, got in zip(itertools.islice(_capped(cache_dir, None), 3), itertools.islice(_capped(cache_dir, 10**6), 3)):
    assert _equal(want, got)  # a cap no row reaches changes nothing
  state = _capped(cache_dir, None).state()
  assert state["max_segments_per_row"] is None
  with pytest.raises(ValueError, match="max_segments_per_row: saved None, this stream 3"):
    _capped(cache_dir, 3).restore(state)
  old = {k: v for k, v in state.items() if k != "max_segments_per_row"}  # a checkpoint from before the cap
  _capped(cache_dir, None).restore(old)
  with pytest.raises(ValueError, match="max_segments_per_row must be an integer >= 1 or None"):
    _capped(cache_dir, 0)
