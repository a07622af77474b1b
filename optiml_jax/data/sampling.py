"""What training draws from a catalog, as plain values: the training mixtures' rates, Task variant names, and the
block-shuffled order a task's examples are read in.

Where it sits: after the catalog (`catalog.py`: roles, sampling rates, the bench definition's shares) and
`rates.py`, before the two things that draw training examples. `registry.register_catalog` registers these
mixtures as seqio Mixtures; `cached_stream.cache_tasks` reads them here directly, so training from the bench cache
needs neither seqio nor TensorFlow (numpy only: a test imports this module in a fresh interpreter). One
implementation, so both paths mix the same tasks at the same rates.

Mixtures of a catalog (`catalog_mixtures`):
  `optiml_bench_train`          train-role tasks (0-shot) with examples, at the catalog's rates (`CatalogEntry.rate`:
                                min(examples, 4096) rescaled to the benchmark shares).
  `optiml_bench_train_uniform`  the same tasks, uniform within each benchmark, same shares (`rates.uniform`).
A Task name instead of a mixture (`task_rates`) is that one task at rate 1.0: `<name>` (0-shot) or
`<name>.<k>shot` (`variant_name`, `parse_variant`).
"""

from __future__ import annotations

import itertools
from typing import Any, Container, Iterable, Iterator

import numpy as np

from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import formatting
from optiml_jax.data import rates

TRAIN_MIXTURE = "optiml_bench_train"
TRAIN_MIXTURE_UNIFORM = "optiml_bench_train_uniform"
# Each pass over a task reads its instances in a seeded random order within blocks of this many (the uncached
# Tasks shuffle raw instances, the cached stream example indices, with the same rule).
SHUFFLE_BLOCK_SIZE = 1024
SHOT_SUFFIX = "shot"


def variant_name(task_name: str, shots: int) -> str:
  """`<name>` for 0 shots, `<name>.<k>shot` otherwise."""
  if shots < 0:
    raise ValueError(f"task {task_name}: shots must be >= 0, got {shots}")
  return task_name if shots == 0 else f"{task_name}.{shots}{SHOT_SUFFIX}"


def parse_variant(name: str, base_names: Container[str]) -> tuple[str, int]:
  """(0-shot task name, shots) of a Task name `<base>.<k>shot` whose base is one of `base_names`; (name, 0) for any
  other name (a 0-shot task, or a name that is no variant)."""
  base, dot, suffix = name.rpartition(".")
  if dot and suffix.endswith(SHOT_SUFFIX) and suffix[:-len(SHOT_SUFFIX)].isdigit() and base in base_names:
    return base, int(suffix[:-len(SHOT_SUFFIX)])
  return name, 0


def config_shares(bench: catalog_lib.Catalog) -> tuple[dict[str, float], tuple[str, ...]]:
  """The benchmark shares and fixed-share benchmarks of the bench definition recorded in a catalog."""
  benchmarks = (bench.config.get("data") or {}).get("benchmarks") or {}
  if not benchmarks:
    raise ValueError("the catalog records no bench definition ('config.data.benchmarks'); pass shares")
  shares = {name: float((b or {}).get("share", 0.0)) for name, b in benchmarks.items()}
  fixed = tuple(name for name, b in benchmarks.items() if (b or {}).get("fixed_share"))
  return shares, fixed


def catalog_mixtures(bench: catalog_lib.Catalog) -> dict[str, dict[str, float]]:
  """The catalog's training mixtures (module docstring): mixture name -> {Task name: rate}; empty when no training
  task has a positive rate."""
  train = {e.name: e.rate for e in bench.tasks if e.role == catalog_lib.TRAIN and e.rate > 0 and e.num_examples > 0}
  if not train:
    return {}
  shares, fixed = config_shares(bench)
  entries = {e.name: e for e in bench.tasks if e.name in train}
  uniform = rates.uniform({
      n: e.num_examples for n, e in entries.items()
  }, {
      n: e.benchmark for n, e in entries.items()
  }, shares, fixed, groups=catalog_lib.template_groups(entries))
  return {TRAIN_MIXTURE: train, TRAIN_MIXTURE_UNIFORM: uniform}


def task_rates(bench: catalog_lib.Catalog, name: str) -> list[tuple[str, float]]:
  """(Task name, rate) of the tasks a training stream of `name` draws, positive rates only, sorted: a mixture of
  `catalog_mixtures`, or one training Task (any variant) at rate 1.0.

  Raises:
    ValueError: `name` is neither, or names a task without training examples.
  """
  if name in (TRAIN_MIXTURE, TRAIN_MIXTURE_UNIFORM):
    mixture = catalog_mixtures(bench).get(name)
    if not mixture:
      raise ValueError(f"mixture {name!r}: the catalog has no training task with a positive rate")
    return sorted((task, float(rate)) for task, rate in mixture.items() if rate > 0)
  entries = {e.name: e for e in bench.tasks}
  base, _ = parse_variant(name, entries)
  entry = entries.get(base)
  if entry is None:
    raise ValueError(f"{name!r} is neither a training mixture of the catalog ({TRAIN_MIXTURE!r}, "
                     f"{TRAIN_MIXTURE_UNIFORM!r}) nor one of its tasks")
  if entry.role != catalog_lib.TRAIN or entry.num_examples <= 0:
    raise ValueError(f"task {name!r} has no training examples (role {entry.role}): it cannot be trained on")
  return [(name, 1.0)]


def shuffled_blocks(items: Iterable[Any], block_size: int, seed: int) -> Iterator[Any]:
  """`items` in a random order within consecutive blocks of `block_size` (deterministic for a seed)."""
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  iterator = iter(items)
  for block_index in itertools.count():
    block = list(itertools.islice(iterator, block_size))
    if not block:
      return
    order = np.random.default_rng(formatting.stable_hash("block", seed, block_index)).permutation(len(block))
    for i in order:
      yield block[i]
