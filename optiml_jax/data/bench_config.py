"""The bench definition: a `tasks/*.yaml` file read and validated into a `BenchConfig`.

Where it sits: at the start of the bench build, before the catalog.

  tasks/optiml_bench.yaml --load_config--> BenchConfig --catalog.build(config, sources, sni_splits)--> Catalog

`load_config` checks every key, type and cross-reference (benchmarks, taxonomy categories, held-out
categories, de-duplication order, leakage and rate settings) and raises `ConfigError` naming the file and
the dotted key. A section is a mapping (null or absent: empty), and a key given twice in one mapping is an
error naming both lines (PyYAML alone keeps the last). The result is immutable; `BenchConfig.echo()` is what
the catalog records of it.
`normalize` is the key form of datasets and keywords: the taxonomy and held-out maps are stored normalized,
and the catalog normalizes a task's dataset / raw categories the same way before looking them up.
`BenchConfig.canonical` goes one step further: it turns every spelling listed under `aliases` (CrossFit's
"superglue-rte", P3's "super_glue/rte", T5's "glue/rte", ...) into one canonical dataset key, which the catalog
uses for de-duplication, the dataset map and `held_out.datasets`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import re
from typing import Any, Iterable, Mapping, Sequence

import yaml

from optiml_jax.data import leakage

KNOWN_BENCHMARKS = ("sni", "promptsource", "flan", "crossfit", "exmix", "t5", "unifiedskg", "bigbench", "reasoning",
                    "pretraining")
RATE_METHODS = ("examples_proportional", "uniform")
# What the catalog does with a training task that falls back to `taxonomy.fallback` while its dataset (through
# an alias) belongs to a held-out category: stop the build naming it, or hold the task out in that category.
UNMAPPED_POLICIES = ("error", "hold_out")
# A definition may start from another: `extends: optiml_bench.yaml` (relative to the file) reads that one first
# and lays this file's keys over it, mapping by mapping (a list, e.g. held_out.categories, is replaced whole).
EXTENDS = "extends"
_REQUIRED = object()


class ConfigError(ValueError):
  """A malformed bench definition; the message names the file and the key."""

  def __init__(self, path: str, key: str, message: str):
    super().__init__(f"{path}: {key}: {message}")


def normalize(name: str) -> str:
  """Dataset / keyword key: lower case, runs of other characters -> `_` ("glue/mrpc" -> "glue_mrpc")."""
  return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  share: float  # share of the training mixture (percent; only ratios matter unless fixed_share)
  fixed_share: bool = False  # share is an absolute percentage of the mixture (reasoning, pre-training)
  eval_only: bool = False  # every task is a held-out task (e.g. BIG-bench)
  max_examples_per_task: int | None = None  # overrides limits.max_examples_per_task (FLAN: 30k)
  category: str = ""  # every task of the benchmark gets this category
  custom: bool = False  # a benchmark name of the user's own (a `--jsonl_dir NAME=DIR` folder)


@dataclasses.dataclass(frozen=True)
class HeldOutConfig:
  categories: tuple[str, ...]  # level 1: fully held-out categories
  sni_test_split: bool  # level 2: SNI's official test tasks are held-out tasks
  sni_train: str  # "all": every other SNI task trains; "split": only those of the train split
  tasks: tuple[str, ...]  # level 2: more held-out tasks (fnmatch patterns over task names)
  datasets: frozenset[str]  # level 2: every task of these datasets is held out (canonical keys)
  unmapped_policy: str = "error"  # one of UNMAPPED_POLICIES


@dataclasses.dataclass(frozen=True)
class RatesConfig:
  method: str
  cap: int
  temperature: float
  caps: Mapping[str, int] = dataclasses.field(default_factory=dict)  # benchmark -> its own cap (else `cap`)


@dataclasses.dataclass(frozen=True)
class LeakageConfig:
  ngram: int
  threshold: float
  policy: str
  template_fraction: float
  max_train_instances: int | None


@dataclasses.dataclass(frozen=True)
class Taxonomy:
  categories: tuple[str, ...]
  fallback: str
  overrides: Mapping[str, str]  # task-name pattern -> category
  datasets: Mapping[str, str]  # normalized dataset -> category
  keywords: Mapping[str, str]  # normalized raw category / keyword -> category, in priority order


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """A parsed, validated bench definition."""

  path: str
  name: str
  sha256: str
  data: Mapping[str, Any]  # the YAML as read (echoed into the catalog)
  benchmarks: Mapping[str, BenchmarkConfig]
  max_examples_per_task: int
  max_eval_instances: int
  held_out_instances_per_task: int
  rates: RatesConfig
  held_out: HeldOutConfig
  dedup_secondary: tuple[str, ...]
  leakage: LeakageConfig
  taxonomy: Taxonomy
  aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # normalized spelling -> canonical key

  def canonical(self, dataset: str) -> str:
    """The dataset's canonical key: `normalize(dataset)`, then the `aliases` table (exact match)."""
    key = normalize(dataset)
    return self.aliases.get(key, key)

  def echo(self) -> dict[str, Any]:
    return {"path": self.path, "name": self.name, "sha256": self.sha256, "data": self.data}


class _Reader:
  """Typed access to one YAML mapping; errors name the file and the dotted key."""

  def __init__(self, path: str, key: str, value: Any, allowed: Sequence[str] | None = None):
    if not isinstance(value, dict):
      raise ConfigError(path, key or "(top level)", f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
      unknown = sorted(set(value) - set(allowed))
      if unknown:
        raise ConfigError(path, self._join(key, str(unknown[0])), f"unknown key (expected one of {list(allowed)})")
    self.path, self.key, self.value = path, key, value

  @staticmethod
  def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name

  def where(self, name: str) -> str:
    return self._join(self.key, name)

  def get(self, name: str, kind: str, default: Any = _REQUIRED, bounds: str = "") -> Any:
    """`kind` in int, number, bool, str, str_list, str_map, map, optional_int.

    A number is an int or a float that is finite: YAML's `.inf` and `.nan` are refused here, since they would
    pass every range check after this one (`nan < 0` is false) and end as NaN rates in the catalog. `bounds`
    (" >= 0") completes what that error says is expected.
    """
    if name not in self.value or (self.value[name] is None and kind != "optional_int"):
      if default is _REQUIRED:
        raise ConfigError(self.path, self.where(name), "missing required key")
      return default
    v, where = self.value[name], self.where(name)
    checks = {
        "int": lambda: isinstance(v, int) and not isinstance(v, bool),
        "optional_int": lambda: v is None or (isinstance(v, int) and not isinstance(v, bool)),
        "number": lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda: isinstance(v, bool),
        "str": lambda: isinstance(v, str),
        "str_list": lambda: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "str_map": lambda: isinstance(v, dict) and all(isinstance(x, str) for x in (*v, *v.values())),
        "map": lambda: isinstance(v, dict),
    }
    if not checks[kind]():
      raise ConfigError(self.path, where, f"expected {kind.replace('_', ' ')}, got {v!r:.80}")
    if kind == "number" and not math.isfinite(v):
      raise ConfigError(self.path, where, f"expected a finite number{bounds}, got {v!r}")
    return v

  def sub(self, name: str, allowed: Sequence[str]) -> _Reader:
    """The section `name`: absent or null (`held_out:` with nothing under it) is empty; any other value that is
    not a mapping is refused, falsy ones too (`held_out: []` held out no category)."""
    value = self.value.get(name)
    return _Reader(self.path, self.where(name), {} if value is None else value, allowed)


def _check_categories(path: str, key: str, values: Iterable[str], categories: Sequence[str]) -> None:
  known = set(categories)
  for value in values:
    if value not in known:
      raise ConfigError(path, key, f"category {value!r} is not in taxonomy.categories")


def _normalized_map(path: str, key: str, mapping: Mapping[str, str]) -> dict[str, str]:
  out: dict[str, str] = {}
  origin: dict[str, str] = {}  # normalized key -> the key as written
  for name, category in mapping.items():
    norm = normalize(name)
    if not norm:
      raise ConfigError(path, f"{key}.{name}", "empty key after normalization")
    if norm in origin:
      raise ConfigError(path, f"{key}.{name}", f"same key as {origin[norm]!r} once normalized ({norm!r})")
    out[norm], origin[norm] = category, name
  return out


def _aliases(path: str, table: Mapping[str, Any]) -> dict[str, str]:
  """`aliases: {canonical: [spelling, ...]}` -> {normalized spelling: normalized canonical}.

  Every spelling (and each canonical name itself) may belong to one canonical dataset only, and a spelling may
  not be another entry's canonical name (no chains).
  """
  out: dict[str, str] = {}
  origin: dict[str, str] = {}  # normalized spelling -> the canonical entry that lists it
  canonicals = {normalize(str(c)) for c in table}
  for canonical, spellings in table.items():
    key = f"aliases.{canonical}"
    target = normalize(str(canonical))
    if not target:
      raise ConfigError(path, key, "empty dataset name after normalization")
    if not isinstance(spellings, list) or not all(isinstance(x, str) for x in spellings):
      raise ConfigError(path, key, f"expected a list of dataset spellings, got {spellings!r:.80}")
    for spelling in [str(canonical), *spellings]:
      norm = normalize(spelling)
      if not norm:
        raise ConfigError(path, key, f"spelling {spelling!r} is empty after normalization")
      if norm != target and norm in canonicals:
        raise ConfigError(path, key, f"spelling {spelling!r} is itself a canonical entry of `aliases`; "
                          "merge the two entries")
      if origin.get(norm, canonical) != canonical:
        raise ConfigError(path, key, f"spelling {spelling!r} ({norm!r}) is already an alias of {origin[norm]!r}")
      out[norm], origin[norm] = target, str(canonical)
  return out


class _DuplicateKey(Exception):
  """A key given twice in one YAML mapping: `key` dotted, with the lines (from 1) of its two occurrences."""

  def __init__(self, key: str, line: int, first_line: int):
    super().__init__(key)
    self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
  """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

  def construct_document(self, node: yaml.Node) -> Any:
    self._check_unique_keys(node, "", set())
    return super().construct_document(node)

  def _check_unique_keys(self, node: yaml.Node, key: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already checked
      return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
      for index, item in enumerate(node.value):
        self._check_unique_keys(item, f"{key}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
      first_lines: dict[Any, int] = {}
      for key_node, value_node in node.value:
        child = key
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
          name = self.construct_object(key_node)  # as the mapping will hold it: `1` and `1.0` are one key
          child = _Reader._join(key, str(name))  # pylint: disable=protected-access
          line = key_node.start_mark.line + 1
          if name in first_lines:
            raise _DuplicateKey(child, line, first_lines[name])
          first_lines[name] = line
        self._check_unique_keys(value_node, child, seen)


def _read_yaml(path: str) -> tuple[Any, bytes]:
  with open(path, "rb") as f:
    raw_bytes = f.read()
  try:
    return yaml.load(raw_bytes.decode("utf-8"), Loader=_UniqueKeyLoader), raw_bytes  # a SafeLoader: no objects
  except _DuplicateKey as e:
    raise ConfigError(path, e.key,
                      f"duplicate key (line {e.line}; first on line {e.first_line}): YAML keeps only the last") from e
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise ConfigError(path, "(file)", f"not valid YAML: {e}") from e
  except RecursionError as e:  # e.g. "[[[[...]]]]" deeper than the interpreter's recursion limit
    raise ConfigError(path, "(file)", f"not valid YAML: nested too deeply to parse ({e})") from e


def _merged(base: Any, override: Any) -> Any:
  """`override` on top of `base`: mappings merge key by key (recursively), anything else is replaced."""
  if isinstance(base, Mapping) and isinstance(override, Mapping):
    out = dict(base)
    for key, value in override.items():
      out[key] = _merged(base[key], value) if key in base else value
    return out
  return override


def _read_with_extends(path: str, seen: tuple[str, ...]) -> tuple[Any, bytes]:
  """The YAML of `path` with its `extends:` chain applied (the named file first, this one's keys on top), and
  the bytes of every file read (so the catalog's sha256 changes when any of them does)."""
  data, raw_bytes = _read_yaml(path)
  if not isinstance(data, Mapping) or EXTENDS not in data:
    return data, raw_bytes
  parent = data[EXTENDS]
  if not isinstance(parent, str) or not parent:
    raise ConfigError(path, EXTENDS, f"expected the path of another bench definition, got {parent!r}")
  parent_path = os.path.join(os.path.dirname(os.path.abspath(path)), parent)
  if not os.path.isfile(parent_path):
    raise ConfigError(path, EXTENDS, f"{parent_path} not found (a path relative to this file)")
  chain, parent_key = seen + (os.path.abspath(path),), os.path.abspath(parent_path)
  if parent_key == chain[-1]:
    raise ConfigError(path, EXTENDS, f"{parent}: the file extends itself")
  if parent_key in chain:  # the cycle: from the parent's first read, through this file, back to the parent
    cycle = chain[chain.index(parent_key):] + (parent_key,)
    raise ConfigError(path, EXTENDS, f"{parent}: a cycle of extends: {' -> '.join(cycle)}")
  base, base_bytes = _read_with_extends(parent_path, chain)
  child = {k: v for k, v in data.items() if k != EXTENDS}
  return _merged(base, child), base_bytes + raw_bytes


def load_config(path: str | os.PathLike) -> BenchConfig:
  """Reads and validates a bench definition (see tasks/optiml_bench.yaml for every key).

  Raises:
    ConfigError: malformed YAML, a missing or unknown key, a wrong type, an unknown benchmark or category.
  """
  path = str(path)
  data, raw_bytes = _read_with_extends(path, ())
  top = _Reader(path, "", data,
                ("name", "benchmarks", "limits", "rates", "held_out", "dedup", "leakage", "taxonomy", "aliases"))

  tax = top.sub("taxonomy", ("categories", "fallback", "overrides", "datasets", "keywords"))
  categories = tuple(tax.get("categories", "str_list"))
  if not categories or len(set(categories)) != len(categories):
    raise ConfigError(path, "taxonomy.categories", "expected a non-empty list of distinct category names")
  taxonomy = Taxonomy(categories=categories, fallback=tax.get("fallback", "str"),
                      overrides=dict(tax.get("overrides", "str_map",
                                             {})), datasets=_normalized_map(path, "taxonomy.datasets",
                                                                            tax.get("datasets", "str_map", {})),
                      keywords=_normalized_map(path, "taxonomy.keywords", tax.get("keywords", "str_map", {})))
  _check_categories(path, "taxonomy.fallback", [taxonomy.fallback], categories)
  for key in ("overrides", "datasets", "keywords"):
    _check_categories(path, f"taxonomy.{key}", getattr(taxonomy, key).values(), categories)

  benchmarks = {}
  bench_fields = [f.name for f in dataclasses.fields(BenchmarkConfig)]
  for name, value in top.get("benchmarks", "map").items():
    entry = _Reader(path, f"benchmarks.{name}", value, bench_fields)
    custom = entry.get("custom", "bool", False)
    if name not in KNOWN_BENCHMARKS and not custom:
      raise ConfigError(
          path, f"benchmarks.{name}", f"unknown benchmark (known: {', '.join(KNOWN_BENCHMARKS)}; "
          "mark a JSONL folder of your own with `custom: true`)")
    if not re.fullmatch(r"\w+", str(name)):
      raise ConfigError(path, f"benchmarks.{name}", "benchmark names are letters, digits and _")
    share = entry.get("share", "number", 0.0, bounds=" >= 0")
    if share < 0:
      raise ConfigError(path, entry.where("share"), f"expected a finite number >= 0, got {share}")
    cap = entry.get("max_examples_per_task", "int", None)
    if cap is not None and cap <= 0:
      raise ConfigError(path, entry.where("max_examples_per_task"), f"must be positive, got {cap}")
    benchmarks[name] = BenchmarkConfig(share=float(share), fixed_share=entry.get("fixed_share", "bool", False),
                                       eval_only=entry.get("eval_only", "bool", False), max_examples_per_task=cap,
                                       category=entry.get("category", "str", ""), custom=custom)
    if benchmarks[name].category:
      _check_categories(path, entry.where("category"), [benchmarks[name].category], categories)
  if not any(b.share > 0 and not b.eval_only for b in benchmarks.values()):
    raise ConfigError(path, "benchmarks", "no benchmark with a positive share: nothing would be trained on")
  # A fixed share is a percentage of the whole mixture: together they may not exceed it (data/rates.py would
  # refuse them at the end of the build, without naming this file).
  fixed = {n: b.share for n, b in benchmarks.items() if b.fixed_share and not b.eval_only}
  if sum(fixed.values()) > 100:
    key = f"benchmarks.{next(iter(fixed))}.share" if len(fixed) == 1 else "benchmarks"
    raise ConfigError(
        path, key, f"the fixed shares {', '.join(f'{n}: {v:g}' for n, v in fixed.items())} add up to "
        f"{sum(fixed.values()):g}%, over 100% of the mixture")

  limit_keys = ("max_examples_per_task", "max_eval_instances", "held_out_instances_per_task")
  limits = top.sub("limits", limit_keys)
  numbers = {k: limits.get(k, "int") for k in limit_keys}
  for k, v in numbers.items():
    minimum = 0 if k == "held_out_instances_per_task" else 1
    if v < minimum:
      raise ConfigError(path, f"limits.{k}", f"must be >= {minimum}, got {v}")

  rate = top.sub("rates", ("method", "cap", "caps", "temperature"))
  caps = rate.get("caps", "map", {})
  for name, value in caps.items():
    if name not in benchmarks:
      raise ConfigError(path, f"rates.caps.{name}", "not a benchmark declared under 'benchmarks'")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ConfigError(path, f"rates.caps.{name}", f"expected a positive int, got {value!r:.80}")
  rates_config = RatesConfig(rate.get("method", "str", "examples_proportional"), rate.get("cap", "int", 4096),
                             float(rate.get("temperature", "number", 1.0, bounds=" > 0")), dict(caps))
  if rates_config.method not in RATE_METHODS:
    raise ConfigError(path, "rates.method", f"{rates_config.method!r} is not one of {RATE_METHODS}")
  if rates_config.cap <= 0 or rates_config.temperature <= 0:
    raise ConfigError(path, "rates", "cap and temperature must be positive")

  aliases = _aliases(path, top.get("aliases", "map", {}))

  held = top.sub("held_out", ("categories", "sni_test_split", "sni_train", "tasks", "datasets", "unmapped_policy"))
  held_datasets = frozenset(aliases.get(normalize(d), normalize(d)) for d in held.get("datasets", "str_list", []))
  held_out = HeldOutConfig(categories=tuple(held.get("categories", "str_list",
                                                     [])), sni_test_split=held.get("sni_test_split", "bool", True),
                           sni_train=held.get("sni_train", "str", "all"), tasks=tuple(held.get("tasks", "str_list",
                                                                                               [])),
                           datasets=held_datasets, unmapped_policy=held.get("unmapped_policy", "str", "error"))
  _check_categories(path, "held_out.categories", held_out.categories, categories)
  if held_out.sni_train not in ("all", "split"):
    raise ConfigError(path, "held_out.sni_train", f"expected 'all' or 'split', got {held_out.sni_train!r}")
  if held_out.unmapped_policy not in UNMAPPED_POLICIES:
    raise ConfigError(path, "held_out.unmapped_policy",
                      f"expected one of {UNMAPPED_POLICIES}, got {held_out.unmapped_policy!r}")

  dedup = top.sub("dedup", ("secondary",))
  secondary = tuple(dedup.get("secondary", "str_list", []))
  for name in secondary:
    if name not in benchmarks:
      raise ConfigError(path, "dedup.secondary", f"benchmark {name!r} is not declared under 'benchmarks'")

  leak = top.sub("leakage", ("ngram", "threshold", "policy", "template_fraction", "max_train_instances"))
  threshold = float(leak.get("threshold", "number", 0.01, bounds=" in [0, 1)"))
  template_fraction = float(leak.get("template_fraction", "number", 0.5, bounds=" in (0, 1]"))
  leakage_config = LeakageConfig(ngram=leak.get("ngram", "int", leakage.NGRAM), threshold=threshold,
                                 policy=leak.get("policy", "str", "drop_train"), template_fraction=template_fraction,
                                 max_train_instances=leak.get("max_train_instances", "optional_int", None))
  if leakage_config.policy not in leakage.POLICIES:
    raise ConfigError(path, "leakage.policy", f"{leakage_config.policy!r} is not one of {leakage.POLICIES}")
  if leakage_config.ngram < 1 or not 0 <= leakage_config.threshold < 1:
    raise ConfigError(path, "leakage", "ngram must be >= 1 and threshold in [0, 1)")
  if not 0 < leakage_config.template_fraction <= 1:
    raise ConfigError(path, "leakage.template_fraction", "must be in (0, 1]")
  if leakage_config.max_train_instances is not None and leakage_config.max_train_instances < 1:
    raise ConfigError(path, "leakage.max_train_instances", "must be positive or null")

  return BenchConfig(path=path, name=top.get("name", "str",
                                             pathlib.Path(path).stem), sha256=hashlib.sha256(raw_bytes).hexdigest(),
                     data=data, benchmarks=benchmarks, max_examples_per_task=numbers["max_examples_per_task"],
                     max_eval_instances=numbers["max_eval_instances"],
                     held_out_instances_per_task=numbers["held_out_instances_per_task"], rates=rates_config,
                     held_out=held_out, dedup_secondary=secondary, leakage=leakage_config, taxonomy=taxonomy,
                     aliases=aliases)
