"""The bench catalog: every task with its benchmark, category, role, example counts and sampling rate.

Where it sits: after the source readers (`optiml_jax.data.sources`), before formatting and registration.
`build(config, sources, sni_splits)` takes the `records.TaskSource` stream of the readers and the bench
definition (`tasks/optiml_bench.yaml`, read by `bench_config.load_config`) and

  1. counts each task's instances (unreadable or empty tasks go to `skipped` with the file and reason);
  2. de-duplicates source datasets offered by secondary benchmarks (CrossFit, ExMix, T5), comparing datasets
     by their canonical key (`BenchConfig.canonical`: the definition's `aliases` table);
  3. maps the source's raw categories / dataset / keywords onto the flat taxonomy (`categorize`), and checks
     that no training task falls back to the fallback category while its dataset is known under a held-out
     category (`held_out.unmapped_policy`: an error naming the task, or holding the task out);
  4. assigns a role (`assign_role`): `held_out_category` (category fully held out: no task of it is trained
     on), `held_out_task` (unseen task of a seen category: SNI's official test split, eval-only benchmarks,
     listed tasks), else `train`; a held-out task whose template is not the dataset's original task
     (`TaskSource.original_task` False: an inverted template) is dropped, as OPT-IML removed such templates from
     its evaluation sources (training tasks keep them);
  5. leaves out of each training stream the lines that share a 13-gram with another task's held-out instance
     of the same dataset (`held_out_elsewhere`), then runs the 13-gram leakage audit (`leakage`) between train
     and held-out tasks and applies its policy;
  6. computes sampling rates (`rates`) over the training tasks (global cap, or the benchmark's `rates.caps`; one
     dataset's templates share one cap: `template_groups`).

Held-out instances rule (used by every later stage through `eval_instances` / `train_instances`): a task
with role `train` keeps its FIRST `num_eval_instances` instances (source order) for evaluation (the third
generalization level) and trains on the rest, at most `num_examples`, passing over repeats of a held-out
instance (same input and answer) and its `excluded_instances` (another task's held-out instances); a held-out
task evaluates on its first `num_eval_instances` instances (SNI protocol: first 100) and has no training stream.

`Catalog.save(out_dir)` writes `out_dir/catalog.json` atomically; `load(out_dir)` reads it back.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import tqdm

from optiml_jax import tempfiles
from optiml_jax.data import bench_config
from optiml_jax.data import leakage
from optiml_jax.data import rates
from optiml_jax.data import records

TRAIN = "train"
HELD_OUT_CATEGORY = "held_out_category"
HELD_OUT_TASK = "held_out_task"
ROLES = (TRAIN, HELD_OUT_CATEGORY, HELD_OUT_TASK)
CATALOG_FILE = "catalog.json"
SUMMARY_FILE = "summary.txt"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
  """One task of the bench as the later stages see it (`sources.reopen(format, path, benchmark)`)."""

  name: str
  benchmark: str
  category: str
  role: str  # one of ROLES
  num_examples: int  # training examples (0 for held-out roles)
  num_eval_instances: int  # the first instances of the task, reserved for evaluation
  rate: float  # sampling rate in the training mixture (0 unless role == "train")
  format: str
  path: str
  dataset: str
  template: str
  kind: str
  num_instances: int  # instances in the source
  raw_categories: tuple[str, ...] = ()
  # Source indices of instances in the training stream's window that share a 13-gram with a held-out instance of
  # another task of the same dataset (`held_out_elsewhere`): left out of training, not counted in num_examples.
  excluded_instances: tuple[int, ...] = ()


@dataclasses.dataclass
class Catalog:
  """The built bench: tasks plus what was left out and why."""

  tasks: list[CatalogEntry]
  leakage: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  skipped: list[records.Skipped] = dataclasses.field(default_factory=list)
  dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)
  missing_split_tasks: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  unmapped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  config: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config": self.config,
        "tasks": [dataclasses.asdict(t) for t in self.tasks],
        "leakage": self.leakage,
        "skipped": [dataclasses.asdict(s) for s in self.skipped],
        "dropped": self.dropped,
        "missing_split_tasks": self.missing_split_tasks,
        "unmapped": self.unmapped,
    }

  def save(self, out_dir: str | os.PathLike) -> pathlib.Path:
    """Writes `out_dir/catalog.json`: into a temporary folder beside `out_dir`, then moved into place.

    The folder is replaced as a whole, so it must be new, empty or an earlier catalog (`check_out_dir`).
    """
    out = check_out_dir(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfiles.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
      with open(tmp / CATALOG_FILE, "w", encoding="utf-8") as f:
        json.dump(self.to_json(), f, indent=1, ensure_ascii=False)
        f.write("\n")
      with open(tmp / SUMMARY_FILE, "w", encoding="utf-8") as f:
        f.write(summary(self) + "\n")
      tempfiles.replace_dir(tmp, out)
    finally:
      if tmp.exists():
        shutil.rmtree(tmp)
    return out / CATALOG_FILE

  def by_name(self) -> dict[str, CatalogEntry]:
    return {t.name: t for t in self.tasks}


def check_out_dir(out_dir: str | os.PathLike) -> pathlib.Path:
  """`out_dir`, resolved, where a catalog may be written; ValueError naming it and what is in the way otherwise.

  A catalog replaces its folder as a whole, so the folder must be absent, empty or an earlier catalog (nothing
  but catalog.json and summary.txt): a source checkout, a cache or anything else there would go with it.
  """
  out = pathlib.Path(out_dir).resolve()
  blocking = tempfiles.file_in_the_way(out)
  if blocking is not None:
    raise ValueError(f"{out}: cannot hold a catalog: {blocking} is a file, not a folder")
  if out.exists():
    if not out.is_dir():
      raise ValueError(f"{out}: is a file; a catalog is a folder (OUT/{CATALOG_FILE}): pass a new or empty folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in (CATALOG_FILE, SUMMARY_FILE))
    if other:
      shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
      raise ValueError(f"{out}: holds files that are not a catalog's ({shown}); a catalog replaces its whole folder, "
                       "so pass a new or empty folder, or an earlier catalog's")
  return out


def load(catalog_dir: str | os.PathLike) -> Catalog:
  """Reads `catalog_dir/catalog.json` (or that file itself) written by `Catalog.save`.

  Raises:
    FileNotFoundError: no catalog there.
    ValueError: the file is not a catalog: bad JSON, or an entry with a missing field or a value of the wrong type
      (the message names the file, the entry and the field).
  """
  path = pathlib.Path(catalog_dir)
  if path.is_dir():
    path = path / CATALOG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no catalog here (build one with `python -m optiml_jax.bench build`)")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ValueError(f"{path}: not a catalog's JSON ({e}); rebuild it with `python -m optiml_jax.bench build`") from e
  if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
    raise ValueError(f"{path}: expected a JSON object with a 'tasks' list")
  tasks = [_entry(path, i, task) for i, task in enumerate(data["tasks"])]
  skipped = data.get("skipped", [])
  for i, s in enumerate(skipped if isinstance(skipped, list) else [skipped]):
    if not (isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("reason"), str)):
      raise ValueError(f"{path}: skipped[{i}]: expected an object with 'path' and 'reason' strings, got {s!r}")
  return Catalog(
      tasks=tasks,
      leakage=data.get("leakage", []),
      skipped=[records.Skipped(path=s["path"], reason=s["reason"]) for s in skipped],
      dropped=data.get("dropped", []),
      missing_split_tasks=data.get("missing_split_tasks", {}),
      unmapped=data.get("unmapped", []),
      config=data.get("config", {}),
  )


# The JSON types of CatalogEntry's fields, by their annotation.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float)}


def _entry(path: pathlib.Path, i: int, task: Any) -> CatalogEntry:
  """tasks[i] of the catalog file `path` as a CatalogEntry; ValueError naming the entry and field if malformed."""
  if not isinstance(task, dict):
    raise ValueError(f"{path}: tasks[{i}]: expected an object, got {task!r}")
  fields = {f.name: f for f in dataclasses.fields(CatalogEntry)}
  missing = set(fields) - set(task) - {"raw_categories", "excluded_instances"}
  if missing:
    raise ValueError(f"{path}: tasks[{i}] lacks field(s) {sorted(missing)}")
  where = f"{path}: tasks[{i}] ({task['name']!r})"
  for name, field in fields.items():
    kinds = _FIELD_TYPES.get(str(field.type))
    value = task.get(name)
    if kinds is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
      raise ValueError(f"{where}: {name}: expected {field.type}, got {value!r}")
  if not all(math.isfinite(task[n]) and task[n] >= 0 for n in ("rate", "num_examples", "num_eval_instances")):
    raise ValueError(f"{where}: rate, num_examples and num_eval_instances must be finite and >= 0")
  if task["role"] not in ROLES:
    raise ValueError(f"{where}: role {task['role']!r} is not one of {ROLES}")
  raw = task.get("raw_categories", [])
  if not (isinstance(raw, list) and all(isinstance(c, str) for c in raw)):
    raise ValueError(f"{where}: raw_categories: expected a list of strings, got {raw!r}")
  excluded = task.get("excluded_instances", [])
  if not (isinstance(excluded, list) and
          all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in excluded)):
    raise ValueError(f"{where}: excluded_instances: expected a list of instance indices, got {excluded!r}")
  return CatalogEntry(**{
      **{
          k: v for k, v in task.items() if k in fields
      }, "raw_categories": tuple(raw),
      "excluded_instances": tuple(excluded)
  })


# ---------------------------------------------------------------------------------------------------
# Held-out instances rule.


def eval_instances(entry: CatalogEntry, task: records.TaskSource) -> list[records.Instance]:
  """The evaluation instances of a task: its first `entry.num_eval_instances` instances."""
  return list(itertools.islice(task.instances(), entry.num_eval_instances))


def held_out_answers(entry: CatalogEntry, task: records.TaskSource) -> frozenset[tuple[str, str]]:
  """(input, reference) pairs, surrounding whitespace ignored, of a train-role task's held-out instances; empty for
  other roles. Sources repeat instances under other ids (P3 files repeat lines, SNI positive examples are also
  instances), and a repeat trained on, or shown as a demonstration, would teach a held-out answer
  (`repeats_held_out`)."""
  if entry.role != TRAIN or entry.num_eval_instances == 0:
    return frozenset()
  return frozenset((i.input.strip(), target.strip())
                   for i in itertools.islice(task.instances(), entry.num_eval_instances)
                   for target in i.targets)


def repeats_held_out(instance: records.Instance, held_out: frozenset[tuple[str, str]]) -> bool:
  """Whether `instance` asks a held-out instance's question with one of its answers (`held_out_answers`). The same
  input with another answer is another instance (P3's app_reviews templates ask for a 4-star review of one app on
  every line, each line answered by another review)."""
  return bool(instance.targets) and (instance.input.strip(), instance.targets[0].strip()) in held_out


def train_instances(entry: CatalogEntry, task: records.TaskSource) -> Iterator[records.Instance]:
  """The training stream of a task: the instances after the evaluation ones less repeats of a held-out instance
  (`repeats_held_out`: the third generalization level evaluates answers the model has not trained on) and less
  `entry.excluded_instances` (copies of another task's held-out instances), at most `num_examples` of them."""
  return (instance for _, instance in _indexed_train_instances(entry, task))


def _indexed_train_instances(entry: CatalogEntry, task: records.TaskSource) -> Iterator[tuple[int, records.Instance]]:
  """`train_instances` with each instance's index in the source."""
  if entry.role != TRAIN:
    return iter(())
  rest: Iterator[tuple[int, records.Instance]] = itertools.islice(enumerate(task.instances()), entry.num_eval_instances,
                                                                  None)
  held_out = held_out_answers(entry, task)
  if held_out:
    rest = ((k, i) for k, i in rest if not repeats_held_out(i, held_out))
  if entry.excluded_instances:
    excluded = frozenset(entry.excluded_instances)
    rest = ((k, i) for k, i in rest if k not in excluded)
  return itertools.islice(rest, entry.num_examples)


def split_counts(role: str, kind: str, num_instances: int, held_out_per_task: int, max_examples: int,
                 max_eval_instances: int, repeats: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
  """(num_examples, num_eval_instances) of a task under the held-out instances rule.

  A training task holds out `held_out_per_task` instances, never more than half of them (and none for
  language-modeling text), and trains on the others less repeats of a held-out one; a held-out task evaluates on
  up to `max_eval_instances` and trains on none. `repeats`: (k, j) for instance k repeating instance j's input and
  answer, j the first such and below `held_out_per_task` (`_Count`).
  """
  if role != TRAIN:
    return 0, min(num_instances, max_eval_instances)
  num_eval = 0 if kind == records.LANGUAGE_MODELING else min(held_out_per_task, num_instances // 2)
  repeated = sum(1 for k, j in repeats if j < num_eval <= k)
  return min(num_instances - num_eval - repeated, max_examples), num_eval


def template_groups(entries: Mapping[str, CatalogEntry]) -> dict[str, str]:
  """name -> "benchmark:dataset" for the tasks that are one template of a dataset (P3, FLAN): the sampling cap's
  groups (`rates.examples_proportional`), since OPT-IML counts such a dataset, all its prompts, as one task."""
  return {name: f"{e.benchmark}:{e.dataset}" for name, e in entries.items() if e.template and e.dataset}


# ---------------------------------------------------------------------------------------------------
# Categories and roles.


def _dataset_category(dataset: str, datasets: Mapping[str, str]) -> str | None:
  """Longest mapping key equal to the normalized dataset or a prefix of it ending at a `_` boundary."""
  key = bench_config.normalize(dataset)
  while key:
    if key in datasets:
      return datasets[key]
    key = key.rpartition("_")[0]
  return None


def categorize(task: records.TaskSource, config: bench_config.BenchConfig) -> tuple[str, bool]:
  """The task's bench category, and whether it came from a mapping (False: the fallback was used).

  Order: a task override (name pattern) > the benchmark's fixed category > a raw category that is a
  taxonomy category (SNI) > the dataset map (longest `_`-prefix of the canonical dataset key, then of the
  dataset as spelled) > the keyword map, in its priority order (BIG-bench keywords, FLAN clusters) > the
  fallback category.
  """
  taxonomy = config.taxonomy
  for pattern, category in taxonomy.overrides.items():
    if fnmatch.fnmatchcase(task.name, pattern):
      return category, True
  fixed = config.benchmarks[task.benchmark].category
  if fixed:
    return fixed, True
  by_lower = {c.lower(): c for c in taxonomy.categories}
  for raw in task.categories:
    if raw.strip().lower() in by_lower:
      return by_lower[raw.strip().lower()], True
  if task.dataset:
    from_dataset = (_dataset_category(config.canonical(task.dataset), taxonomy.datasets) or
                    _dataset_category(task.dataset, taxonomy.datasets))
    if from_dataset:
      return from_dataset, True
  raw_keys = {bench_config.normalize(raw) for raw in task.categories}
  for keyword, category in taxonomy.keywords.items():
    if keyword in raw_keys:
      return category, True
  return taxonomy.fallback, False


def assign_role(task: records.TaskSource, category: str, config: bench_config.BenchConfig,
                sni_test: frozenset[str]) -> str:
  """`held_out_category` > `held_out_task` > `train` (see the module docstring)."""
  held = config.held_out
  if category in held.categories:
    return HELD_OUT_CATEGORY
  if (config.benchmarks[task.benchmark].eval_only or task.name in sni_test or
      any(fnmatch.fnmatchcase(task.name, p) for p in held.tasks) or
      (task.dataset and config.canonical(task.dataset) in held.datasets)):
    return HELD_OUT_TASK
  return TRAIN


def deduplicate(
    tasks: Sequence[records.TaskSource], secondary: Sequence[str],
    canonical: Callable[[str], str] = bench_config.normalize) -> tuple[list[records.TaskSource], list[dict[str, str]]]:
  """Keeps each source dataset of the secondary benchmarks once (OPT-IML: CrossFit, ExMix, T5).

  Datasets are compared by `canonical` (the definition's alias table: CrossFit's "superglue-rte" is P3's
  "super_glue/rte"). A task of a secondary benchmark is dropped when its dataset also appears in a
  non-secondary benchmark; a dataset that only secondary benchmarks offer is kept once: by the first task of it
  in the benchmark listed first under `dedup.secondary` (source order within a benchmark), and every other
  task of it is dropped, naming the one kept. Datasets shared between primary benchmarks (SNI, PromptSource,
  FLAN, ...) are different tasks (own instructions, templates) and are all kept, as in OPT-IML; list every
  benchmark under `dedup.secondary` to keep each dataset once.
  """
  rank = {b: i for i, b in enumerate(secondary)}
  primary: dict[str, set[str]] = {}  # canonical dataset -> the non-secondary benchmarks that offer it
  for task in tasks:
    if task.dataset and task.benchmark not in rank:
      primary.setdefault(canonical(task.dataset), set()).add(task.benchmark)
  order = sorted((i for i, t in enumerate(tasks) if t.benchmark in rank and t.dataset), key=lambda i:
                 (rank[tasks[i].benchmark], i))
  winner: dict[str, str] = {}  # canonical dataset -> the secondary task that keeps it
  drop: dict[int, str] = {}
  for i in order:
    task = tasks[i]
    key = canonical(task.dataset)
    if key in primary:
      drop[i] = f"duplicate dataset: {task.dataset!r} is also in {', '.join(sorted(primary[key]))}"
    elif key in winner:
      drop[i] = f"duplicate dataset: {task.dataset!r} is kept once, as {winner[key]}"
    else:
      winner[key] = task.name
  kept = [t for i, t in enumerate(tasks) if i not in drop]
  dropped = [{
      "name": tasks[i].name,
      "benchmark": tasks[i].benchmark,
      "dataset": tasks[i].dataset,
      "reason": drop[i]
  } for i in sorted(drop)]
  return kept, dropped


# ---------------------------------------------------------------------------------------------------
# Build.


class UnmappedHeldOutError(ValueError):
  """A training task fell back to the fallback category while its dataset is known under a held-out one."""


def _held_out_datasets(tasks: Sequence[records.TaskSource], category: Mapping[str, str],
                       config: bench_config.BenchConfig) -> dict[str, tuple[str, str]]:
  """Canonical dataset -> (held-out category, how it is known) for every dataset the build knows to be held out.

  Known from the taxonomy's dataset map (through the alias table) and from the categories of the tasks read
  (an SNI task of a held-out category names its source dataset, e.g. winogrande).
  """
  held = set(config.held_out.categories)
  known: dict[str, tuple[str, str]] = {}
  for spelling, canonical in config.aliases.items():
    for key in (canonical, spelling):
      mapped = _dataset_category(key, config.taxonomy.datasets)
      if mapped in held and canonical not in known:
        known[canonical] = (mapped, f"taxonomy.datasets, through aliases.{canonical}")
  for task in tasks:
    if task.dataset and category[task.name] in held:
      known.setdefault(config.canonical(task.dataset), (category[task.name], f"as the dataset of task {task.name}"))
  return known


@dataclasses.dataclass(frozen=True)
class _Count:
  """A task's instances counted: how many, and `repeats` ((k, j): instance k has the input and an answer of instance
  j, the first such among the first `held_out_per_task`), from which `split_counts` leaves out the repeats of
  held-out instances, in one read of the source."""
  instances: int
  repeats: tuple[tuple[int, int], ...]


def _count_instances(task: records.TaskSource, held_out_per_task: int) -> _Count:
  first: dict[tuple[str, str], int] = {}  # (input, reference) of the first held_out_per_task instances -> index
  repeats = []
  count = 0
  for count, instance in enumerate(task.instances(), 1):
    k = count - 1
    if instance.targets:
      j = first.get((instance.input.strip(), instance.targets[0].strip()))
      if j is not None:
        repeats.append((k, j))
      if k < held_out_per_task:
        for target in instance.targets:
          first.setdefault((instance.input.strip(), target.strip()), k)
  return _Count(count, tuple(repeats))


def instance_text(instance: records.Instance) -> str:
  """The text the leakage audit compares: input, then targets."""
  return "\n".join((instance.input,) + tuple(instance.targets))


def _read_sources(sources: Iterable[records.TaskSource | records.Skipped], config: bench_config.BenchConfig,
                  progress: bool) -> tuple[list[tuple[records.TaskSource, _Count]], list[records.Skipped]]:
  """Counts every task's instances; unreadable, empty or duplicate tasks become `Skipped`."""
  tasks, skipped = [], []
  seen: dict[str, str] = {}  # task name -> the file it was first read from
  for item in tqdm.tqdm(sources, desc="reading tasks", unit="task", disable=not progress):
    if isinstance(item, records.Skipped):
      skipped.append(item)
      continue
    if item.benchmark not in config.benchmarks:
      raise ValueError(f"{item.path}: task {item.name} is of benchmark {item.benchmark!r}, which "
                       f"{config.path} does not declare under 'benchmarks' ({sorted(config.benchmarks)})")
    if item.name in seen:
      skipped.append(records.Skipped(item.path, f"duplicate task name {item.name} (first: {seen[item.name]})"))
      continue
    try:
      count = _count_instances(item, config.held_out_instances_per_task)
    except (ValueError, OSError, KeyError, TypeError) as e:  # SourceError, bad JSON, bad bytes, bad fields
      skipped.append(records.Skipped(item.path, getattr(e, "reason", f"{type(e).__name__}: {e}")))
      continue
    if count.instances == 0:
      skipped.append(records.Skipped(item.path, "no instances"))
      continue
    seen[item.name] = item.path
    tasks.append((item, count))
  return tasks, skipped


def _missing_split_tasks(sni_splits: Mapping[str, Sequence[str]] | None, read: set[str],
                         skipped: Sequence[records.Skipped]) -> dict[str, list[str]]:
  if not sni_splits:
    return {}
  skipped_stems = {records.task_name("sni", pathlib.Path(s.path).stem) for s in skipped}
  return {
      split: sorted(n for n in names if records.task_name("sni", n) not in read | skipped_stems)
      for split, names in sni_splits.items()
  }


def build(config: bench_config.BenchConfig, sources: Iterable[records.TaskSource | records.Skipped],
          sni_splits: Mapping[str, Sequence[str]] | None = None, progress: bool = False) -> Catalog:
  """Builds the catalog (see the module docstring for the steps).

  Args:
    config: the bench definition (`bench_config.load_config`).
    sources: tasks and skipped files from the readers (`sources.iter_all(...)`).
    sni_splits: SNI's split lists, `{"train": [...], "test": [...]}` of local task names, or None.
    progress: show tqdm progress bars on stderr.

  Raises:
    ValueError: `held_out.sni_train: split` with SNI tasks but no `sni_splits` to choose them by, a task of an
      undeclared benchmark, or no task left to train on.
  """
  read, skipped = _read_sources(sources, config, progress)
  counts = {task.name: n.instances for task, n in read}
  repeats = {task.name: n.repeats for task, n in read}
  sni_splits = sni_splits or {}
  if config.held_out.sni_train == "split" and not sni_splits and any(t.benchmark == "sni" for t, _ in read):
    raise ValueError(f"{config.path}: held_out.sni_train: split trains only the SNI tasks of the train split, but no "
                     "split was given (the checkout's splits/<name>/train_tasks.txt)")
  sni_test = frozenset(
      records.task_name("sni", n) for n in sni_splits.get("test", ()) if config.held_out.sni_test_split)
  sni_train = frozenset(records.task_name("sni", n) for n in sni_splits.get("train", ()))

  tasks, dropped = [], []
  unmapped: dict[str, list[str]] = {}  # 'benchmark: dataset' -> its tasks given the fallback category
  for task, _ in read:
    if (config.held_out.sni_train == "split" and task.benchmark == "sni" and task.name not in sni_train | sni_test):
      dropped.append({
          "name": task.name,
          "benchmark": task.benchmark,
          "dataset": task.dataset,
          "reason": "not in the SNI train or test split (held_out.sni_train: split)"
      })
      continue
    tasks.append(task)
  tasks, dedup_dropped = deduplicate(tasks, config.dedup_secondary, config.canonical)
  dropped += dedup_dropped

  category, role, fell_back = {}, {}, []
  for task in tasks:
    category[task.name], mapped = categorize(task, config)
    if not mapped:
      fell_back.append(task)
    role[task.name] = assign_role(task, category[task.name], config, sni_test)
  held_datasets = _held_out_datasets(tasks, category, config)
  for task in fell_back:
    known = held_datasets.get(config.canonical(task.dataset)) if task.dataset else None
    if known is not None and role[task.name] == TRAIN:
      held_category, via = known
      if config.held_out.unmapped_policy == "error":
        raise UnmappedHeldOutError(
            f"{task.path}: training task {task.name} falls back to category {config.taxonomy.fallback!r}, but its "
            f"dataset {task.dataset!r} (canonical {config.canonical(task.dataset)!r}) is known under the held-out "
            f"category {held_category!r} ({via}); map it in {config.path} (taxonomy.datasets, taxonomy.overrides "
            "or aliases), or set held_out.unmapped_policy: hold_out")
      category[task.name], role[task.name] = held_category, HELD_OUT_CATEGORY
    key = f"{task.benchmark}: {task.dataset or '/'.join(task.categories) or task.name}"
    unmapped.setdefault(key, []).append(task.name)

  kept_tasks = []
  for task in tasks:
    if not task.original_task and role[task.name] != TRAIN:
      dropped.append({
          "name": task.name,
          "benchmark": task.benchmark,
          "dataset": task.dataset,
          "reason": f"not the original task: template {task.template!r} inverts it (evaluation keeps original tasks)"
      })
      continue
    kept_tasks.append(task)
  tasks = kept_tasks

  entries = {}
  for task in tasks:
    bench = config.benchmarks[task.benchmark]
    num_examples, num_eval = split_counts(role[task.name], task.kind, counts[task.name],
                                          config.held_out_instances_per_task, bench.max_examples_per_task or
                                          config.max_examples_per_task, config.max_eval_instances, repeats[task.name])
    entries[task.name] = CatalogEntry(name=task.name, benchmark=task.benchmark, category=category[task.name],
                                      role=role[task.name], num_examples=num_examples, num_eval_instances=num_eval,
                                      rate=0.0, format=task.format, path=task.path, dataset=task.dataset,
                                      template=task.template, kind=task.kind, num_instances=counts[task.name],
                                      raw_categories=tuple(task.categories))

  entries = _exclude_held_out_elsewhere(tasks, entries, config, progress)
  leakage_report, drop = _audit(tasks, entries, config, progress)
  for name in sorted(drop):
    entry = entries.pop(name)
    dropped.append({
        "name": name,
        "benchmark": entry.benchmark,
        "dataset": entry.dataset,
        "reason": f"13-gram leakage (policy {config.leakage.policy})"
    })

  train = {n: e for n, e in entries.items() if e.role == TRAIN and e.num_examples > 0}
  task_rates = {}
  if train:
    shares = {b: c.share for b, c in config.benchmarks.items()}
    fixed = [b for b, c in config.benchmarks.items() if c.fixed_share]
    counts_train = {n: e.num_examples for n, e in train.items()}
    benchmark_of = {n: e.benchmark for n, e in train.items()}
    groups = template_groups(train)
    if config.rates.method == "uniform":
      task_rates = rates.uniform(counts_train, benchmark_of, shares, fixed, groups=groups)
    else:
      task_rates = rates.examples_proportional(counts_train, benchmark_of, shares, config.rates.cap,
                                               config.rates.temperature, fixed, caps=config.rates.caps, groups=groups)
  final = [dataclasses.replace(e, rate=task_rates.get(n, 0.0)) for n, e in entries.items()]
  return Catalog(
      tasks=final,
      leakage=leakage_report,
      skipped=skipped,
      dropped=dropped,
      missing_split_tasks=_missing_split_tasks(sni_splits, set(counts), skipped),
      unmapped=[{
          "key": k,
          "category": category.get(v[0], config.taxonomy.fallback),
          "tasks": len(v),
          "examples": v[:5]
      } for k, v in sorted(unmapped.items())],
      config=config.echo(),
  )


def held_out_elsewhere(tasks: Sequence[records.TaskSource], entries: Mapping[str, CatalogEntry],
                       config: bench_config.BenchConfig, progress: bool = False) -> dict[str, tuple[int, ...]]:
  """Per training task, the source indices of its training instances that share a 13-gram (the audit's n-grams,
  template grams of either task ignored) with a held-out instance of another training task of the same dataset.

  The third generalization level holds out a task's first instances, but tasks of one dataset (P3's templates of
  it, SNI's tasks of one source) render the same underlying examples, not always in the same order (a template
  that keeps only the positive pairs of glue_mrpc shifts every line after the first negative one): another
  task's training stream would then teach a held-out answer. Datasets compare by their canonical key; a dataset
  with one task has nothing to compare. Instances shorter than 13 words are never hit (as in the audit)."""
  by_name = {t.name: t for t in tasks}
  groups: dict[str, list[str]] = {}
  for name, entry in entries.items():
    if entry.role == TRAIN and entry.dataset:
      groups.setdefault(config.canonical(entry.dataset), []).append(name)
  groups = {k: names for k, names in groups.items() if len(names) > 1}
  found: dict[str, tuple[int, ...]] = {}
  cfg = config.leakage
  for names in tqdm.tqdm(list(groups.values()), desc="held-out instances across tasks", unit="dataset",
                         disable=not progress):
    held = {n: [instance_text(i) for i in eval_instances(entries[n], by_name[n])] for n in names}
    index = leakage.EvalIndex({
        n: texts for n, texts in held.items() if texts
    }, cfg.ngram, cfg.template_fraction, instance_specific=True)
    for name in names:
      stream = _indexed_train_instances(entries[name], by_name[name])
      hit: list[int] = []
      while chunk := list(itertools.islice(stream, leakage.CHUNK)):
        lines = index.texts_hit([instance_text(i) for _, i in chunk], own_task=name)
        hit.extend(chunk[j][0] for j in lines)
      if hit:
        found[name] = tuple(hit)
  return found


def _exclude_held_out_elsewhere(tasks: Sequence[records.TaskSource], entries: Mapping[str, CatalogEntry],
                                config: bench_config.BenchConfig, progress: bool) -> dict[str, CatalogEntry]:
  """`entries` with `held_out_elsewhere`'s instances left out of their training streams."""
  excluded = held_out_elsewhere(tasks, entries, config, progress)
  return {
      n: dataclasses.replace(e, excluded_instances=excluded[n], num_examples=e.num_examples -
                             len(excluded[n])) if n in excluded else e for n, e in entries.items()
  }


def _audit(tasks: Sequence[records.TaskSource], entries: Mapping[str, CatalogEntry], config: bench_config.BenchConfig,
           progress: bool) -> tuple[list[dict[str, Any]], set[str]]:
  """Runs the 13-gram audit; returns the report and the names of the tasks to drop."""
  by_name = {t.name: t for t in tasks}
  eval_texts = {
      n: [instance_text(i) for i in eval_instances(e, by_name[n])]
      for n, e in entries.items()
      if e.role != TRAIN and e.num_eval_instances > 0
  }
  train_names = [n for n, e in entries.items() if e.role == TRAIN and e.num_examples > 0]
  if not eval_texts or not train_names:
    return [], set()
  cfg = config.leakage
  limit = cfg.max_train_instances

  def train_texts():
    for name in tqdm.tqdm(train_names, desc="13-gram audit", unit="task", disable=not progress):
      stream = train_instances(entries[name], by_name[name])
      if limit is not None:
        stream = itertools.islice(stream, limit)
      yield name, (instance_text(i) for i in stream)

  found = leakage.audit(eval_texts, train_texts(), cfg.threshold, cfg.ngram, cfg.template_fraction)
  drop_train, drop_eval = leakage.resolve(found, cfg.policy)
  report = []
  for o in sorted(found, key=lambda o: (-o.fraction, o.train_task, o.eval_task)):
    action = ("dropped train task"
              if o.train_task in drop_train else "dropped eval task" if o.eval_task in drop_eval else "reported")
    report.append(dict(dataclasses.asdict(o), action=action))
  return report, drop_train | drop_eval


# ---------------------------------------------------------------------------------------------------
# Summary.


def summary(catalog: Catalog) -> str:
  """A plain-text table: tasks, categories, training examples, eval instances and rate per benchmark and role."""
  rows: dict[tuple[str, str], list[Any]] = {}
  for t in catalog.tasks:
    row = rows.setdefault((t.benchmark, t.role), [0, set(), 0, 0, 0.0])
    row[0] += 1
    row[1].add(t.category)
    row[2] += t.num_examples
    row[3] += t.num_eval_instances
    row[4] += t.rate
  header = ("benchmark", "role", "tasks", "categories", "train examples", "eval instances", "rate")
  lines = [[*k, str(v[0]), str(len(v[1])), str(v[2]), str(v[3]), f"{v[4]:.4f}"] for k, v in sorted(rows.items())]
  totals = [
      "total", "",
      str(len(catalog.tasks)),
      str(len({t.category for t in catalog.tasks})),
      str(sum(t.num_examples for t in catalog.tasks)),
      str(sum(t.num_eval_instances for t in catalog.tasks)), f"{sum(t.rate for t in catalog.tasks):.4f}"
  ]
  widths = [max(len(r[i]) for r in [header, *lines, totals]) for i in range(len(header))]
  fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
  out = [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines), fmt(totals), ""]
  by_role = {r: sorted({t.category for t in catalog.tasks if t.role == r}) for r in ROLES}
  out.append(f"held-out categories present: {', '.join(by_role[HELD_OUT_CATEGORY]) or 'none'}")
  out.append(f"skipped files: {len(catalog.skipped)}")
  for s in catalog.skipped[:20]:
    out.append(f"  {s.path}: {s.reason}")
  reasons: dict[str, int] = {}
  for d in catalog.dropped:
    reason = d["reason"].split(":")[0]
    reasons[reason] = reasons.get(reason, 0) + 1
  out.append(f"dropped tasks: {len(catalog.dropped)}" + "".join(f"\n  {r}: {n}" for r, n in sorted(reasons.items())))
  out.append(f"leakage pairs over threshold: {len(catalog.leakage)}")
  excluded = [t for t in catalog.tasks if t.excluded_instances]
  out.append(f"training instances left out as another task's held-out instances: "
             f"{sum(len(t.excluded_instances) for t in excluded)} in {len(excluded)} task(s)")
  for split, names in sorted(catalog.missing_split_tasks.items()):
    out.append(f"SNI {split} split: {len(names)} listed task(s) absent from the checkout")
  out.append(f"unmapped (fallback category): {sum(u['tasks'] for u in catalog.unmapped)} task(s)")
  for u in catalog.unmapped:
    out.append(f"  {u['key']} -> {u['category']} ({u['tasks']} task(s))")
  return "\n".join(out)
