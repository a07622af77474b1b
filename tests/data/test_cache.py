"""Tests of optiml_jax.data.cache and cache_beam: the Beam-built cache holds exactly the uncached examples,
serves the same seqio Tasks, is rebuilt idempotently, reports a failing task, and names a corrupt file."""

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import stat

import numpy as np
import pytest
import seqio

from optiml_jax import bench as bench_cli
from optiml_jax import tempfiles
from optiml_jax.data import bench_config
from optiml_jax.data import cache
from optiml_jax.data import cache_beam
from optiml_jax.data import cached_stream
from optiml_jax.data import catalog
from optiml_jax.data import pipeline
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab
from optiml_jax.data import vocab_info
from optiml_jax.data.sources import sni
from tests.data import test_registry  # the graded BIG-bench task both benches hold

pytest.importorskip("apache_beam", reason="the cache is built with Apache Beam (the test extra installs it)")

REPO = pathlib.Path(__file__).resolve().parents[2]
IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]  # the fast DirectRunner mode for tests
LENGTHS = {"inputs": 96, "targets": 32}


def _write_jsonl(path: pathlib.Path, rows) -> None:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


GRADED_TASK = test_registry.GRADED_TASK


def make_bench(root: pathlib.Path) -> pathlib.Path:
  """Toy SNI tasks, a multiple-choice JSONL task, a BIG-bench task with graded choices (evaluation only) and
  pre-training text long enough to be split into rows."""
  sni_dir = toybench.write(root / "sni", seed=0, num_instances=40)
  test_registry.write_graded_task(root / "bigbench")
  jsonl_dir = root / "crossfit"
  jsonl_dir.mkdir()
  _write_jsonl(jsonl_dir / "quiz_mc.jsonl", [{
      "src": f"Quiz {i}: which colour is item number {i} painted in the catalogue?",
      "tgt": ["red", "blue", "green"][i % 3],
      "options": ["red", "blue", "green"]
  } for i in range(30)])
  text_dir = root / "text"
  text_dir.mkdir()
  (text_dir / "web.txt").write_text(
      "\n\n".join(" ".join(f"Document {i} sentence {j} about the weather in town {i}."
                           for j in range(12))
                  for i in range(20)) + "\n", encoding="utf-8")
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(
      config,
      sources.iter_all(sni_dir=sni_dir, bigbench_dir=root / "bigbench", jsonl_dirs=[("crossfit", jsonl_dir)],
                       text_dir=text_dir), sni.read_split(sni_dir))
  built.save(root / "catalog")
  return root / "catalog"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache_bench")
  catalog_dir = make_bench(root)
  result = cache_beam.build(catalog_dir, root / "cache", shots=(0, 2), pipeline_args=IN_PROCESS)
  return catalog_dir, root / "cache", result


def _task_examples(name, split):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def _plain(value):
  """Nested Python lists of a feature's value (ragged option tokens come as an object array of arrays)."""
  if hasattr(value, "to_list"):
    return value.to_list()
  if isinstance(value, np.ndarray):
    return [_plain(v) for v in value] if value.dtype == object else value.tolist()
  return value


def _same(a, b) -> bool:
  return _plain(a) == _plain(b)


def test_build_writes_a_committed_shard_per_task_variant_and_split(built):
  catalog_dir, cache_dir, result = built
  bench = catalog.load(catalog_dir)
  expected = {cache.shard_name(e.name, k, s) for e in bench.tasks for k in (0, 2) for s in cache_beam.splits_of(e)}
  assert not result.failed and set(result.written) == expected
  manifest = cache.read_manifest(cache_dir)
  assert set(manifest.shards) == expected and manifest.shots == (0, 2)
  # What training without seqio needs of the tokenizer: OPT's BOS and EOS </s> = 2, ids up to 50264.
  assert manifest.tokenizer == cache.TokenizerInfo(bos_id=2, eos_id=2, vocab_size=50265)
  assert manifest.vocabulary == vocab_info.folder_fingerprint(vocab.DEFAULT_TOKENIZER_DIR)
  assert (cache_dir / cache.CATALOG_FILE).read_bytes() == (catalog_dir / catalog.CATALOG_FILE).read_bytes()
  leftovers = [p.name for p in (cache_dir / cache.SHARDS_DIR).iterdir() if ".tmp-" in p.name or p.suffix == ".json"]
  assert not leftovers
  stats = cache.read_stats(cache_dir / cache.SHARDS_DIR / cache.shard_name("pretraining:web", 0, "train"))
  assert stats["examples"] > 0 and stats["target_tokens"] > stats["examples"] and stats["input_tokens"] == 0
  # Readable by other accounts as the umask allows (hosts that share the cache), though staged in temporary files.
  umask = tempfiles.umask()
  shard = cache_dir / cache.SHARDS_DIR / cache.shard_name("pretraining:web", 0, "train")
  assert {
      stat.S_IMODE(p.stat().st_mode)
      for p in (cache_dir / cache.MANIFEST_FILE, cache_dir / cache.CATALOG_FILE, shard / cache.STATS_FILE)
  } == {0o666 & ~umask}
  assert stat.S_IMODE(shard.stat().st_mode) == 0o777 & ~umask


def test_cached_tasks_give_the_uncached_examples_byte_for_byte(built):
  catalog_dir, cache_dir, _ = built
  registry.register_catalog(catalog_dir, shots=(0, 2))
  names = [
      "sni:task001_toy_add_small", "sni:task001_toy_add_small.2shot", "crossfit:quiz_mc", GRADED_TASK, "pretraining:web"
  ]
  splits = {n: [s for s in ("train", "validation") if s in seqio.get_mixture_or_task(n).splits] for n in names}
  uncached = {(n, s): _task_examples(n, s) for n in names for s in splits[n]}
  registry.register_catalog(catalog_dir, shots=(0, 2), cache_dir=cache_dir)
  for (name, split), want in uncached.items():
    got = _task_examples(name, split)
    assert len(got) == len(want) > 0, (name, split)
    for a, b in zip(want, got):
      assert a.keys() == b.keys()
      for key in a:
        assert _same(a[key], b[key]), (name, split, key)
  # The graded choices' scores come back from the cache (float32, in option order); ungraded options have none.
  graded = _task_examples(GRADED_TASK, "validation")
  assert graded and all(
      dict(zip(ex["options_pretokenized"].tolist(), ex["options_scores"].tolist())) == {
          b"play music": 1.0,
          b"set an alarm": 0.25,
          b"book a table": 0.0
      } for ex in graded)
  assert all(ex["options_scores"].size == 0 for ex in _task_examples("crossfit:quiz_mc", "validation"))


def test_training_batches_from_cached_tasks_equal_uncached_ones(built):
  catalog_dir, cache_dir, _ = built

  def batches(cache_dir):
    registry.register_catalog(catalog_dir, cache_dir=cache_dir)
    stream = pipeline.BatchStream(registry.TRAIN_MIXTURE, "train", LENGTHS, 4, seed=5)
    return [next(stream) for _ in range(6)]

  for a, b in zip(batches(None), batches(cache_dir)):
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_registering_from_the_cache_alone_uses_its_catalog_copy(built):
  _, cache_dir, _ = built
  registered = registry.register_catalog(None, cache_dir=cache_dir)
  assert registry.TRAIN_MIXTURE in registered.mixtures and "crossfit:quiz_mc" in registered.tasks


def test_rerun_is_idempotent_and_completes_a_partial_cache(built, tmp_path):
  catalog_dir, cache_dir, _ = built
  again = cache_beam.build(catalog_dir, cache_dir, shots=(0, 2), pipeline_args=IN_PROCESS)
  assert again.written == () and len(again.skipped) == len(cache.read_manifest(cache_dir).shards)
  # A shard lost (deleted) and a staging folder left by a killed worker: the rerun rewrites only that shard.
  name = cache.shard_name("crossfit:quiz_mc", 0, "validation")
  shard = cache_dir / cache.SHARDS_DIR / name
  before = (shard / cache.TOKENS_FILE).read_bytes()
  other = cache_dir / cache.SHARDS_DIR / cache.shard_name("sni:task001_toy_add_small", 0, "train")
  other_mtime = os.stat(other / cache.STATS_FILE).st_mtime_ns
  (shard / cache.STATS_FILE).unlink()
  (cache_dir / cache.SHARDS_DIR / f"{name}.tmp-killed").mkdir()
  fixed = cache_beam.build(catalog_dir, cache_dir, shots=(0, 2), pipeline_args=IN_PROCESS)
  assert fixed.written == (name,) and not fixed.failed
  assert (shard / cache.TOKENS_FILE).read_bytes() == before
  assert os.stat(other / cache.STATS_FILE).st_mtime_ns == other_mtime


def test_a_change_of_the_demonstrations_rule_rebuilds_the_k_shot_shards_only(built, tmp_path, monkeypatch):
  """k-shot shards drawn by an older rule hold other prompts than the live Tasks: their fingerprint changes, so they
  are rebuilt (not read), while the 0-shot shards are kept."""
  catalog_dir, _, _ = built
  entry = catalog.load(catalog_dir).by_name()["sni:task001_toy_add_small"]
  before = {k: cache.fingerprint(entry, k, "train", "v", 0, 256) for k in (0, 2)}
  monkeypatch.setattr(cache, "DEMONSTRATIONS_RULE", cache.DEMONSTRATIONS_RULE - 1)
  older = {k: cache.fingerprint(entry, k, "train", "v", 0, 256) for k in (0, 2)}
  assert older[0] == before[0] and older[2] != before[2]
  # A cache built under the older rule: the rebuild today rewrites exactly its k-shot shards.
  old_cache = tmp_path / "cache"
  cache_beam.build(catalog_dir, old_cache, shots=(0, 2), pipeline_args=IN_PROCESS)
  monkeypatch.undo()
  again = cache_beam.build(catalog_dir, old_cache, shots=(0, 2), pipeline_args=IN_PROCESS)
  assert again.written and all(".2shot." in name for name in again.written)
  assert not any(".2shot." in name for name in again.skipped)
  # The report says why they were rewritten.
  reason = (f"the rule that draws k-shot demonstrations changed (rule {cache.DEMONSTRATIONS_RULE - 1} when it was "
            f"built, {cache.DEMONSTRATIONS_RULE} in this version)")
  assert sorted(again.outdated) == sorted(again.written) and set(again.outdated.values()) == {reason}
  assert f"out of date, rebuilt: {len(again.written)} shard(s) (" in again.describe() and reason in again.describe()


def test_a_shard_of_an_older_rule_is_refused_with_the_rule_named(built, tmp_path, monkeypatch):
  """A cache kept from before a rule change is refused at registration and by the training stream, and the message
  says which rule changed; a shard written before shards recorded what they were built from says it may be one."""
  catalog_dir, cache_dir, _ = built
  old_cache = tmp_path / "cache"
  shutil.copytree(cache_dir, old_cache)
  name, split = "sni:task001_toy_add_small", cache.TRAIN_SPLIT
  shard = cache.shard_dir(old_cache, name, 2, split)
  stats = json.loads((shard / cache.STATS_FILE).read_text())
  assert stats["made_from"]["demonstrations_rule"] == cache.DEMONSTRATIONS_RULE
  monkeypatch.setattr(cache, "DEMONSTRATIONS_RULE", cache.DEMONSTRATIONS_RULE + 1)
  rule = (r"task001_toy_add_small.2shot.train: .* the rule that draws k-shot demonstrations changed \(rule "
          rf"{cache.DEMONSTRATIONS_RULE - 1} when it was built, {cache.DEMONSTRATIONS_RULE} in this version\)")
  with pytest.raises(cache.CacheError, match=rule):
    registry.register_catalog(catalog_dir, shots=(2,), cache_dir=old_cache)
  entry = catalog.load(catalog_dir).by_name()[name]
  manifest = cache.read_manifest(old_cache)
  parts = cache.fingerprint_parts(entry, 2, split, manifest.vocabulary, manifest.seed, manifest.pool_size)
  with pytest.raises(cache.CacheError, match=rule):
    cache.read_shard(old_cache, name, 2, split, parts)
  assert cache.incomplete(
      cache.shard_dir(old_cache, name, 0, split),
      cache.fingerprint_parts(entry, 0, split, manifest.vocabulary, manifest.seed,
                              manifest.pool_size)) is None  # 0-shot: no such rule
  del stats["made_from"]
  (shard / cache.STATS_FILE).write_text(json.dumps(stats))
  with pytest.raises(cache.CacheError, match="or by an older version of optiml_jax whose formatting rules differ"):
    cache.read_shard(old_cache, name, 2, split, parts)


def test_a_change_of_the_training_stream_rule_rebuilds_the_training_shards_only(built, monkeypatch):
  """Training shards built before `catalog.train_instances` passed over repeats of held-out instances may hold
  them: their fingerprint changes, the evaluation shards' does not."""
  catalog_dir, _, _ = built
  entry = catalog.load(catalog_dir).by_name()["sni:task001_toy_add_small"]
  splits = (cache.TRAIN_SPLIT, cache.EVAL_SPLIT)
  before = {s: cache.fingerprint(entry, 0, s, "v", 0, 256) for s in splits}
  monkeypatch.setattr(cache, "TRAIN_STREAM_RULE", cache.TRAIN_STREAM_RULE - 1)
  older = {s: cache.fingerprint(entry, 0, s, "v", 0, 256) for s in splits}
  assert older[cache.EVAL_SPLIT] == before[cache.EVAL_SPLIT]
  assert older[cache.TRAIN_SPLIT] != before[cache.TRAIN_SPLIT]


def test_evaluation_shards_of_multiple_choice_tasks_built_before_graded_scores_are_rebuilt(built, monkeypatch):
  """Evaluation shards of multiple-choice tasks written before they kept the options' graded scores lack them: their
  fingerprint changes, so they are rebuilt; training shards and the shards of generation tasks keep theirs."""
  catalog_dir, _, _ = built
  entries = catalog.load(catalog_dir).by_name()
  keys = [(GRADED_TASK, cache.EVAL_SPLIT), ("crossfit:quiz_mc", cache.EVAL_SPLIT),
          ("crossfit:quiz_mc", cache.TRAIN_SPLIT), ("sni:task001_toy_add_small", cache.EVAL_SPLIT)]

  def fingerprints():
    return [cache.fingerprint(entries[name], 0, split, "v", 0, 256) for name, split in keys]

  now = fingerprints()
  monkeypatch.setattr(cache, "OPTION_SCORES_RULE", cache.OPTION_SCORES_RULE - 1)
  assert [a == b for a, b in zip(now, fingerprints())] == [False, False, True, True]


def test_a_failing_task_is_reported_and_the_others_are_written(tmp_path, capsys, caplog):
  catalog_dir = make_bench(tmp_path)
  broken = next(e for e in catalog.load(catalog_dir).tasks if e.name == "sni:task002_toy_subtract")
  pathlib.Path(broken.path).write_text("{ not json", encoding="utf-8")
  code = bench_cli.main(["cache", str(catalog_dir), "--out", str(tmp_path / "cache"), *IN_PROCESS])
  out, err = capsys.readouterr()
  assert code == 1
  assert "sni:task002_toy_subtract (0-shot)" in out and "failed" in err
  manifest = cache.read_manifest(tmp_path / "cache")
  assert "sni:task002_toy_subtract (0-shot)" in manifest.failed
  assert cache.shard_name("sni:task001_toy_add_small", 0, "train") in manifest.shards
  # Registering from this cache: the failed task reads its source (with a warning naming it), the rest the cache.
  with caplog.at_level(logging.WARNING):
    registry.register_catalog(catalog_dir, shots=(0, 3), cache_dir=tmp_path / "cache")
  warning = next(r.getMessage() for r in caplog.records if "not in the cache" in r.getMessage())
  assert "sni:task002_toy_subtract," in warning and "sni:task001_toy_add_small.3shot" in warning


@pytest.mark.parametrize("damage", ["truncate_tokens", "delete_index", "uncommitted"])
def test_a_corrupt_or_partial_shard_is_named_in_a_clear_error(built, tmp_path, damage):
  catalog_dir, cache_dir, _ = built
  copy = tmp_path / "cache"
  shutil.copytree(cache_dir, copy)
  shard = copy / cache.SHARDS_DIR / cache.shard_name("sni:task001_toy_add_small", 0, "train")
  if damage == "truncate_tokens":
    data = (shard / cache.TOKENS_FILE).read_bytes()
    (shard / cache.TOKENS_FILE).write_bytes(data[:len(data) // 2])
    match = r"tokens\.npy: \d+ bytes, the shard's stats\.json records"
  elif damage == "delete_index":
    (shard / cache.INDEX_FILE).unlink()
    match = r"index\.npy: missing"
  else:
    (shard / cache.STATS_FILE).unlink()
    match = "no committed shard"
  with pytest.raises(cache.CacheError, match=match):
    cache.read_shard(copy, "sni:task001_toy_add_small", 0, "train")
  with pytest.raises(cache.CacheError, match="task001_toy_add_small"):
    registry.register_catalog(catalog_dir, cache_dir=copy)


def _jsonl_catalog(root: pathlib.Path, out: str, answers: dict[str, list[str]], benchmark: str = "crossfit",
                   extra: tuple = ()) -> catalog.CatalogEntry:
  """A catalog (`root/out`) of JSONL tasks whose i-th question has answers[task][i]; returns the first task's entry
  (the other folders of `extra` are (benchmark, folder) pairs, which change the rates)."""
  folder = root / benchmark
  folder.mkdir(exist_ok=True)
  for task, targets in answers.items():
    _write_jsonl(folder / f"{task}.jsonl", [{
        "src": f"Which city is the capital of country number {i} in the list we study?",
        "tgt": target
    } for i, target in enumerate(targets)])
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(config, sources.iter_all(jsonl_dirs=[(benchmark, folder), *extra]), None)
  if (root / out).exists():
    shutil.rmtree(root / out)
  built.save(root / out)
  return next(e for e in built.tasks if e.benchmark == benchmark)


def test_an_edited_source_file_rebuilds_its_shards_and_an_unchanged_one_is_not_read_again(tmp_path, monkeypatch):
  """A wrong answer fixed in a source file (same number of lines: the catalog entry is the same) rebuilds the
  task's shards, which then hold the fixed answer; a rebuild reads again only the sources whose size or
  modification time changed."""
  cities = [f"City{i}" for i in range(30)]
  entry = _jsonl_catalog(tmp_path, "catalog", {"capitals": cities})
  first = cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert len(first.written) == 2 and not first.failed
  fixed = cities[:25] + ["Fixed answer"] + cities[26:]
  assert _jsonl_catalog(tmp_path, "catalog", {"capitals": fixed}) == entry
  rebuilt = cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert len(rebuilt.written) == 2 and rebuilt.skipped == ()
  assert set(rebuilt.outdated.values()) == {f"its source changed ({entry.path})"}
  assert f"its source changed ({entry.path})" in rebuilt.describe()
  shard = cache.read_shard(tmp_path / "cache", entry.name, 0, cache.TRAIN_SPLIT)
  assert "Fixed answer" in [t["targets_pretokenized"] for t in shard.texts()]
  # Registering from the cache (no source needed) accepts the rebuilt shards.
  registry.register_catalog(None, cache_dir=tmp_path / "cache", mixtures=False)
  hashed = []
  monkeypatch.setattr(cache, "file_sha256", lambda path: hashed.append(path) or "not read")
  again = cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert again.written == () and len(again.skipped) == 2 and hashed == []


def test_a_shard_built_before_shards_recorded_their_source_is_kept_if_newer_than_it_and_read(tmp_path):
  """An older version's shard recorded no source content (and recorded the rate). A run that reads the cache reads
  it; a build keeps it, recording the source's sha256, when it was committed after the source file last changed,
  and rebuilds it, saying why, when the file changed later."""
  entry = _jsonl_catalog(tmp_path, "catalog", {"capitals": [f"City{i}" for i in range(30)]})
  cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  manifest = cache.read_manifest(tmp_path / "cache")
  shards = {split: cache.shard_dir(tmp_path / "cache", entry.name, 0, split) for split in cache_beam.splits_of(entry)}

  def make_older(shard):
    stats = json.loads((shard / cache.STATS_FILE).read_text())
    older = {**stats["made_from"], "entry": {**stats["made_from"]["entry"], "rate": entry.rate}}
    del older["source"], stats["source_stat"]
    (shard / cache.STATS_FILE).write_text(
        json.dumps({
            **stats, "made_from": older,
            "fingerprint": cache.hash_parts(older)
        }))
    return stats["fingerprint"]

  fingerprints = {split: make_older(shard) for split, shard in shards.items()}
  parts = cache.fingerprint_parts(entry, 0, cache.TRAIN_SPLIT, manifest.vocabulary, manifest.seed, manifest.pool_size)
  assert len(cache.read_shard(tmp_path / "cache", entry.name, 0, cache.TRAIN_SPLIT, parts)) == entry.num_examples
  kept = cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert kept.written == () and sorted(kept.recorded) == sorted(s.name for s in shards.values())
  assert {s: cache.read_stats(shard)["fingerprint"] for s, shard in shards.items()} == fingerprints
  # The same shards, the source file touched after they were built (its content may have changed): rebuilt.
  make_older(shards[cache.TRAIN_SPLIT])
  later = (shards[cache.TRAIN_SPLIT] / cache.STATS_FILE).stat().st_mtime_ns + 10**9
  os.utime(entry.path, ns=(later, later))
  rebuilt = cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert rebuilt.written == (shards[cache.TRAIN_SPLIT].name,) and rebuilt.recorded == ()
  assert rebuilt.outdated == {
      shards[cache.TRAIN_SPLIT].name: "no content of its source was recorded when it was built (by an older "
                                      "optiml_jax, or where its source files could not be read)"
  }


def test_shards_whose_source_cannot_be_read_here_are_kept_and_reported(tmp_path):
  """`bench cache CACHE_DIR/catalog.json --out CACHE_DIR` on a host without the source files (to add what a newer
  version records): the shards cannot be checked against their source, so they are kept and the report says so."""
  entry = _jsonl_catalog(tmp_path, "catalog", {"capitals": [f"City{i}" for i in range(30)]})
  cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  pathlib.Path(entry.path).unlink()
  again = cache_beam.build(tmp_path / "cache" / cache.CATALOG_FILE, tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert again.written == () and not again.failed and len(again.unchecked) == 2
  assert "2 shard(s) (crossfit__capitals.0shot.train, ...) listed without checking their source" in again.describe()
  assert set(cache.read_manifest(tmp_path / "cache").shards) == set(again.unchecked)


def test_a_change_of_the_sampling_rate_alone_keeps_every_shard(tmp_path):
  """Another benchmark's folder added to the catalog changes every rate and nothing else: a shard holds the same
  examples at any rate, so the build keeps them, and a run reads them with the new catalog's entries."""
  entry = _jsonl_catalog(tmp_path, "catalog", {"capitals": [f"City{i}" for i in range(30)]})
  cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS)
  other = tmp_path / "exmix"
  other.mkdir()
  _write_jsonl(other / "colours.jsonl", [{
      "src": f"Which colour is item {i} painted in?",
      "tgt": "red"
  } for i in range(30)])
  moved = _jsonl_catalog(tmp_path, "catalog2", {"capitals": [f"City{i}" for i in range(30)]}, extra=(("exmix", other),))
  assert moved.rate != entry.rate and dataclasses.replace(moved, rate=entry.rate) == entry
  again = cache_beam.build(tmp_path / "catalog2", tmp_path / "cache", pipeline_args=IN_PROCESS, tasks=[entry.name])
  assert again.written == () and len(again.skipped) == 2 and not again.outdated
  manifest = cache.read_manifest(tmp_path / "cache")
  for split in (cache.TRAIN_SPLIT, cache.EVAL_SPLIT):
    parts = cache.fingerprint_parts(moved, 0, split, manifest.vocabulary, manifest.seed, manifest.pool_size)
    assert cache.incomplete(cache.shard_dir(tmp_path / "cache", entry.name, 0, split), parts) is None


def test_a_run_with_other_shots_or_tasks_keeps_listing_the_shards_of_earlier_runs(tmp_path):
  """`--shots 0`, then `--shots 2` to add the 2-shot variants, then `--tasks` of one task: cache.json lists every
  shard still complete for the catalog (--tasks and --shots say what to build, not what the cache holds), and
  drops, saying why, an earlier shard that no longer is."""
  answers = {name: [f"{name}{i}" for i in range(30)] for name in ("a", "b")}
  entry = _jsonl_catalog(tmp_path, "catalog", answers)

  def build(**kwargs):
    return cache_beam.build(tmp_path / "catalog", tmp_path / "cache", pipeline_args=IN_PROCESS, **kwargs)

  build(shots=(0,))
  second = build(shots=(2,))
  manifest = cache.read_manifest(tmp_path / "cache")
  every = {cache.shard_name(f"crossfit:{t}", k, s) for t in "ab" for k in (0, 2) for s in ("train", "validation")}
  assert set(manifest.shards) == every and manifest.shots == (0, 2)
  assert len(second.written) == 4 and len(second.kept) == 4
  assert cached_stream.cache_tasks(tmp_path / "cache", "crossfit:a").rates == (("crossfit:a", 1.0),)
  third = build(tasks=["crossfit:b"])
  assert third.written == () and len(third.skipped) == 2 and len(third.kept) == 6
  assert set(cache.read_manifest(tmp_path / "cache").shards) == every
  # Task a's source edited: a run for task b no longer lists a's shards (they would be refused when read).
  _write_jsonl(pathlib.Path(entry.path), [{"src": "Another question entirely?", "tgt": f"x{i}"} for i in range(30)])
  fourth = build(tasks=["crossfit:b"], shots=(0, 2))
  assert set(cache.read_manifest(tmp_path / "cache").shards) == {n for n in every if n.startswith("crossfit__b.")}
  assert set(fourth.dropped) == every - set(cache.read_manifest(tmp_path / "cache").shards)
  assert set(fourth.dropped.values()) == {f"is out of date: its source changed ({entry.path})"}
  assert "no longer listed: 4 shard(s) of earlier runs (crossfit__a.0shot.train, ...)" in fourth.describe()


def test_a_failed_or_interrupted_build_leaves_a_working_cache_working(tmp_path, monkeypatch, capsys):
  """A usage error (a misspelt --tasks) or a build interrupted while its pipeline runs changes neither the cache's
  catalog copy nor its manifest, which change together at the end; a usage error creates no new folder."""
  _jsonl_catalog(tmp_path, "catalog", {"a": [f"a{i}" for i in range(30)]})
  assert bench_cli.main(["cache", str(tmp_path / "catalog"), "--out", str(tmp_path / "cache"), *IN_PROCESS]) == 0
  before = {name: (tmp_path / "cache" / name).read_bytes() for name in (cache.CATALOG_FILE, cache.MANIFEST_FILE)}
  _jsonl_catalog(tmp_path, "catalog2", {"a": [f"a{i}" for i in range(30)], "b": [f"b{i}" for i in range(40)]})
  for out in ("cache", "new_cache"):
    code = bench_cli.main(["cache", str(tmp_path / "catalog2"), "--out", str(tmp_path / out), "--tasks", "crossfit:bb"])
    assert code == 2 and "no task(s) with examples named ['crossfit:bb']" in capsys.readouterr().err
  assert not (tmp_path / "new_cache").exists()

  def interrupted(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(cache_beam, "_beam_pipeline", interrupted)
  with pytest.raises(KeyboardInterrupt):
    cache_beam.build(tmp_path / "catalog2", tmp_path / "cache", pipeline_args=IN_PROCESS)
  assert {name: (tmp_path / "cache" / name).read_bytes() for name in before} == before
  assert cached_stream.cache_tasks(tmp_path / "cache", "optiml_bench_train").rates == (("crossfit:a", 1.0),)


def test_a_misspelt_option_of_the_cache_command_is_refused_and_beams_own_options_pass(tmp_path, capsys):
  """Arguments `bench cache` does not take go to Apache Beam, which drops those it does not know with a warning:
  a misspelling of the command's own option (`--tokenizer-dir`) built with OPT's tokenizer. It is refused (exit 2,
  the option it resembles named) before anything is written; Beam's options still pass, and a flag neither knows
  goes to the runner with a warning."""
  catalog_dir, out = tmp_path / "catalog", tmp_path / "cache"
  _jsonl_catalog(tmp_path, "catalog", {"a": [f"a{i}" for i in range(30)]})
  for typo, meant in (("--tokenizer-dir", "--tokenizer_dir"), ("--tokeniser_dir=/x", "--tokenizer_dir"),
                      ("--stats-length", "--stats_length"), ("-tokenizer_dir", "--tokenizer_dir")):
    with pytest.raises(SystemExit) as exit_:
      bench_cli.main(["cache", str(catalog_dir), "--out", str(out), *typo.split(" "), "/x", *IN_PROCESS])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"unrecognized argument {typo.split('=')[0]}: did you mean {meant}?" in err
  assert not out.exists()
  assert bench_cli.main(["cache", str(catalog_dir), "--out", str(out), "--job_server_flag=1", *IN_PROCESS]) == 0
  assert "warning: --job_server_flag: neither an option of `bench cache`" in capsys.readouterr().err
  assert len(cache.read_manifest(out).shards) == 2


def _example(i):
  """One example as `registry.iter_examples` yields it (token ids and text fields)."""
  return dict(inputs=np.arange(3) + i, targets=np.arange(2), instance_id=str(i), inputs_pretokenized=f"q{i}",
              targets_pretokenized="a", references=["a"], options_pretokenized=[])


def test_writing_a_shard_again_removes_the_staging_folders_of_killed_writers(tmp_path):
  """A worker killed while it writes a shard (out of memory, preempted, Ctrl-C) leaves its staging folder with the
  partial files; the next write of that shard removes them, and leaves other shards' staging folders alone."""
  shards = tmp_path / cache.SHARDS_DIR
  out = shards / "t.0shot.train"
  for killed in ("t.0shot.train.tmp-a1b2", "t.0shot.train.tmp-c3d4"):
    (shards / killed).mkdir(parents=True)
    (shards / killed / cache.EXAMPLES_FILE).write_text("{partial", encoding="utf-8")
  (shards / "t.0shot.validation.tmp-e5f6").mkdir()  # another shard's writer, maybe still at work
  cache.write_shard(out, iter([_example(0), _example(1)]), task="t", shots=0, split="train", shard_fingerprint="f")
  assert sorted(p.name for p in shards.iterdir()) == ["t.0shot.train", "t.0shot.validation.tmp-e5f6"]
  assert cache.read_stats(out)["examples"] == 2


def test_a_cache_of_another_tokenizer_is_refused(built, tiny_tokenizer):
  catalog_dir, cache_dir, _ = built
  other = registry.default_vocabulary(tiny_tokenizer("smollm2"))
  with pytest.raises(cache.CacheError, match="another tokenizer"):
    registry.register_catalog(catalog_dir, other, cache_dir=cache_dir)
  with pytest.raises(cache.CacheError, match="another tokenizer"):
    cache_beam.build(catalog_dir, cache_dir, tokenizer_dir=str(tiny_tokenizer("smollm2")), pipeline_args=IN_PROCESS)


def test_the_manifest_records_a_tokenizer_without_bos_and_reads_a_manifest_without_the_record(tmp_path):
  no_bos = cache.TokenizerInfo(bos_id=None, eos_id=2, vocab_size=330)  # SmolLM2 adds no BOS: None, not absent
  manifest = cache.Manifest("fp", None, 0, 256, (0,), {}, tokenizer=no_bos)
  cache.write_manifest(tmp_path, manifest)
  assert cache.read_manifest(tmp_path) == manifest
  assert cache.require_tokenizer(manifest, tmp_path) == no_bos
  data = json.loads((tmp_path / cache.MANIFEST_FILE).read_text())
  del data["tokenizer"]  # as caches built before the record wrote it
  (tmp_path / cache.MANIFEST_FILE).write_text(json.dumps(data))
  old = cache.read_manifest(tmp_path)
  assert old == dataclasses.replace(manifest, tokenizer=None)
  with pytest.raises(cache.CacheError, match=r"--shots 0`"):
    cache.require_tokenizer(old, tmp_path)
  data["tokenizer"] = {"bos_id": None, "eos_id": 2}
  (tmp_path / cache.MANIFEST_FILE).write_text(json.dumps(data))
  with pytest.raises(cache.CacheError, match="malformed manifest"):
    cache.read_manifest(tmp_path)


def test_local_builds_name_the_fn_api_runner_and_keep_every_option_given():
  cores = os.cpu_count() or 1
  assert cache_beam.default_direct_options([]) == [
      "--runner=FnApiRunner", f"--direct_num_workers={cores}", "--direct_running_mode=multi_processing",
      "--default_sdk_harness_log_level=WARNING"
  ]
  given = ["--runner", "DirectRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
  assert cache_beam.default_direct_options(given) == given + ["--default_sdk_harness_log_level=WARNING"]
  dataflow = ["--runner=DataflowRunner", "--project=p"]  # another runner's options are Beam's alone
  assert cache_beam.default_direct_options(dataflow) == dataflow


def test_cli_builds_over_local_processes_and_reports(tmp_path, capsys, monkeypatch):
  """The default runner mode: the FnApiRunner over separate worker processes (as on a workstation), and never
  Beam's Prism runner, which the DirectRunner would download from GitHub first."""
  from apache_beam.runners.portability import prism_runner  # pylint: disable=g-import-not-at-top
  prism_starts = []

  def record_start(job_server):
    prism_starts.append(job_server)

  monkeypatch.setattr(prism_runner.PrismJobServer, "start", record_start)
  root = tmp_path
  sni_dir = toybench.write(root / "sni", seed=0, num_instances=20)
  assert bench_cli.main([
      "build", "--config", "toybench.yaml", "--sni_dir",
      str(sni_dir), "--out",
      str(root / "catalog"), "--no_progress"
  ]) == 0
  capsys.readouterr()
  tasks = "sni:task001_toy_add_small,sni:task002_toy_subtract"
  code = bench_cli.main([
      "cache",
      str(root / "catalog"), "--out",
      str(root / "cache"), "--tasks", tasks, "--shots", "0,1", "--direct_num_workers=2"
  ])
  out = capsys.readouterr().out
  assert code == 0, out
  assert "8 shard(s) written" in out
  assert not prism_starts
  with pytest.raises(SystemExit):  # argparse: a bad --shots is a usage error
    bench_cli.main(["cache", str(root / "catalog"), "--out", str(root / "cache"), "--shots", "x"])


def test_left_out_training_instances_reach_the_fingerprint_and_shards_without_any_keep_theirs(built):
  """`excluded_instances` (a later field) changes what a training shard holds: a shard of an entry that has some
  is rebuilt, and every other shard a cache holds keeps the fingerprint it was built with."""
  catalog_dir, cache_dir, _ = built
  entry = catalog.load(catalog_dir).by_name()["sni:task001_toy_add_small"]
  manifest = cache.read_manifest(cache_dir)
  parts = lambda e: cache.fingerprint_parts(
      e,
      0,
      cache.TRAIN_SPLIT,
      manifest.vocabulary,
      manifest.seed,  # pylint: disable=unnecessary-lambda-assignment
      manifest.pool_size)
  assert cache.incomplete(cache.shard_dir(cache_dir, entry.name, 0, cache.TRAIN_SPLIT), parts(entry)) is None
  assert "excluded_instances" not in parts(entry)["entry"]
  left_out = dataclasses.replace(entry, excluded_instances=(5,), num_examples=entry.num_examples - 1)
  assert parts(left_out)["entry"]["excluded_instances"] == [5]
  assert cache.fingerprint(left_out, 0, cache.TRAIN_SPLIT, manifest.vocabulary, manifest.seed,
                           manifest.pool_size) != cache.fingerprint(entry, 0, cache.TRAIN_SPLIT, manifest.vocabulary,
                                                                    manifest.seed, manifest.pool_size)
