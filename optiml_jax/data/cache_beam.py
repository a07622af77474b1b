"""Builds the pre-tokenized bench cache (`cache.py`) with an Apache Beam pipeline: `python -m optiml_jax.bench cache`.

Where it sits: after `bench build` (the catalog) and before training or evaluation from CACHE_DIR. One Beam
element per (task, number of demonstrations); each worker formats and tokenizes the task's splits exactly as the
uncached Tasks do (`registry.iter_examples`, same seed) and commits one shard per split (`cache.write_shard`).
The driver then writes CACHE_DIR/cache.json listing every committed shard and every task that failed, with its
reason: this run's, and those of earlier runs (other `--tasks` or `--shots`) still complete for this catalog
(`--tasks` and `--shots` say what to build, not what the cache holds), with the catalog's copy beside it. Both are
replaced at the end only, after every argument was checked and the pipeline ran, so a usage error, a crash or
Ctrl-C leaves the cache as it was listed. Nothing is collected through Beam itself: workers write shards (or a
small error file) into CACHE_DIR, so any runner whose workers can read the catalog's source files and write
CACHE_DIR works:

    local (default): Beam's FnApiRunner over local processes (`--direct_num_workers`, default every core,
                     `--direct_running_mode multi_processing`). Not Beam's DirectRunner default: that one first
                     downloads Beam's Prism runner from GitHub and runs every worker in one process there;
                     `--runner=DirectRunner` still asks for it;
    DataflowRunner, FlinkRunner, SparkRunner, PortableRunner: pass Beam's own options after the command's.

Re-running skips shards already committed with the same fingerprint (`cache.incomplete`: the catalog entry, the
source files' content, the tokenizer...), so an interrupted or partly failed build is finished by running the same
command again. The driver hashes each task's source files once (`cache.source_identity`; a file whose size and
modification time its shards recorded is not read again) and hands the result to the workers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import traceback
from typing import Any, Iterable, Mapping, Sequence

from optiml_jax import tempfiles
from optiml_jax.data import cache
from optiml_jax.data import catalog as catalog_lib

ERROR_SUFFIX = ".error.json"
LOCAL_RUNNER = "FnApiRunner"  # the local runner when none is named (`default_direct_options`)


@dataclasses.dataclass(frozen=True)
class WorkItem:
  """One Beam element: a catalog task and a number of demonstrations (every split of it that has examples)."""

  entry: dict[str, Any]  # `dataclasses.asdict(CatalogEntry)`: plain values, pickles and serialises anywhere
  shots: int
  # The content of the entry's source files (`cache.source_identity`, hashed once by the driver), None where the
  # driver could not read them; and their [size, mtime_ns], recorded in each shard so a rebuild rehashes only
  # files that changed.
  source: dict[str, Any] | None = None
  source_stat: dict[str, list[int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BuildResult:
  """What a build did: shard names written now, already complete, and failed tasks with their reasons."""

  written: tuple[str, ...]
  skipped: tuple[str, ...]
  failed: dict[str, str]
  manifest: pathlib.Path
  outdated: dict[str, str] = dataclasses.field(default_factory=dict)  # shard found out of date -> why (rewritten)
  unchecked: tuple[str, ...] = ()  # listed shards whose source files could not be read here: not checked
  recorded: tuple[str, ...] = ()  # shards of an older version whose source's content was recorded (`record_source`)
  kept: tuple[str, ...] = ()  # shards earlier runs listed (other --tasks or --shots), still complete: still listed
  dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # earlier runs' shards no longer listed -> why

  def describe(self) -> str:
    lines = [
        f"cache: {len(self.written)} shard(s) written, {len(self.skipped)} already complete, "
        f"{len(self.failed)} task variant(s) failed; manifest {self.manifest}"
    ]
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(self.outdated.items()):
      by_reason.setdefault(reason, []).append(name)
    lines += [
        f"  out of date, rebuilt: {len(names)} shard(s) ({names[0]}{', ...' if len(names) > 1 else ''}): {reason}"
        for reason, names in by_reason.items()
    ]
    if self.recorded:
      lines.append(
          f"  {len(self.recorded)} shard(s) ({self.recorded[0]}{', ...' if len(self.recorded) > 1 else ''}) built "
          "before shards recorded their source's content, after it last changed: recorded, kept")
    if self.unchecked:
      lines.append(
          f"  {len(self.unchecked)} shard(s) ({self.unchecked[0]}{', ...' if len(self.unchecked) > 1 else ''}) "
          "listed without checking their source: its files cannot be read here")
    if self.kept:
      lines.append(f"  {len(self.kept)} shard(s) of earlier runs (other --tasks or --shots) still complete: listed")
    dropped: dict[str, list[str]] = {}
    for name, reason in sorted(self.dropped.items()):
      dropped.setdefault(reason, []).append(name)
    lines += [
        f"  no longer listed: {len(names)} shard(s) of earlier runs ({names[0]}{', ...' if len(names) > 1 else ''}) "
        f"{reason}; rebuild them with their --tasks / --shots" for reason, names in dropped.items()
    ]
    lines += [f"  failed: {name}: {reason}" for name, reason in sorted(self.failed.items())]
    return "\n".join(lines)


def splits_of(entry: catalog_lib.CatalogEntry) -> tuple[str, ...]:
  """The splits a task's Task has (the registry's rule): train for training tasks, validation for eval instances."""
  splits = []
  if entry.role == catalog_lib.TRAIN and entry.num_examples > 0:
    splits.append(cache.TRAIN_SPLIT)
  if entry.num_eval_instances > 0:
    splits.append(cache.EVAL_SPLIT)
  return tuple(splits)


def _entry(data: dict[str, Any]) -> catalog_lib.CatalogEntry:
  return catalog_lib.CatalogEntry(**{**data, "raw_categories": tuple(data.get("raw_categories", ()))})


def _error_path(cache_dir: str, name: str, shots: int) -> pathlib.Path:
  return pathlib.Path(cache_dir) / cache.SHARDS_DIR / (cache.shard_name(name, shots, "all") + ERROR_SUFFIX)


def write_task(item: WorkItem, cache_dir: str, vocabulary: Any, seed: int, pool_size: int,
               stats_length: int = cache.DEFAULT_STATS_LENGTH) -> list[str]:
  """Writes the shards of one task variant that are not already complete; returns their names.

  A failure writes `<shard>.error.json` (the reason, for the driver's report) instead of raising, so one bad task
  does not stop the others; a later success removes it.
  """
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top  (TF and seqio: on workers only)

  entry = _entry(item.entry)
  error_file = _error_path(cache_dir, entry.name, item.shots)
  written = []
  try:
    task = None
    for split in splits_of(entry):
      out = cache.shard_dir(cache_dir, entry.name, item.shots, split)
      parts = cache.fingerprint_parts(entry, item.shots, split, vocabulary.fingerprint, seed, pool_size, item.source)
      if cache.incomplete(out, parts) is None:
        continue
      task = task or registry.reopen_task(entry)
      examples = registry.iter_examples(entry, task, split, item.shots, vocabulary, seed, pool_size)
      bos = 0 if vocabulary.bos_id is None else 1
      cache.write_shard(out, examples, task=entry.name, shots=item.shots, split=split,
                        shard_fingerprint=cache.hash_parts(parts), stats_length=stats_length, bos=bos, made_from=parts,
                        source_stat=item.source_stat)
      written.append(out.name)
  except Exception as e:  # pylint: disable=broad-except  (reported per task; the other tasks go on)
    error_file.parent.mkdir(parents=True, exist_ok=True)
    reason = f"{type(e).__name__}: {e}"
    error_file.write_text(
        json.dumps({
            "task": entry.name,
            "shots": item.shots,
            "reason": reason,
            "traceback": traceback.format_exc()
        }), encoding="utf-8")
    logging.error("cache: task %s (%d-shot) failed: %s", entry.name, item.shots, reason)
    return written
  if error_file.exists():
    error_file.unlink()
  return written


def _beam_pipeline(items: Sequence[WorkItem], cache_dir: str, tokenizer_dir: str | None, seed: int, pool_size: int,
                   stats_length: int, pipeline_args: Sequence[str]) -> None:
  try:
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError("building the cache needs Apache Beam: pip install 'optiml-jax[cache]' "
                       "(or apache-beam)") from e

  class WriteShards(beam.DoFn):
    """Formats, tokenizes and commits the shards of one task variant per element."""

    def setup(self):
      from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top
      self._vocabulary = vocab.load(tokenizer_dir)

    def process(self, item: WorkItem) -> Iterable[str]:
      yield from write_task(item, cache_dir, self._vocabulary, seed, pool_size, stats_length)

  options = pipeline_options.PipelineOptions(list(default_direct_options(pipeline_args)))
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline | "Tasks" >> beam.Create(list(items)) | "Spread" >> beam.Reshuffle() |
         "WriteShards" >> beam.ParDo(WriteShards()))


def beam_option_flags() -> frozenset[str] | None:
  """Every flag of the pipeline options Apache Beam's Python SDK defines (`--runner`, `--project`,
  `--direct_num_workers`, ...); None without Beam. A runner's job server may take flags besides these (Beam hands
  unknown ones to portable runners)."""
  try:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  flags: set[str] = set()

  def record(parser: argparse.ArgumentParser) -> None:  # called with every options class's arguments added
    flags.update(parser._option_string_actions)  # pylint: disable=protected-access

  pipeline_options.PipelineOptions([]).get_all_options(add_extra_args_fn=record)
  return frozenset(flags)


def default_direct_options(pipeline_args: Sequence[str]) -> list[str]:
  """Beam options for a local build: the FnApiRunner when no runner is named, every core a process unless set.

  Beam's own default, the DirectRunner, first tries its Prism runner (a binary it downloads from GitHub, which
  runs every worker of this pipeline in one process) and falls back to the FnApiRunner only when that fails, so a
  build would hang on, or need, the network and run on one core where GitHub is reachable. Naming the FnApiRunner
  keeps the build offline and parallel on every machine.
  """
  args = list(pipeline_args)
  runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), None)
  if runner is None and "--runner" in args:
    runner = args[args.index("--runner") + 1]
  if runner is None:
    args.append(f"--runner={LOCAL_RUNNER}")
  elif runner not in ("DirectRunner", "direct", LOCAL_RUNNER):
    return args
  if not any(a.startswith("--direct_num_workers") for a in args):
    args.append(f"--direct_num_workers={os.cpu_count() or 1}")
  if not any(a.startswith("--direct_running_mode") for a in args):
    args.append("--direct_running_mode=multi_processing")
  if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
    args.append("--default_sdk_harness_log_level=WARNING")  # the local workers' INFO lines drown the report
  return args


def build(catalog_dir: str | os.PathLike, cache_dir: str | os.PathLike, tokenizer_dir: str | None = None,
          shots: Sequence[int] = (0,), seed: int | None = None, pool_size: int | None = None,
          stats_length: int = cache.DEFAULT_STATS_LENGTH, pipeline_args: Sequence[str] = (),
          tasks: Sequence[str] | None = None) -> BuildResult:
  """Builds (or completes) CACHE_DIR from a catalog; see the module docstring.

  Args:
    catalog_dir: the catalog folder (`bench build --out`).
    cache_dir: where the cache goes (created; an existing cache of the same tokenizer is completed: the shards it
      lists that are still complete for this catalog stay listed).
    tokenizer_dir: the Hugging Face tokenizer folder to tokenize with; None: OPT's (shipped).
    shots: numbers of demonstrations to cache (the Tasks `<name>` and `<name>.<k>shot`).
    seed, pool_size: the registry's formatting seed and demonstration pool (defaults: the registry's).
    stats_length: row length the per-shard `truncations` statistic counts against.
    pipeline_args: Beam pipeline options (`--runner=...` and the runner's own).
    tasks: build only these catalog task names (default: every task with examples).

  Raises:
    cache.CacheError: CACHE_DIR holds a cache of another tokenizer, formatting seed or pool.
    ValueError: bad `shots`, or `tasks` names a task the catalog lacks.
  """
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top

  seed = registry.DEFAULT_SEED if seed is None else seed
  pool_size = registry.DEMONSTRATION_POOL_SIZE if pool_size is None else pool_size
  variants = cache.variants(shots)
  # Everything is checked before CACHE_DIR is touched: a usage error leaves a cache as it was (and no folder).
  bench = catalog_lib.load(catalog_dir)
  by_name = {e.name: e for e in bench.tasks if splits_of(e)}
  entries = list(by_name.values())
  if tasks is not None:
    unknown = sorted(set(tasks) - set(by_name))
    if unknown:
      raise ValueError(f"{catalog_dir}: no task(s) with examples named {unknown}")
    entries = [e for e in entries if e.name in set(tasks)]
  vocabulary = vocab.load(tokenizer_dir)
  out = pathlib.Path(cache_dir)
  old = None
  if (out / cache.MANIFEST_FILE).is_file():
    old = cache.read_manifest(out)
    cache.check_vocabulary(old, vocabulary.fingerprint, out)
    if (old.seed, old.pool_size) != (seed, pool_size):
      raise cache.CacheError(f"{out}: built with formatting seed {old.seed} and pool {old.pool_size}, not {seed} and "
                             f"{pool_size}; use another CACHE_DIR")
  shards_dir = out / cache.SHARDS_DIR
  # This run's shards (--tasks x --shots), and the shards earlier runs listed (other tasks or shots): those stay
  # listed while they are complete for this catalog's entries.
  wanted = {
      cache.shard_name(e.name, k, split): (e, k, split) for e in entries for k in variants for split in splits_of(e)
  }
  earlier = {name: variant for name, variant in _listed(old, by_name).items() if name not in wanted}
  found = {name: cache.read_stats(shards_dir / name) for name in (*wanted, *earlier)}
  sources = _source_identities(list({e.name: e for e, _, _ in (*wanted.values(), *earlier.values())}.values()), found)
  parts_of = {}  # shard name -> fingerprint parts
  outdated = {}  # shard name -> why the shard there is not this one
  recorded = []  # shards built before shards recorded their source, after it last changed: recorded, kept
  for name, (entry, k, split) in {**wanted, **earlier}.items():
    source, source_stat = sources[entry.name]
    parts = parts_of[name] = cache.fingerprint_parts(entry, k, split, vocabulary.fingerprint, seed, pool_size, source)
    if found[name] is not None and cache.record_source(shards_dir / name, parts, source_stat):
      recorded.append(name)
      found[name] = cache.read_stats(shards_dir / name)
    stats = found[name]
    if name in wanted and stats is not None and not cache.built_from(stats, parts):
      outdated[name] = cache.mismatch(stats, parts)
  complete = {name for name in wanted if cache.incomplete(shards_dir / name, parts_of[name]) is None}
  todo = sorted({(e.name, k) for name, (e, k, _) in wanted.items() if name not in complete})
  items = [WorkItem(dataclasses.asdict(by_name[name]), k, *sources[name]) for name, k in todo]
  if items:
    out.mkdir(parents=True, exist_ok=True)
    _beam_pipeline(items, str(out), tokenizer_dir, seed, pool_size, stats_length, pipeline_args)
  shards, failed, written, unchecked, kept, dropped = {}, {}, [], [], [], {}
  for name, (entry, k, split) in sorted({**wanted, **earlier}.items()):
    state = cache.incomplete(shards_dir / name, parts_of[name])
    stats = cache.read_stats(shards_dir / name)
    if state is None and stats is not None:
      shards[name] = {
          "task": entry.name,
          "shots": k,
          "split": split,
          "fingerprint": stats["fingerprint"],
          "examples": stats["examples"]
      }
      written += [name] if name in wanted and name not in complete else []
      kept += [name] if name in earlier else []
      unchecked += [name] if "source" not in parts_of[name] else []
    elif name in earlier:
      dropped[name] = state or "is missing"
    else:
      error = _error_path(str(out), entry.name, k)
      reason = "the worker wrote nothing (killed?)"
      if error.is_file():
        reason = json.loads(error.read_text(encoding="utf-8")).get("reason", reason)
      failed[f"{entry.name} ({k}-shot)"] = reason
  # Earlier runs' failures of task variants this run did not build still stand (their task is in this catalog).
  this_run = {f"{e.name} ({k}-shot)" for e in entries for k in variants}
  still_failed = {
      variant: reason
      for variant, reason in (old.failed if old else {}).items()
      if variant not in this_run and variant.rpartition(" (")[0] in by_name
  }
  still_failed.update(failed)
  manifest = cache.Manifest(vocabulary=vocabulary.fingerprint, tokenizer_dir=tokenizer_dir, seed=seed,
                            pool_size=pool_size, shots=tuple(sorted({*variants, *(old.shots if old else ())})),
                            shards=shards, failed=still_failed, tokenizer=cache.TokenizerInfo.of(vocabulary))
  # The catalog copy and the manifest change together, at the end: a build that fails or is interrupted before
  # leaves the cache as it was listed (its shards rewritten in place are checked when read).
  out.mkdir(parents=True, exist_ok=True)
  _copy_catalog(catalog_dir, out)
  path = cache.write_manifest(out, manifest)
  return BuildResult(tuple(written), tuple(sorted(complete)), failed, path, outdated, tuple(unchecked), tuple(recorded),
                     tuple(kept), dropped)


def _listed(manifest: cache.Manifest | None,
            by_name: Mapping[str, catalog_lib.CatalogEntry]) -> dict[str, tuple[catalog_lib.CatalogEntry, int, str]]:
  """The shards a manifest lists whose task has that split in this catalog: name -> (entry, shots, split)."""
  listed = {}
  for name, info in (manifest.shards if manifest else {}).items():
    entry = by_name.get(str(info.get("task"))) if isinstance(info, dict) else None
    if entry is None or not isinstance(info.get("shots"), int) or info.get("split") not in splits_of(entry):
      continue
    if name == cache.shard_name(entry.name, info["shots"], info["split"]):
      listed[name] = (entry, info["shots"], info["split"])
  return listed


def _source_identities(entries: Sequence[catalog_lib.CatalogEntry],
                       found: Mapping[str, Mapping[str, Any] | None]) -> dict[str, tuple[dict[str, Any] | None, dict]]:
  """Task name -> `cache.source_identity` of its entry: the files whose size and modification time a shard there
  (`found`, shard name -> its statistics) recorded are not read again; the others are hashed, a few at a time."""
  known: dict[str, tuple[int, int, str]] = {}
  for stats in found.values():
    known.update(cache.recorded_sources(stats))
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
    identities = pool.map(lambda e: cache.source_identity(e, known), entries)
    return {entry.name: identity for entry, identity in zip(entries, identities)}


def _copy_catalog(catalog_dir: str | os.PathLike, out: pathlib.Path) -> None:
  source = pathlib.Path(catalog_dir)
  source = source / cache.CATALOG_FILE if source.is_dir() else source
  fd, tmp = tempfiles.mkstemp(prefix=f".{cache.CATALOG_FILE}.tmp-", dir=out)
  os.close(fd)
  shutil.copyfile(source, tmp)
  os.replace(tmp, out / cache.CATALOG_FILE)
