"""13-gram leakage audit between training tasks and evaluation tasks.

Where it sits: `catalog.build` assigns roles, then gives this module the evaluation instances of every
held-out task and the training stream of every training task; pairs that overlap too much are resolved
by the configured policy before sampling rates are computed. Plain strings in, plain records out.

Overlap measure (as docs/bench.md states it):
  Text is lower-cased and split into words (maximal runs of letters, digits and `_`); an instance's text
  is its input followed by its targets. G(x) is the set of word 13-grams of x. For an evaluation task E
  with evaluation instances e_1..e_m, a 13-gram is *template text* of E when it occurs in at least 2 and
  in more than `template_fraction` (default 1/2) of its instances (a shared prompt, not content); such
  grams are ignored. For a training task T, G(T) is the union of G(t) over its training stream. Then

      overlap(T, E) = |{ i : (G(e_i) minus template grams of E) intersects G(T) }| / m,

  the fraction of E's evaluation instances that share at least one 13-gram with T's training data. A pair
  is reported when overlap(T, E) > threshold (OPT-IML: 1%). Instances shorter than 13 words have no
  13-grams and are never counted as hit.

The catalog uses the same index within each dataset for the third level (`EvalIndex.texts_hit`): a training
line of one task that shares a gram with a held-out instance of another task of the dataset is left out.

Cost: the evaluation side is indexed once (sorted 64-bit n-gram hashes with their (task, instance)
postings); each training task is then streamed in chunks, its n-grams hashed with numpy and looked up
by binary search. Memory grows with the evaluation side only.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

NGRAM = 13
_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the polynomial rolling hash
CHUNK = 2048  # training instances hashed per numpy call


@dataclasses.dataclass(frozen=True)
class Overlap:
  """A (train task, eval task) pair whose overlap exceeds the threshold."""

  train_task: str
  eval_task: str
  hit_instances: int  # eval instances sharing a 13-gram with the train task
  eval_instances: int  # eval instances of the eval task
  fraction: float  # hit_instances / eval_instances


def words(text: str) -> list[str]:
  """Lower-cased words of `text`: maximal runs of letters, digits and underscore."""
  return _WORD.findall(text.lower())


def ngram_hashes(texts: Sequence[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
  """64-bit hashes of the word n-grams of each text (n-grams never span two texts).

  Returns:
    (hashes, owner): uint64 hashes and, for each, the index in `texts` of the text it came from.
  """
  ids, lengths = [], []
  for text in texts:
    text_words = words(text)
    lengths.append(len(text_words))
    ids.append(np.fromiter(map(hash, text_words), dtype=np.int64, count=len(text_words)))
  lengths_arr = np.asarray(lengths, dtype=np.int64)
  if not texts or lengths_arr.max(initial=0) < n:
    return np.zeros(0, np.uint64), np.zeros(0, np.int64)
  flat = np.concatenate(ids).view(np.uint64)
  num_windows = flat.size - n + 1
  hashes = np.zeros(num_windows, np.uint64)
  with np.errstate(over="ignore"):
    for j in range(n):
      hashes = hashes * _MULTIPLIER + flat[j:j + num_windows]
  # Keep windows that start inside a text and end before its end.
  starts = np.concatenate([[0], np.cumsum(lengths_arr)[:-1]])
  windows_per_text = np.maximum(lengths_arr - n + 1, 0)
  owner = np.repeat(np.arange(len(texts), dtype=np.int64), windows_per_text)
  offsets = np.arange(owner.size, dtype=np.int64) - np.repeat(
      np.cumsum(windows_per_text) - windows_per_text, windows_per_text)
  return hashes[starts[owner] + offsets], owner


def _distinct_pairs(hashes: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(hash, owner) pairs without repeats: a gram counts once per instance."""
  order = np.lexsort((hashes, owner))
  hashes, owner = hashes[order], owner[order]
  keep = np.ones(hashes.size, bool)
  keep[1:] = (hashes[1:] != hashes[:-1]) | (owner[1:] != owner[:-1])
  return hashes[keep], owner[keep]


class EvalIndex:
  """N-gram index of the evaluation instances: hash -> (eval task, instance index) postings."""

  def __init__(self, eval_texts: Mapping[str, Sequence[str]], n: int = NGRAM, template_fraction: float = 0.5,
               instance_specific: bool = False):
    """`instance_specific`: index only the grams that occur in one instance of their task (`texts_hit`)."""
    self.n = n
    self.tasks = list(eval_texts)
    self.num_instances = np.asarray([len(eval_texts[t]) for t in self.tasks], dtype=np.int64)
    self.template_grams: dict[str, int] = {}
    self._shared: dict[str, np.ndarray] = {}  # task -> grams in two or more of its instances, sorted
    all_hashes, all_keys = [], []
    self._stride = int(self.num_instances.max(initial=0)) + 1
    for task_id, task in enumerate(self.tasks):
      hashes, owner = ngram_hashes(eval_texts[task], n)
      hashes, owner = _distinct_pairs(hashes, owner)  # one entry per (gram, instance)
      grams, counts = np.unique(hashes, return_counts=True)
      template = grams[(counts >= 2) & (counts > template_fraction * len(eval_texts[task]))]
      self.template_grams[task] = int(template.size)
      self._shared[task] = grams[counts >= 2]
      keep = ~np.isin(hashes, self._shared[task] if instance_specific else template)
      all_hashes.append(hashes[keep])
      all_keys.append(task_id * self._stride + owner[keep])
    hashes = np.concatenate(all_hashes) if all_hashes else np.zeros(0, np.uint64)
    keys = np.concatenate(all_keys) if all_keys else np.zeros(0, np.int64)
    order = np.argsort(hashes, kind="stable")
    self._hashes, self._keys = hashes[order], keys[order]

  def hits(self, grams: np.ndarray) -> np.ndarray:
    """Keys (task_id * stride + instance) of the eval instances containing any of `grams` (repeats allowed)."""
    if not self._hashes.size:
      return np.zeros(0, np.int64)
    grams = np.sort(grams)  # sorted queries make the binary searches cache-friendly
    left = np.searchsorted(self._hashes, grams, side="left")
    found = self._hashes[np.minimum(left, self._hashes.size - 1)] == grams
    if not found.any():
      return np.zeros(0, np.int64)
    grams, left = grams[found], left[found]
    right = np.searchsorted(self._hashes, grams, side="right")
    lengths = right - left
    positions = np.repeat(left - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    return np.unique(self._keys[positions])

  def texts_hit(self, texts: Sequence[str], own_task: str | None = None) -> np.ndarray:
    """Sorted indices in `texts` of those sharing a gram with an indexed instance of a task other than `own_task`.

    For an index of one dataset's tasks built with `instance_specific` (a gram in two instances of a task is
    shared text, not one instance's: its template, a passage several questions ask about, or a template's
    words with a common first word of the field after them). `own_task` names the indexed task that `texts`
    come from: its own instances are no hit, and the grams in two or more of them are not compared."""
    grams, owner = ngram_hashes(texts, self.n)
    if own_task in self._shared:
      keep = ~np.isin(grams, self._shared[own_task])
      grams, owner = grams[keep], owner[keep]
    if not grams.size or not self._hashes.size:
      return np.zeros(0, np.int64)
    left = np.searchsorted(self._hashes, grams, side="left")
    lengths = np.searchsorted(self._hashes, grams, side="right") - left
    positions = np.repeat(left - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    lines = np.repeat(owner, lengths)
    if own_task in self.tasks:
      lines = lines[self._keys[positions] // self._stride != self.tasks.index(own_task)]
    return np.unique(lines)

  def overlaps(self, train_task: str, train_texts: Iterable[str]) -> list[Overlap]:
    """Every eval task's overlap with one training task (pairs with no hit are left out)."""
    hit_keys = np.zeros(0, np.int64)
    texts = iter(train_texts)
    while chunk := list(itertools.islice(texts, CHUNK)):
      grams, _ = ngram_hashes(chunk, self.n)
      if grams.size:
        hit_keys = np.union1d(hit_keys, self.hits(grams))
    task_ids, hit_counts = np.unique(hit_keys // self._stride, return_counts=True)
    return [
        Overlap(train_task, self.tasks[t], int(c), int(self.num_instances[t]),
                float(c) / float(self.num_instances[t])) for t, c in zip(task_ids, hit_counts)
    ]


def audit(eval_texts: Mapping[str, Sequence[str]], train_texts: Iterable[tuple[str, Iterable[str]]],
          threshold: float = 0.01, n: int = NGRAM, template_fraction: float = 0.5) -> list[Overlap]:
  """All (train task, eval task) pairs whose overlap exceeds `threshold` (see module docstring).

  Args:
    eval_texts: eval task name -> texts of its evaluation instances.
    train_texts: (train task name, iterable of its training texts), streamed one task at a time.
    threshold: report pairs with overlap strictly above this fraction.
    n: n-gram length in words.
    template_fraction: grams in more than this fraction of an eval task's instances are ignored.
  """
  index = EvalIndex(eval_texts, n, template_fraction)
  found: list[Overlap] = []
  for train_task, texts in train_texts:
    found.extend(o for o in index.overlaps(train_task, texts) if o.eval_task != train_task and o.fraction > threshold)
  return found


POLICIES = ("drop_train", "drop_eval", "report")


def resolve(overlaps: Iterable[Overlap], policy: str) -> tuple[set[str], set[str]]:
  """Tasks to drop for the flagged pairs: (train tasks, eval tasks) under `policy`.

  `drop_train` (default) drops the training task of every flagged pair, keeping the evaluation intact;
  `drop_eval` drops the evaluation task instead; `report` only reports.
  """
  if policy not in POLICIES:
    raise ValueError(f"unknown leakage policy {policy!r}; expected one of {POLICIES}")
  overlaps = list(overlaps)
  if policy == "drop_train":
    return {o.train_task for o in overlaps}, set()
  if policy == "drop_eval":
    return set(), {o.eval_task for o in overlaps}
  return set(), set()
