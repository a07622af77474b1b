"""Training batches from the bench cache by index: fast start, and a resume that replays nothing.

Where it sits: in place of `pipeline.BatchStream` when the trainer has a CACHE_DIR (`train.run`); it reads the
shards `cache.py` describes, for the Tasks and rates of a training mixture (or one Task), and yields the same
packed `decoder_*` features. Unlike a tf.data graph per task, nothing is opened before a task is first drawn, and
the position is a small JSON state, so a restart continues at once.

Two ways to say what it draws (`StreamTasks`), giving the same batches and states:
  from the cache alone   `CachedBatchStream.from_cache(cache_dir, name, ...)` (`cache_tasks`): the mixture's rates
                         from the catalog copy in the cache (`sampling.task_rates`), the BOS and EOS the manifest
                         recorded (`cache.TokenizerInfo`). Neither seqio nor TensorFlow is imported (a test imports
                         this module, and trains through `train.run`, with both blocked): what `train.run` uses.
  from the seqio registry  `CachedBatchStream(name, ..., cache_dir=...)` (`registered_tasks`): a Mixture or Task
                         that `registry.register_catalog(..., cache_dir=...)` registered, its rates and vocabulary.

The global stream, a pure function of (mixture, seed, sequence length, global batch):
  draw g        the task of draw g is `searchsorted(cdf(rates), u_g)`, u_g from a PCG64 generator seeded by
                (seed, g // DRAW_CHUNK): any draw can be computed without the ones before it;
  example       the c-th draw of task t reads example `order(t, c)`: pass c // n over the task's n examples,
                in an order shuffled within blocks of `sampling.SHUFFLE_BLOCK_SIZE` examples (seed, task, pass,
                block), as the uncached Tasks read their instances;
  rows          each example goes through `formatting.row_examples` (the Task preprocessor's truncation and
                pre-training chunks), then first-fit packing over `max_open_rows` open rows, as `packing.Packer`
                does (with `max_segments_per_row`, a row is complete once it holds that many examples); the plan
                uses only lengths, so every process plans the same global rows cheaply;
  batch p       the next `batch_size * shard_count` completed rows; stream shard i materialises (reads the tokens
                of) only its block i of `batch_size` rows, which the trainer puts where its process's devices hold
                rows (`trainer.runtime.process_row_block`).
So the examples, and their distribution over tasks, follow the mixture's rates as seqio's sampling does (not the
same draws: seqio samples inside tf.data), and the global batches do not depend on the number of processes: the
state is the same on every process (draw counter, per-task counters, open rows) and declares
`"sharding": ROW_BLOCKS_OF_GLOBAL_BATCH`, so a checkpoint resumes exactly on another number of processes
with the same global batch (`trainer.runtime.data_state_of_this_process`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator, Mapping, Sequence, TypedDict

import numpy as np

from optiml_jax.data import cache as cache_lib
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import formatting
from optiml_jax.data import packing_np
from optiml_jax.data import sampling

STATE_VERSION = 1
STATE_KIND = "cached"
# The contract `trainer.runtime.data_state_of_this_process` reads: stream shard i of n is row block i of global
# batch p, itself independent of n (the same value as `trainer.synthetic.ROW_BLOCKS_OF_GLOBAL_BATCH`).
ROW_BLOCKS_OF_GLOBAL_BATCH = "row_blocks_of_global_batch"
DRAW_CHUNK = 4096  # draws computed per generator seed
SHARDING_FIELDS = ("batch_size", "shard_index", "shard_count")

Ref = tuple[int, int, int]  # (task index, example index, piece index of `formatting.row_examples`)


class _StreamArgs(TypedDict):
  """The stream's arguments, as its state records them."""

  kind: str
  name: str
  split: str
  feature_lengths: dict[str, int]
  batch_size: int
  seed: int
  shard_index: int
  shard_count: int
  pack: bool
  max_open_rows: int
  max_segments_per_row: int | None
  tasks_digest: str


@dataclasses.dataclass(frozen=True)
class StreamTasks:
  """What a cached stream draws, resolved once (`cache_tasks` or `registered_tasks`): plain values."""

  rates: tuple[tuple[str, float], ...]  # (Task name, rate): positive rates, sorted by name
  variants: tuple[tuple[catalog_lib.CatalogEntry, int], ...]  # each Task's catalog entry and demonstrations
  bos_id: int | None  # the token fed before each example; None: the tokenizer adds none
  eos_id: int
  manifest: cache_lib.Manifest
  vocabulary: Any = None  # the registered Tasks' seqio vocabulary; None from the cache alone


def cache_tasks(cache_dir: str | os.PathLike, name: str, catalog_dir: str | os.PathLike | None = None) -> StreamTasks:
  """The tasks of `name` (a training mixture of the catalog, `sampling.TRAIN_MIXTURE` or `TRAIN_MIXTURE_UNIFORM`, or
  one catalog Task, any variant) read from the cache alone: no seqio, no TensorFlow.

  Args:
    cache_dir: the bench cache.
    name: the mixture or Task.
    catalog_dir: the catalog (default: the copy inside the cache, CACHE_DIR/catalog.json).

  Raises:
    cache.CacheError: no cache, a cache built before it recorded its tokenizer (`cache.require_tokenizer` says how
      to rebuild it), or a task of `name` without a training shard.
    ValueError: `name` is no mixture or training task of the catalog; FileNotFoundError: no catalog.
  """
  manifest = cache_lib.read_manifest(cache_dir)
  tokenizer = cache_lib.require_tokenizer(manifest, cache_dir)
  bench = catalog_lib.load(cache_dir if catalog_dir is None else catalog_dir)
  rates = sampling.task_rates(bench, name)
  entries = {e.name: e for e in bench.tasks}
  variants = [_variant(task, entries[sampling.parse_variant(task, entries)[0]]) for task, _ in rates]
  return _checked(StreamTasks(tuple(rates), tuple(variants), tokenizer.bos_id, tokenizer.eos_id, manifest), name,
                  cache_dir)


def mixture_tasks(name: str) -> list[tuple[str, float]]:
  """(Task name, rate) of a registered Mixture's tasks with a positive rate, sorted; (name, 1.0) for a Task."""
  import seqio  # pylint: disable=g-import-not-at-top  (the registered path only)

  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    rates = [(t.name, float(provider.get_rate(t))) for t in provider.tasks]
    return sorted((n, r) for n, r in rates if r > 0)
  return [(provider.name, 1.0)]


def registered_tasks(name: str, cache_dir: str | os.PathLike) -> StreamTasks:
  """The tasks of a seqio Mixture or Task that `registry.register_catalog(..., cache_dir=...)` registered.

  Raises:
    cache.CacheError: no cache, a cache of another tokenizer than the Tasks', or a task without a training shard.
  """
  import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow: the registered path only)

  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top

  vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  manifest = cache_lib.read_manifest(cache_dir)
  cache_lib.check_vocabulary(manifest, getattr(vocabulary, "fingerprint", ""), cache_dir)
  rates = mixture_tasks(name)
  variants = [_variant(task, registry.registered_entry(task)) for task, _ in rates]
  return _checked(
      StreamTasks(tuple(rates), tuple(variants), vocabulary.bos_id, vocabulary.eos_id, manifest, vocabulary), name,
      cache_dir)


def _variant(task_name: str, entry: catalog_lib.CatalogEntry) -> tuple[catalog_lib.CatalogEntry, int]:
  return entry, sampling.parse_variant(task_name, (entry.name,))[1]


def _checked(tasks: StreamTasks, name: str, cache_dir: str | os.PathLike) -> StreamTasks:
  """`tasks`, once every one has a training shard in the cache (else a CacheError naming them)."""
  missing = [
      task for (task, _), (entry, shots) in zip(tasks.rates, tasks.variants)
      if cache_lib.shard_name(entry.name, shots, cache_lib.TRAIN_SPLIT) not in tasks.manifest.shards
  ]
  if missing:
    raise cache_lib.CacheError(f"{cache_dir}: no training shard for {len(missing)} task(s) of {name!r}: "
                               f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; build them with `python -m "
                               f"optiml_jax.bench cache CATALOG_DIR --out {cache_dir}` (and --shots for k-shot tasks)")
  return tasks


class _Plan:
  """The global packing plan: draws, per-task counters, open and completed rows (lengths only)."""

  def __init__(self, rates: Sequence[float], length: int, with_bos: bool, max_open_rows: int, pack: bool,
               max_segments: int | None = None):
    probs = np.asarray(rates, np.float64) / float(np.sum(rates))
    self.cdf = np.cumsum(probs)
    self.cdf[-1] = 1.0
    self.length, self.with_bos, self.max_open_rows, self.pack = length, with_bos, max_open_rows, pack
    self.max_segments = max_segments  # a row holding this many pieces is complete; None: no cap
    self.draws = 0
    self.counters = np.zeros(len(rates), np.int64)
    self.open: list[list[Any]] = []  # [used positions, [Ref, ...]]
    self.ready: list[list[Ref]] = []
    self._chunk_cache: tuple[tuple[int, int] | None, np.ndarray] = (None, np.zeros(0, np.int64))

  def state(self) -> dict[str, Any]:
    return {
        "draws": self.draws,
        "counters": {
            str(t): int(c) for t, c in enumerate(self.counters) if c
        },
        "open": [[used, [list(r) for r in refs]] for used, refs in self.open],
        "ready": [[list(r) for r in refs] for refs in self.ready],
    }

  def restore(self, state: Mapping[str, Any]) -> None:
    self.draws = int(state["draws"])
    self.counters[:] = 0
    for t, c in state["counters"].items():
      self.counters[int(t)] = int(c)
    self.open = [[int(used), [_ref(r) for r in refs]] for used, refs in state["open"]]
    self.ready = [[_ref(r) for r in refs] for refs in state["ready"]]

  def _chunk(self, seed: int, chunk: int) -> np.ndarray:
    if self._chunk_cache[0] != (seed, chunk):
      u = np.random.Generator(np.random.PCG64([seed, chunk])).random(DRAW_CHUNK)
      self._chunk_cache = ((seed, chunk), np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.cdf) - 1))
    return self._chunk_cache[1]

  def next_task(self, seed: int) -> int:
    t = int(self._chunk(seed, self.draws // DRAW_CHUNK)[self.draws % DRAW_CHUNK])
    self.draws += 1
    return t

  def place(self, ref: Ref, positions: int) -> None:
    """First fit of one piece of `positions` positions (as `packing.Packer.add`, with its cap on segments)."""
    if positions <= 0:
      return
    if not self.pack:
      self.ready.append([ref])
      return
    slot, evict = packing_np.first_fit([used for used, _ in self.open], positions, self.length, self.max_open_rows)
    if evict:
      self.ready.append(self.open.pop(0)[1])
    if slot is None:
      self.open.append([0, []])
      slot = len(self.open) - 1
    self.open[slot][0] += positions
    self.open[slot][1].append(ref)
    if self.open[slot][0] == self.length or len(self.open[slot][1]) == self.max_segments:  # full, or at the cap
      self.ready.append(self.open.pop(slot)[1])


class CachedBatchStream(Iterator[dict[str, np.ndarray]]):
  """Packed training batches of a training mixture or Task, read from a bench cache (module docstring); without
  seqio: `CachedBatchStream.from_cache`.

  Args:
    name: a mixture or Task: registered in seqio (`registry.register_catalog(..., cache_dir=...)` registered it)
      unless `tasks` says what it draws.
    feature_lengths: {"inputs": Li, "targets": Lt}: rows of Li + Lt positions (only the sum matters).
    batch_size: rows per batch of this process; the global batch is batch_size * shard_count.
    seed: the draws' and shuffling seed.
    shard_index, shard_count: this process's stream shard (`trainer.runtime.process_row_block`).
    cache_dir: the bench cache.
    pack: pack several examples per row (else one per row, padded).
    max_open_rows: the packer's open rows.
    max_segments_per_row: at most this many examples (pieces) per packed row, the static bound a packed-layout
      attention kernel needs (`packing.Packer`'s `max_segments`); None: as many as fit.
    tasks: what `name` draws (`cache_tasks`: from the cache alone); None: from the seqio registry
      (`registered_tasks`). The batches and states are the same either way.
  """

  def __init__(self, name: str, feature_lengths: Mapping[str, int], batch_size: int, seed: int, *,
               cache_dir: str | os.PathLike, shard_index: int = 0, shard_count: int = 1, pack: bool = True,
               max_open_rows: int = 8, max_segments_per_row: int | None = None, tasks: StreamTasks | None = None):
    packing_np.check_stream_args(feature_lengths, batch_size, shard_index, shard_count)
    max_segments_per_row = packing_np.check_max_segments(max_segments_per_row, "max_segments_per_row")
    tasks = registered_tasks(name, cache_dir) if tasks is None else tasks
    self._config: _StreamArgs = {
        "kind": STATE_KIND,
        "name": name,
        "split": cache_lib.TRAIN_SPLIT,
        "feature_lengths": {
            k: int(v) for k, v in sorted(feature_lengths.items())
        },
        "batch_size": int(batch_size),
        "seed": int(seed),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        "pack": bool(pack),
        "max_open_rows": int(max_open_rows),
        "max_segments_per_row": max_segments_per_row,
        "tasks_digest": hashlib.sha256(json.dumps(tasks.rates).encode()).hexdigest()[:16],
    }
    self._cache_dir = str(cache_dir)
    self._tasks = tasks
    self._length = sum(self._config["feature_lengths"].values())
    self._bos = tasks.bos_id
    self._plan = _Plan([r for _, r in tasks.rates], self._length, self._bos is not None, max_open_rows, pack,
                       max_segments_per_row)
    self._shards: dict[int, cache_lib.Shard] = {}
    self._zeros = np.zeros(self._length + 1, np.int32)
    self._orders: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
    self._batches = 0

  @classmethod
  def from_cache(cls, cache_dir: str | os.PathLike, name: str, feature_lengths: Mapping[str, int], batch_size: int,
                 seed: int, *, catalog_dir: str | os.PathLike | None = None, shard_index: int = 0, shard_count: int = 1,
                 pack: bool = True, max_open_rows: int = 8,
                 max_segments_per_row: int | None = None) -> CachedBatchStream:
    """The stream of `name` (a training mixture of the cache's catalog, or one of its Tasks) from the cache alone,
    without seqio or TensorFlow (`cache_tasks`, which says what it raises); other arguments as the constructor's."""
    return cls(name, feature_lengths, batch_size, seed, cache_dir=cache_dir, shard_index=shard_index,
               shard_count=shard_count, pack=pack, max_open_rows=max_open_rows,
               max_segments_per_row=max_segments_per_row, tasks=cache_tasks(cache_dir, name, catalog_dir))

  @property
  def vocabulary(self) -> Any:
    """The registered Tasks' seqio vocabulary; None for a stream from the cache alone (`from_cache`)."""
    return self._tasks.vocabulary

  @property
  def batches_consumed(self) -> int:
    return self._batches

  # --- Examples --------------------------------------------------------------------------------------

  def _shard(self, t: int) -> cache_lib.Shard:
    shard = self._shards.get(t)
    if shard is None:
      task_name = self._tasks.rates[t][0]
      entry, shots = self._tasks.variants[t]
      manifest = self._tasks.manifest
      parts = cache_lib.fingerprint_parts(entry, shots, cache_lib.TRAIN_SPLIT, manifest.vocabulary, manifest.seed,
                                          manifest.pool_size)
      shard = cache_lib.read_shard(self._cache_dir, entry.name, shots, cache_lib.TRAIN_SPLIT, parts)
      if len(shard) == 0:
        raise cache_lib.CacheError(f"{shard.path}: task {task_name!r} has a positive rate but no training examples")
      self._shards[t] = shard
    return shard

  def _block_order(self, t: int, epoch: int, block: int, size: int) -> np.ndarray:
    """The order of one block of a task's examples in one pass (kept while the pass reads that block)."""
    cached = self._orders.get(t)
    if cached is None or cached[0] != (epoch, block):
      key = formatting.stable_hash("cached-order", self._config["seed"], self._tasks.rates[t][0], epoch, block)
      cached = ((epoch, block), np.random.default_rng(key).permutation(size))
      self._orders[t] = cached
    return cached[1]

  def _example_index(self, t: int, count: int) -> int:
    n = len(self._shard(t))
    epoch, j = divmod(count, n)
    block_size = sampling.SHUFFLE_BLOCK_SIZE
    block, offset = divmod(j, block_size)
    size = min(block_size, n - block * block_size)
    return block * block_size + int(self._block_order(t, epoch, block, size)[offset])

  def _pieces(self, t: int, i: int, lengths_only: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    shard = self._shard(t)
    if lengths_only:  # views of one zero array as stand-ins: the plan needs the pieces' lengths only
      n_in, n_tg = (int(v) for v in shard.index[i, 1:3])
      if self._zeros.size < max(n_in, n_tg):
        self._zeros = np.zeros(2 * max(n_in, n_tg), np.int32)
      inputs, targets = self._zeros[:n_in], self._zeros[:n_tg]
    else:
      inputs, targets = shard.tokens_of(i)
    return formatting.row_examples(inputs, targets, self._length, self._tasks.eos_id, self._bos is not None)

  def _positions(self, inputs: np.ndarray, targets: np.ndarray) -> int:
    return (self._bos is not None) + len(inputs) + len(targets) - 1

  # --- Batches ---------------------------------------------------------------------------------------

  def __iter__(self) -> CachedBatchStream:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    c = self._config
    rows = c["batch_size"] * c["shard_count"]
    plan = self._plan
    while len(plan.ready) < rows:
      t = plan.next_task(c["seed"])
      i = self._example_index(t, int(plan.counters[t]))
      plan.counters[t] += 1
      for piece, (inputs, targets) in enumerate(self._pieces(t, i, lengths_only=True)):
        plan.place((t, i, piece), self._positions(inputs, targets))
    batch_rows, plan.ready = plan.ready[:rows], plan.ready[rows:]
    mine = batch_rows[c["shard_index"] * c["batch_size"]:(c["shard_index"] + 1) * c["batch_size"]]
    self._batches += 1
    built = [self._row(refs) for refs in mine]
    return {k: np.stack([r[k] for r in built]) for k in built[0]}

  def _row(self, refs: Sequence[Ref]) -> dict[str, np.ndarray]:
    pieces = [self._pieces(t, i, lengths_only=False)[p] for t, i, p in refs]
    if not self._config["pack"]:
      return next(packing_np.pad_examples(pieces, self._length, self._bos))
    packer = packing_np.Packer(self._length, self._bos, max_open_rows=1,
                               max_segments=self._config["max_segments_per_row"])
    rows = [row for inputs, targets in pieces for row in packer.add(inputs, targets)] + packer.flush()
    if len(rows) != 1:
      raise AssertionError(f"the packing plan's row became {len(rows)} rows")  # a bug, not bad data
    return rows[0]

  # --- Position --------------------------------------------------------------------------------------

  def state(self) -> dict[str, Any]:
    """The position (the same on every process but for the sharding fields), JSON-able."""
    return {
        "version": STATE_VERSION,
        "sharding": ROW_BLOCKS_OF_GLOBAL_BATCH,
        "batches_consumed": self._batches,
        **self._config, "position": self._plan.state()
    }

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from `state`: of this stream, or of the same stream on another number of processes with the same
    global batch (`batch_size * shard_count`). Raises ValueError naming the fields that differ."""
    if state.get("version") != STATE_VERSION or "position" not in state:
      raise ValueError(f"cached stream state version {state.get('version')!r} (or no position): expected "
                       f"{STATE_VERSION}")
    config: Mapping[str, Any] = self._config
    differing = sorted(k for k, v in config.items() if k not in SHARDING_FIELDS and state.get(k) != v)
    saved_rows = int(state.get("batch_size", 0)) * int(state.get("shard_count", 0))
    if saved_rows != config["batch_size"] * config["shard_count"]:
      differing.append("global batch (batch_size * shard_count)")
    if differing:
      details = ", ".join(f"{k}: saved {state.get(k)!r}, this stream {config.get(k)!r}" for k in differing)
      raise ValueError(f"cached stream state is from a different stream ({details})")
    self._plan.restore(state["position"])
    self._batches = int(state["batches_consumed"])


def _ref(values: Sequence[Any]) -> Ref:
  task, example, piece = (int(v) for v in values)
  return task, example, piece
