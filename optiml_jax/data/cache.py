"""The pre-tokenized bench cache: one committed shard per (task, number of demonstrations, split) under CACHE_DIR.

Where it sits: between the catalog (`catalog.py`) and everything that reads examples. `cache_beam.py` writes it
with an Apache Beam pipeline (`python -m optiml_jax.bench cache`); `registry.register_catalog(cache_dir=...)` serves
the same seqio Tasks from it, and `cached_stream.CachedBatchStream` draws training batches from it by index, with
or without seqio (the manifest records the catalog's copy and the tokenizer's BOS, EOS and vocabulary size, so
training from a cache needs neither seqio nor TensorFlow: `TokenizerInfo`, `require_tokenizer`).
The examples are those `registry.iter_examples` yields (same formatting seed, demonstrations, delimiters and
tokens), in source order and untruncated: truncation and packing happen when a stream reads them, so one cache
serves every sequence length.

Layout:

    CACHE_DIR/cache.json                    what was asked for: tokenizer (fingerprint, folder; BOS, EOS and
                                            vocabulary size), formatting seed, shots, shard names
    CACHE_DIR/catalog.json                  the catalog the cache was built from (registers without CATALOG_DIR)
    CACHE_DIR/shards/<task>.<k>shot.<split>/
        tokens.npy     int32 [total]        inputs then targets of every example, concatenated
        index.npy      int64 [n, 4]         (offset into tokens, input tokens, target tokens, byte offset of the
                                            example's line in examples.jsonl)
        examples.jsonl                      one line per example: instance_id, inputs_pretokenized,
                                            targets_pretokenized, references, options_pretokenized, options,
                                            and options_scores when the options are graded (BIG-bench)
        stats.json                          the commit marker, written last: counts, fingerprint and what it
                                            was made from (made_from), file sizes, and the size and mtime of
                                            the source files it was read from (source_stat)

A shard is written into a staging folder (`<shard>.tmp-<random>`) and renamed into place once `stats.json` is in
it, so a reader never sees a half-written shard (the staging folder of a writer killed before that is removed when
the shard is written again); `read_shard` also checks every file's size against `stats.json` and names the file
that differs. A shard's fingerprint covers its catalog entry (but its sampling rate, which no example depends on),
the content of the entry's source files (`source_identity`: their sha256; TFDS data by the dataset version the
entry names), the tokenizer files, the formatting seed, the demonstration pool, this format's version and the rules
below: a rebuild skips shards whose fingerprint matches and rewrites the others, and a run that reads a shard built
from anything else is refused with what differs named (`mismatch`). A run that reads the cache needs no source
file, so it checks every part but the source's content (`built_from`); a build hashes a source file again only
when its size or modification time differ from those its shards recorded.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from optiml_jax import tempfiles
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import records

FORMAT_VERSION = 1
# Which rule drew the demonstrations of k-shot shards (`formatting.choose_demonstrations`,
# `registry.demonstration_pools`): 2 passes over a candidate with the example's own input text and, in a training
# task, over copies of its held-out instances (1 compared ids only); 3 also passes over a repeat of a demonstration
# already drawn (same input and answer) and over the lines the catalog left out of training (`excluded_instances`).
# Part of a k-shot shard's fingerprint only, so a rule change rebuilds the k-shot shards and leaves the 0-shot ones.
DEMONSTRATIONS_RULE = 3
# Which instances a training shard holds (`catalog.train_instances`): 2 passes over repeats of a held-out instance,
# same input and answer (1 took every instance after the held-out ones). Part of a training shard's fingerprint only.
TRAIN_STREAM_RULE = 2
# Which option fields an evaluation shard of a multiple-choice task holds: 1 adds the graded score of each option
# (`options_scores`, BIG-bench's `target_scores`; before, a BIG-bench shard had none and its options scored 1 or 0).
# Part of those shards' fingerprint only, so they are rebuilt and every other shard is kept.
OPTION_SCORES_RULE = 1
MANIFEST_FILE = "cache.json"
CATALOG_FILE = catalog_lib.CATALOG_FILE
SHARDS_DIR = "shards"
TOKENS_FILE = "tokens.npy"
INDEX_FILE = "index.npy"
EXAMPLES_FILE = "examples.jsonl"
STATS_FILE = "stats.json"
SHARD_FILES = (TOKENS_FILE, INDEX_FILE, EXAMPLES_FILE)
INDEX_COLUMNS = 4
TRAIN_SPLIT, EVAL_SPLIT = "train", "validation"
TEXT_FIELDS = ("inputs_pretokenized", "targets_pretokenized")
# `truncations` in a shard's statistics counts the examples longer than a row of this many tokens (OPT-IML's).
DEFAULT_STATS_LENGTH = 2048


class CacheError(ValueError):
  """A cache that cannot be read as asked: missing, partial, corrupt or built for something else."""


def shard_name(task_name: str, shots: int, split: str) -> str:
  """`<task>.<k>shot.<split>` with the task name made safe for a file name (":" and "/" become "__")."""
  safe = task_name.replace("/", "__").replace(":", "__")
  return f"{safe}.{shots}shot.{split}"


def shard_dir(cache_dir: str | os.PathLike, task_name: str, shots: int, split: str) -> pathlib.Path:
  return pathlib.Path(cache_dir) / SHARDS_DIR / shard_name(task_name, shots, split)


def fingerprint_parts(entry: catalog_lib.CatalogEntry, shots: int, split: str, vocabulary_fingerprint: str, seed: int,
                      pool_size: int, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a shard's content depends on (see the module docstring): a shard records them (`made_from` in its
  statistics), so that a shard of another fingerprint is refused with the part that differs named.

  `source` is the content of the entry's source files (`source_identity`), which the build knows; a run that
  reads a cache (without the source files, maybe on another host) leaves it out, and `incomplete` and
  `read_shard` then compare every other part with what the shard recorded. The entry's sampling `rate` is left
  out: a shard holds the same examples at any rate (the catalog copy in CACHE_DIR carries it).
  """
  entry_parts = dataclasses.asdict(entry)
  for field in _NOT_CONTENT:
    del entry_parts[field]
  if not entry.excluded_instances:  # a field added later: a shard of an entry without any keeps its fingerprint
    del entry_parts["excluded_instances"]
  parts = {
      "format_version": FORMAT_VERSION,
      "entry": entry_parts,
      "shots": shots,
      "split": split,
      "vocabulary": vocabulary_fingerprint,
      "seed": seed,
      "pool_size": pool_size,
  }
  if source is not None:
    parts["source"] = dict(source)
  if shots > 0:  # k-shot shards built before the rule changed hold other demonstrations: rebuilt, not read
    parts["demonstrations_rule"] = DEMONSTRATIONS_RULE
  if split == TRAIN_SPLIT:  # training shards built before the stream's rule changed may hold held-out repeats
    parts["train_stream_rule"] = TRAIN_STREAM_RULE
  if split == EVAL_SPLIT and entry.kind == records.MULTIPLE_CHOICE:  # older ones lack the options' graded scores
    parts["option_scores_rule"] = OPTION_SCORES_RULE
  return json.loads(json.dumps(parts, sort_keys=True, default=list))  # as a shard's stats.json reads it back


# Catalog entry fields that a shard's examples do not depend on: not part of its fingerprint (shards built before
# recorded them: `_content` drops them from what those shards recorded).
_NOT_CONTENT = ("rate",)


def source_files(entry: catalog_lib.CatalogEntry) -> tuple[str, ...]:
  """The files a catalog entry's task is read from (`sources.reopen`), whose content a shard's fingerprint covers:
  the entry's own file for the file formats (an SNI task, a P3 template, a BIG-bench task.json, a JSONL or text
  file); for TFDS, whose prepared data a dataset version names (in the entry's path, so in its fingerprint), the
  FLAN templates file its path names, if any."""
  if entry.format != "tfds":
    return (entry.path,)
  from optiml_jax.data.sources import flan_templates  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import tfds  # pylint: disable=g-import-not-at-top  (TensorFlow: TFDS entries only)
  flan = tfds.path_options(entry.path).get("flan")
  return (flan_templates.flan_templates_path(flan),) if flan else ()


def file_sha256(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def source_identity(
    entry: catalog_lib.CatalogEntry,
    known: Mapping[str, tuple[int, int, str]] | None = None) -> tuple[dict[str, Any] | None, dict[str, list[int]]]:
  """(the `source` part of the entry's shards' fingerprint, its files' [size, mtime_ns]) or (None, {}) when a file
  cannot be read here (missing, unreadable): such shards cannot be checked against their source.

  The part is {"files": {path: sha256 of its bytes}}. A file whose size and modification time are the ones `known`
  holds for it ({path: (size, mtime_ns, sha256)}, what a shard built from it recorded: `recorded_sources`) is not
  read again: its recorded sha256 is taken (so a rebuild reads only the sources that changed since).
  """
  files, stat = {}, {}
  try:
    for path in source_files(entry):
      st = os.stat(path)
      key = [st.st_size, st.st_mtime_ns]
      prior = (known or {}).get(path)
      files[path] = prior[2] if prior is not None and list(prior[:2]) == key else file_sha256(path)
      stat[path] = key
  except (OSError, ValueError):
    return None, {}
  return {"files": files}, stat


def recorded_sources(stats: Mapping[str, Any] | None) -> dict[str, tuple[int, int, str]]:
  """{path: (size, mtime_ns, sha256)} of the source files a committed shard (its `stats`) was built from."""
  if not stats:
    return {}
  stat = stats.get("source_stat")
  source = (stats.get("made_from") or {}).get("source")
  if not isinstance(stat, dict) or not isinstance(source, dict) or not isinstance(source.get("files"), dict):
    return {}
  known = {}
  for path, sha in source["files"].items():
    key = stat.get(path)
    if isinstance(key, list) and len(key) == 2 and isinstance(sha, str):
      known[path] = (int(key[0]), int(key[1]), sha)
  return known


def _content(parts: Mapping[str, Any]) -> dict[str, Any]:
  """The parts a reader can check (everything but the source's content), without the entry's fields that no
  shard's content depends on (which shards built before they were left out recorded)."""
  content = {k: v for k, v in parts.items() if k != "source"}
  if isinstance(content.get("entry"), dict):
    content["entry"] = {k: v for k, v in content["entry"].items() if k not in _NOT_CONTENT}
  return content


def built_from(stats: Mapping[str, Any], parts: Mapping[str, Any]) -> bool:
  """Whether a committed shard (its `stats`) was built from `parts` (`fingerprint_parts`). With the `source` part
  (a build), its fingerprint must be theirs; without (a run that reads the cache), what it recorded (`made_from`,
  consistent with its fingerprint) must be `parts` but for the source and the fields no content depends on."""
  fp = stats.get("fingerprint")
  made_from = stats.get("made_from")
  if "source" in parts or not isinstance(made_from, dict):
    return fp == hash_parts(parts)
  return fp == hash_parts(made_from) and _content(made_from) == _content(parts)


def hash_parts(parts: Mapping[str, Any]) -> str:
  """A shard's fingerprint: `fingerprint_parts`, hashed."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode("utf-8")).hexdigest()


def fingerprint(entry: catalog_lib.CatalogEntry, shots: int, split: str, vocabulary_fingerprint: str, seed: int,
                pool_size: int, source: Mapping[str, Any] | None = None) -> str:
  """What a shard's content depends on, hashed."""
  return hash_parts(fingerprint_parts(entry, shots, split, vocabulary_fingerprint, seed, pool_size, source))


_RULES = {
    "demonstrations_rule": "the rule that draws k-shot demonstrations",
    "train_stream_rule": "the rule that picks a training shard's instances",
    "option_scores_rule": "the options' fields of a multiple-choice evaluation shard",
}


def mismatch(stats: Mapping[str, Any], parts: Mapping[str, Any]) -> str:
  """Why a committed shard (its `stats`) is not the one `parts` describe, in words: each part that differs, or
  for a shard written before shards recorded their parts, every part it may be. Messages say the shard "is out
  of date: " and this."""
  made_from = stats.get("made_from")
  if not isinstance(made_from, dict):
    return ("it was built from another catalog entry, tokenizer, seed or demonstration pool, or by an older version "
            "of optiml_jax whose formatting rules differ")
  reasons = []
  for key in sorted(set(parts) | set(made_from)):
    have, want = made_from.get(key), parts.get(key)
    if key == "entry":
      have, want = _content({key: have})[key], _content({key: want})[key]
    if have == want or (key == "source" and key not in parts):  # a reader cannot check the source
      continue
    if key in _RULES:
      reasons.append(f"{_RULES[key]} changed (rule {'none' if have is None else have} when it was built, "
                     f"{'none' if want is None else want} in this version)")
    elif key == "entry":
      fields = sorted(f for f in set(have or {}) | set(want or {}) if (have or {}).get(f) != (want or {}).get(f))
      reasons.append(f"its catalog entry differs in {', '.join(fields)}")
    elif key == "source":
      if not isinstance(have, dict):
        reasons.append("no content of its source was recorded when it was built (by an older optiml_jax, or where "
                       "its source files could not be read)")
      else:
        files = (have.get("files") or {}, (want or {}).get("files") or {})
        changed = sorted(p for p in set(files[0]) | set(files[1]) if files[0].get(p) != files[1].get(p))
        reasons.append(f"its source changed ({', '.join(changed) or 'its files'})")
    elif key == "vocabulary":
      reasons.append("another tokenizer built it")
    else:
      reasons.append(f"its {key} was {have!r}, this run's is {want!r}")
  return "; ".join(reasons or ["its fingerprint differs"])


# ---------------------------------------------------------------------------------------------------
# Writing one shard.


def _row_length(example: Mapping[str, Any], bos: int) -> int:
  return bos + len(example["inputs"]) + len(example["targets"])


def write_shard(out: pathlib.Path, examples: Iterable[Mapping[str, Any]], *, task: str, shots: int, split: str,
                shard_fingerprint: str, stats_length: int = DEFAULT_STATS_LENGTH, bos: int = 1,
                made_from: Mapping[str, Any] | None = None,
                source_stat: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
  """Writes one shard from `registry.iter_examples`-style examples and returns its statistics (with `made_from`,
  the shard's `fingerprint_parts`, and `source_stat`, its source files' [size, mtime_ns] (`source_identity`),
  when given).

  The files go to a staging folder beside `out`, `stats.json` last, and the folder is then renamed to `out`
  (replacing an older shard). Nothing is left behind if an example fails, and the staging folders of earlier
  writers of this shard that were killed before they finished (`<shard>.tmp-*`) are removed first: a shard has one
  writer at a time (one Beam element per task variant).
  """
  out.parent.mkdir(parents=True, exist_ok=True)
  for leftover in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
    shutil.rmtree(leftover, ignore_errors=True)
  staging = pathlib.Path(tempfiles.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
  try:
    chunks: list[np.ndarray] = []
    index: list[tuple[int, int, int, int]] = []
    offset = input_tokens = target_tokens = truncations = longest = text_offset = 0
    with open(staging / EXAMPLES_FILE, "wb") as text:
      for ex in examples:
        inputs = np.asarray(ex["inputs"], np.int32)
        targets = np.asarray(ex["targets"], np.int32)
        chunks += [inputs, targets]
        index.append((offset, inputs.size, targets.size, text_offset))
        offset += inputs.size + targets.size
        input_tokens += inputs.size
        target_tokens += targets.size
        length = _row_length(ex, bos)
        longest = max(longest, length)
        truncations += length > stats_length
        line = (json.dumps(_text_record(ex), ensure_ascii=False) + "\n").encode("utf-8")
        text.write(line)
        text_offset += len(line)
    np.save(staging / TOKENS_FILE, np.concatenate(chunks) if chunks else np.zeros(0, np.int32))
    np.save(staging / INDEX_FILE, np.asarray(index, np.int64).reshape(-1, INDEX_COLUMNS))
    stats = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "shots": shots,
        "split": split,
        "fingerprint": shard_fingerprint,
        "examples": len(index),
        "input_tokens": int(input_tokens),
        "target_tokens": int(target_tokens),
        "longest": int(longest),
        "stats_length": stats_length,
        "truncations": int(truncations),
        "file_sizes": {
            name: (staging / name).stat().st_size for name in SHARD_FILES
        },
    }
    if made_from is not None:
      stats["made_from"] = dict(made_from)
    if source_stat:
      stats["source_stat"] = {path: [int(v) for v in key] for path, key in source_stat.items()}
    with open(staging / STATS_FILE, "w", encoding="utf-8") as f:
      json.dump(stats, f, indent=1)
    if out.exists():
      shutil.rmtree(out)
    os.replace(staging, out)
    return stats
  finally:
    if staging.exists():
      shutil.rmtree(staging)


def _text_record(ex: Mapping[str, Any]) -> dict[str, Any]:
  values = np.asarray(ex.get("options_values", np.zeros(0, np.int32)))
  lengths = np.asarray(ex.get("options_lengths", np.zeros(0, np.int64)))
  options, start = [], 0
  for n in lengths.tolist():
    options.append(values[start:start + n].tolist())
    start += n
  record = {
      "instance_id": str(ex["instance_id"]),
      "inputs_pretokenized": str(ex["inputs_pretokenized"]),
      "targets_pretokenized": str(ex["targets_pretokenized"]),
      "references": [str(r) for r in np.asarray(ex["references"], dtype=object).tolist()],
      "options_pretokenized": [str(o) for o in np.asarray(ex["options_pretokenized"], dtype=object).tolist()],
      "options": options,
  }
  scores = np.asarray(ex.get("options_scores", ()), np.float32)
  if scores.size:  # graded options only: every other line is as before
    record["options_scores"] = scores.tolist()
  return record


def read_stats(out: pathlib.Path) -> dict[str, Any] | None:
  """A committed shard's statistics, or None when the shard is absent or was never committed."""
  path = out / STATS_FILE
  if not path.is_file():
    return None
  try:
    with open(path, encoding="utf-8") as f:
      stats = json.load(f)
  except (OSError, ValueError):
    return None
  return stats if isinstance(stats, dict) else None


def is_complete(out: pathlib.Path, shard_fingerprint: str) -> bool:
  """Whether `out` holds a committed shard of this fingerprint whose files have their recorded sizes."""
  stats = read_stats(out)
  if stats is None or stats.get("fingerprint") != shard_fingerprint:
    return False
  sizes = stats.get("file_sizes") or {}
  return all((out / name).is_file() and (out / name).stat().st_size == sizes.get(name) for name in SHARD_FILES)


def incomplete(out: pathlib.Path, parts: Mapping[str, Any]) -> str | None:
  """None when `out` holds a committed shard built from `parts` (`fingerprint_parts`), else why not, in words."""
  stats = read_stats(out)
  if stats is None:
    return "was never committed" if out.is_dir() else "is missing"
  if not built_from(stats, parts):
    return f"is out of date: {mismatch(stats, parts)}"
  if not is_complete(out, stats["fingerprint"]):
    return f"is damaged (a file's size differs from its {STATS_FILE})"
  return None


def record_source(out: pathlib.Path, parts: Mapping[str, Any], source_stat: Mapping[str, Sequence[int]]) -> bool:
  """Records the source's content (`parts["source"]`) in a complete shard built before shards recorded it, when
  it matches `parts` otherwise and was committed after every source file last changed ([size, mtime_ns] in
  `source_stat`): it was built from their current content, so it is kept (its stats.json replaced atomically),
  not rebuilt. Returns whether it did. A file changed later, or at the same time (a coarse clock), is no match."""
  stats = read_stats(out)
  made_from = None if stats is None else stats.get("made_from")
  if (stats is None or not isinstance(made_from, dict) or "source" in made_from or "source" not in parts or
      not built_from(stats, {
          k: v for k, v in parts.items() if k != "source"
      })):
    return False
  committed = (out / STATS_FILE).stat().st_mtime_ns
  if set(source_stat) != set(parts["source"].get("files", ())) or any(
      int(key[1]) >= committed for key in source_stat.values()) or not is_complete(out, stats["fingerprint"]):
    return False
  stats = {**stats, "made_from": dict(parts), "fingerprint": hash_parts(parts)}
  stats["source_stat"] = {path: [int(v) for v in key] for path, key in source_stat.items()}
  fd, tmp = tempfiles.mkstemp(prefix=f".{STATS_FILE}.tmp-", dir=out)
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(stats, f, indent=1)
  os.replace(tmp, out / STATS_FILE)
  return True


# ---------------------------------------------------------------------------------------------------
# Reading.


class Shard:
  """A committed shard, opened for random access (the token arrays are memory-mapped)."""

  def __init__(self, path: pathlib.Path, stats: Mapping[str, Any], tokens: np.ndarray, index: np.ndarray):
    self.path, self.stats, self.tokens, self.index = path, dict(stats), tokens, index

  def __len__(self) -> int:
    return int(self.index.shape[0])

  def tokens_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of example `i`, untruncated."""
    offset, n_in, n_tg = (int(v) for v in self.index[i, :3])
    return self.tokens[offset:offset + n_in], self.tokens[offset + n_in:offset + n_in + n_tg]

  def lengths(self) -> tuple[np.ndarray, np.ndarray]:
    """(input lengths, target lengths) of every example."""
    return self.index[:, 1], self.index[:, 2]

  def texts(self, order: Iterable[int] | None = None) -> Iterator[dict[str, Any]]:
    """The text fields (see `_text_record`) of the examples in `order` (default: all, in order)."""
    path = self.path / EXAMPLES_FILE
    with open(path, "rb") as f:
      for i in (range(len(self)) if order is None else order):
        f.seek(int(self.index[i, 3]))
        line = f.readline()
        try:
          yield json.loads(line)
        except ValueError as e:
          raise CacheError(f"{path}: example {i} is not a JSON line ({e}); rebuild this shard") from e


def read_shard(cache_dir: str | os.PathLike, task_name: str, shots: int, split: str,
               expected: Mapping[str, Any] | None = None) -> Shard:
  """Opens the committed shard of a task variant and split; with `expected` (its `fingerprint_parts`), only if
  it was built from them.

  Raises:
    CacheError: the shard is missing or uncommitted, a file's size differs from its statistics (a partial copy
      or a corrupt disk), an array cannot be read, or its fingerprint is not the expected one (what differs is
      named, `mismatch`); the message names the shard or file and says to rebuild it with
      `python -m optiml_jax.bench cache`.
  """
  path = shard_dir(cache_dir, task_name, shots, split)
  rebuild = f"rebuild it with `python -m optiml_jax.bench cache` (CACHE_DIR {cache_dir})"
  stats = read_stats(path)
  if stats is None:
    raise CacheError(f"{path}: no committed shard for task {task_name!r} ({shots}-shot, split {split!r}); {rebuild}")
  if stats.get("format_version") != FORMAT_VERSION:
    raise CacheError(f"{path}: cache format {stats.get('format_version')!r}, this version reads {FORMAT_VERSION}; "
                     f"{rebuild}")
  if expected is not None and not built_from(stats, expected):
    raise CacheError(f"{path}: the shard of task {task_name!r} ({shots}-shot, split {split!r}) "
                     f"is out of date: {mismatch(stats, expected)}; {rebuild}")
  for name in SHARD_FILES:
    file = path / name
    want = (stats.get("file_sizes") or {}).get(name)
    have = file.stat().st_size if file.is_file() else None
    if have != want:
      raise CacheError(f"{file}: {'missing' if have is None else f'{have} bytes'}, the shard's {STATS_FILE} records "
                       f"{want} bytes (a partial copy or a corrupt disk); {rebuild}")
  try:
    tokens = np.load(path / TOKENS_FILE, mmap_mode="r")
    index = np.load(path / INDEX_FILE)
  except (OSError, ValueError) as e:
    raise CacheError(f"{path}: cannot read the shard's arrays ({e}); {rebuild}") from e
  if index.ndim != 2 or index.shape[1] != INDEX_COLUMNS or index.shape[0] != stats.get("examples"):
    raise CacheError(f"{path / INDEX_FILE}: shape {index.shape}, expected ({stats.get('examples')}, {INDEX_COLUMNS}); "
                     f"{rebuild}")
  total = int(index[-1, 0] + index[-1, 1] + index[-1, 2]) if len(index) else 0
  if tokens.ndim != 1 or tokens.shape[0] != total:
    raise CacheError(f"{path / TOKENS_FILE}: {tokens.shape[0]} tokens, its index needs {total}; {rebuild}")
  return Shard(path, stats, tokens, index)


# ---------------------------------------------------------------------------------------------------
# The manifest.


@dataclasses.dataclass(frozen=True)
class TokenizerInfo:
  """What a batch stream needs of the tokenizer a cache was tokenized with, recorded when it is built, so that
  training from the cache needs neither the seqio vocabulary nor TensorFlow (`cached_stream.cache_tasks`)."""

  bos_id: int | None  # the token fed before each example, None when the tokenizer adds none (`HFVocabulary.bos_id`)
  eos_id: int  # the token that ends every target
  vocab_size: int  # one past the largest id: a model's embedding must cover it

  @classmethod
  def of(cls, vocabulary: Any) -> TokenizerInfo:
    """The record of a vocabulary (`vocab.HFVocabulary`: `bos_id`, `eos_id`, `vocab_size`)."""
    bos = vocabulary.bos_id
    return cls(None if bos is None else int(bos), int(vocabulary.eos_id), int(vocabulary.vocab_size))


@dataclasses.dataclass(frozen=True)
class Manifest:
  """CACHE_DIR/cache.json: how the cache was built and which shards it holds."""

  vocabulary: str  # the tokenizer's fingerprint (`vocab.HFVocabulary.fingerprint`, `vocab_info.folder_fingerprint`)
  tokenizer_dir: str | None
  seed: int
  pool_size: int
  shots: tuple[int, ...]
  shards: Mapping[str, Mapping[str, Any]]  # shard name -> {"task", "shots", "split", "fingerprint", "examples"}
  failed: Mapping[str, str] = dataclasses.field(default_factory=dict)  # task -> reason
  tokenizer: TokenizerInfo | None = None  # None in caches built before it was recorded (`require_tokenizer`)

  def to_json(self) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self), "shots": list(self.shots)}


def write_manifest(cache_dir: str | os.PathLike, manifest: Manifest) -> pathlib.Path:
  """Writes cache.json atomically (a temporary file renamed into place)."""
  path = pathlib.Path(cache_dir) / MANIFEST_FILE
  fd, tmp = tempfiles.mkstemp(prefix=f".{MANIFEST_FILE}.tmp-", dir=path.parent)
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(manifest.to_json(), f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return path


def read_manifest(cache_dir: str | os.PathLike) -> Manifest:
  """Reads CACHE_DIR/cache.json.

  Raises:
    CacheError: no cache here, an unreadable file, or another format version.
  """
  path = pathlib.Path(cache_dir) / MANIFEST_FILE
  if not path.is_file():
    raise CacheError(f"{path}: no bench cache here (build one with `python -m optiml_jax.bench cache CATALOG_DIR "
                     f"--out {cache_dir}`)")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise CacheError(f"{path}: unreadable ({e}); rebuild the cache") from e
  if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
    raise CacheError(f"{path}: cache format {data.get('format_version') if isinstance(data, dict) else None!r}, this "
                     f"version reads {FORMAT_VERSION}; rebuild the cache")
  try:
    tokenizer = data.get("tokenizer")
    return Manifest(vocabulary=data["vocabulary"], tokenizer_dir=data.get("tokenizer_dir"), seed=int(data["seed"]),
                    pool_size=int(data["pool_size"]), shots=tuple(int(k) for k in data["shots"]),
                    shards=dict(data["shards"]), failed=dict(data.get("failed") or {}),
                    tokenizer=None if tokenizer is None else _tokenizer_info(tokenizer))
  except (KeyError, TypeError, ValueError) as e:
    raise CacheError(f"{path}: malformed manifest ({e!r}); rebuild the cache") from e


def _tokenizer_info(data: Mapping[str, Any]) -> TokenizerInfo:
  bos = data["bos_id"]
  return TokenizerInfo(None if bos is None else int(bos), int(data["eos_id"]), int(data["vocab_size"]))


def require_tokenizer(manifest: Manifest, cache_dir: str | os.PathLike) -> TokenizerInfo:
  """The tokenizer's BOS, EOS and vocabulary size the cache recorded.

  Raises:
    CacheError: a cache built before they were recorded; the message says how to rebuild it (its shards are kept:
      only cache.json is rewritten) or to train with seqio installed, which reads them from the tokenizer instead.
  """
  if manifest.tokenizer is not None:
    return manifest.tokenizer
  raise CacheError(f"{pathlib.Path(cache_dir) / MANIFEST_FILE}: this cache was built before it recorded its "
                   "tokenizer's BOS id, EOS id and vocabulary size, which training from the cache (without TensorFlow "
                   f"and seqio) needs; record them with `{rebuild_command(manifest, cache_dir)}` (every shard is "
                   "kept: only cache.json is rewritten; add the build's --tasks if it had any)")


def rebuild_command(manifest: Manifest, cache_dir: str | os.PathLike) -> str:
  """The `bench cache` command that rebuilds a cache from its own catalog copy with the tokenizer and shots it was
  built with: it commits nothing new when every shard is complete, and rewrites cache.json."""
  tokenizer = f" --tokenizer_dir {manifest.tokenizer_dir}" if manifest.tokenizer_dir else ""
  shots = ",".join(str(k) for k in manifest.shots)
  return (f"python -m optiml_jax.bench cache {pathlib.Path(cache_dir) / CATALOG_FILE} --out {cache_dir}{tokenizer} "
          f"--shots {shots}")


def check_vocabulary(manifest: Manifest, vocabulary_fingerprint: str, cache_dir: str | os.PathLike) -> None:
  """Refuses a cache tokenized with another tokenizer than the run's."""
  if manifest.vocabulary != vocabulary_fingerprint:
    raise CacheError(f"{cache_dir}: the cache was tokenized with another tokenizer "
                     f"({manifest.tokenizer_dir or 'OPT, shipped'}) than this run's; rebuild it with this run's "
                     "--tokenizer_dir or point TOKENIZER_DIR at the cache's tokenizer")


def variants(shots: Sequence[int]) -> tuple[int, ...]:
  """Sorted, de-duplicated numbers of demonstrations (0 = the 0-shot Task)."""
  if not shots or any(k < 0 for k in shots):
    raise ValueError(f"shots must be non-negative integers, got {list(shots)}")
  return tuple(sorted(set(int(k) for k in shots)))
