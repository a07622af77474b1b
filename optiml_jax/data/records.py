"""Plain task records: what every source reader yields and every later stage consumes.

Readers in `optiml_jax.data.sources` turn original files (SNI JSON, P3 JSONL, BIG-bench task.json, ...)
into `TaskSource` objects; the catalog assigns roles; formatting and registration turn them into
SeqIO tasks. Nothing here tokenizes or knows about models.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator

# Kinds of task.
GENERATION = "generation"  # free text target: greedy decoding, ROUGE-L / exact match
MULTIPLE_CHOICE = "multiple_choice"  # answer candidates: rank classification, accuracy
LANGUAGE_MODELING = "lm"  # plain text: loss on the whole sequence (pre-training text)
KINDS = (GENERATION, MULTIPLE_CHOICE, LANGUAGE_MODELING)

_INVALID_NAME_CHARS = re.compile(r"[^\w.:]")


def task_name(benchmark: str, local_name: str) -> str:
  """A globally unique task name that SeqIO accepts (`[\\w.:]+`): `<benchmark>:<local_name>`."""
  return f"{_INVALID_NAME_CHARS.sub('_', benchmark)}:{_INVALID_NAME_CHARS.sub('_', local_name)}"


@dataclasses.dataclass(frozen=True)
class Instance:
  """One example of a task, as the source gives it (no instruction, no delimiter).

  Attributes:
    id: identifier unique within the task (the source's id, or `<task>-<line number>`).
    input: the instance text.
    targets: the reference outputs; `targets[0]` is the training target. Empty for `lm` tasks.
    options: answer candidates for rank classification (multiple-choice tasks), else empty.
    option_scores: a graded score per option, in option order (BIG-bench's `target_scores`: what picking that
      option earns, e.g. 0.69 for "joy" and 0.28 for "anticipation"); empty when the source grades none, and
      then an option earns 1 when it is one of `targets`, else 0.

  Raises:
    ValueError: `option_scores` is neither empty nor one score per option.
  """

  id: str
  input: str
  targets: tuple[str, ...] = ()
  options: tuple[str, ...] = ()
  option_scores: tuple[float, ...] = ()

  def __post_init__(self):
    if self.option_scores and len(self.option_scores) != len(self.options):
      raise ValueError(f"instance {self.id!r}: {len(self.option_scores)} option scores for {len(self.options)} "
                       "options; expected one per option or none")


@dataclasses.dataclass(frozen=True)
class TaskSource:
  """One task of one benchmark, with its metadata and a way to stream its instances.

  Attributes:
    name: unique name, `task_name(benchmark, local_name)`.
    benchmark: the benchmark it comes from ("sni", "promptsource", "bigbench", "flan", "t5", "crossfit",
      "exmix", "unifiedskg", "reasoning", "pretraining", or a name declared for a JSONL folder).
    dataset: the underlying source dataset (e.g. "quoref", "super_glue/rte"): the key that de-duplicates a
      dataset that appears in two benchmarks.
    categories: raw categories from the source (SNI `Categories`, BIG-bench `keywords`, ...); the catalog maps
      them onto the bench taxonomy.
    definition: the task instruction ("" when the source has none, e.g. P3 prompts carry it inline).
    demonstrations: worked examples given with the task (SNI `Positive Examples`), in source order.
    path: the file it was read from (for error messages and the catalog's `skipped` list).
    kind: one of `KINDS`.
    template: the prompt template's name, for sources with several templates per dataset (P3, FLAN).
    format: the reader that produced it ("sni", "p3", "bigbench", "jsonl", "cot", "text", "tfds", ...), so that
      `optiml_jax.data.sources.reopen(format, path, benchmark)` can read the same task again later.
    open_instances: a zero-argument callable returning a fresh iterator over the instances, read lazily
      from `path` in source order.
    original_task: False when the template does not pose the dataset's original task (it inverts it, e.g.
      answer -> question: promptsource's `metadata.original_task`, FLAN's inverted templates); the catalog
      trains on such tasks but never evaluates on them.
  """

  name: str
  benchmark: str
  dataset: str
  categories: tuple[str, ...]
  definition: str
  demonstrations: tuple[Instance, ...]
  path: str
  kind: str
  open_instances: Callable[[], Iterator[Instance]] = dataclasses.field(compare=False, repr=False)
  template: str = ""
  format: str = ""
  original_task: bool = True

  def instances(self) -> Iterator[Instance]:
    """Streams the instances in source order."""
    return self.open_instances()


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A source file that could not be read, and why (listed in the catalog's `skipped`)."""

  path: str
  reason: str


class SourceError(ValueError):
  """A source file is malformed; the message names the file and the field."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason
