"""TFDS-backed source: FLAN and T5 tasks from TensorFlow Datasets, formatted with FLAN-style templates.

Where it sits: a reader in `optiml_jax.data.sources`, like the SNI or P3 readers. It yields one
`records.TaskSource` per (dataset, template) of `flan_templates.DATASETS`, so the catalog counts, splits and
de-duplicates FLAN/T5 tasks like any other source; and it offers the same formatting as a seqio
`TfdsDataSource` plus preprocessor (`data_source`, `apply_template`) for registering FLAN tasks directly as
seqio Tasks. Nothing here tokenizes.

Data: TFDS datasets must be prepared beforehand (`tfds build glue/rte --data_dir=...`, or `tfds.load` with
download); this reader never downloads (`download=False`) and reads in file order (`shuffle_files=False`),
so instance order and ids are stable. Unlabelled examples (GLUE/SuperGLUE test splits, label -1) are
skipped; at most `max_examples` labelled examples are kept per task (the recipe: FLAN 30k).

Task paths (what the catalog stores and `reopen` reads back):
  "<tfds name>:<version>@<split>#<template>[|<option>=<value>...]", e.g. "glue/rte:2.0.0@train#template_3".
"@<split>" may be left out (then "train"); the split may be a TFDS slice ("train[:50%]"). The options make a
path self-contained, so that `sources.reopen(format, path, benchmark)` (the registry, the evaluator) reads the
same task without being told more: `data_dir` (the TFDS data folder; default TFDS's own, `$TFDS_DATA_DIR` or
~/tensorflow_datasets), `flan` (the FLAN `templates.py` whose patterns the template comes from) and `max`
(the cap on labelled examples when it is not `MAX_EXAMPLES_PER_TASK`; "none" for no cap). Keyword arguments
of `reopen` override them.

FLAN's own templates: `iter_tasks(..., flan=flan_templates.load_flan_datasets(checkout))` uses the patterns of
a FLAN checkout for the datasets bound in `flan_templates.FLAN_BINDINGS` (see there); a template that inverts
the task (`Template.inverted`) gives a task with `original_task` False, which the catalog trains on but never
evaluates on.

Task names: `records.task_name(benchmark, local)` with local = "<dataset>_<template>"
("flan:glue_rte_template_3"), or "<dataset>" for single-template datasets ("t5:glue_cola").
"""

from __future__ import annotations

import functools
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from optiml_jax.data import records
from optiml_jax.data.sources import flan_templates

FORMAT = "tfds"
DEFAULT_SPLIT = "train"
MAX_EXAMPLES_PER_TASK = 30_000  # OPT-IML caps FLAN tasks at 30k examples.

PATH_OPTIONS = ("data_dir", "flan", "max")


def task_path(tfds_name: str, template: str, split: str = DEFAULT_SPLIT,
              options: Mapping[str, str] | None = None) -> str:
  """The path a `TaskSource` of this reader carries: "<tfds name>@<split>#<template>[|<key>=<value>...]"."""
  path = f"{tfds_name}@{split}#{template}"
  for key, value in sorted((options or {}).items()):
    if key not in PATH_OPTIONS:
      raise ValueError(f"task path option {key!r} is not one of {PATH_OPTIONS}")
    if "|" in value:
      raise ValueError(f"task path option {key}={value!r}: values cannot contain '|'")
    path += f"|{key}={value}"
  return path


def path_options(path: str) -> dict[str, str]:
  """The `|key=value` options of a task path (see the module docstring).

  Raises:
    records.SourceError: an option is not `key=value` or not one of `PATH_OPTIONS`.
  """
  options = {}
  for part in path.split("|")[1:]:
    key, sep, value = part.partition("=")
    if not sep or key not in PATH_OPTIONS:
      raise records.SourceError(path, f"bad option {part!r}: expected <key>=<value> with key in {PATH_OPTIONS}")
    options[key] = value
  return options


def parse_path(path: str) -> tuple[str, str, str]:
  """(tfds name, split, template) of a task path (its options left out); the split defaults to "train".

  Raises:
    records.SourceError: the path lacks "#<template>" or a versioned TFDS name.
  """
  location, sep, template = path.split("|", 1)[0].rpartition("#")
  if not sep or not location or not template:
    raise records.SourceError(
        path, 'expected "<tfds name>:<version>[@<split>]#<template>", e.g. '
        '"glue/rte:2.0.0@train#template_3"')
  tfds_name, _, split = location.partition("@")
  if ":" not in tfds_name:
    raise records.SourceError(path, f"TFDS name {tfds_name!r} has no version (e.g. \"glue/rte:2.0.0\")")
  return tfds_name, split or DEFAULT_SPLIT, template


def _check_max_examples(max_examples: int | None) -> None:
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be a positive number or None, got {max_examples}")


def read_examples(tfds_name: str, split: str = DEFAULT_SPLIT, data_dir: str | None = None) -> Iterator[dict[str, Any]]:
  """Streams a prepared TFDS split as numpy feature dicts (bytes for text), in file order.

  Raises:
    records.SourceError: the dataset is not prepared in `data_dir`.
  """
  try:
    dataset = tfds.load(tfds_name, split=split, data_dir=data_dir, shuffle_files=False, download=False)
  except AssertionError as e:  # TFDS asserts that the data was prepared
    where = data_dir or "the default TFDS data folder"
    raise records.SourceError(
        tfds_name, f"split {split!r} not prepared in {where}; prepare it first with "
        f"`tfds build {tfds_name.split(':', maxsplit=1)[0]} --data_dir=...` ({e})") from e
  return iter(tfds.as_numpy(dataset))


def _iter_instances(prompt: flan_templates.Prompt, split: str, data_dir: str | None,
                    max_examples: int | None) -> Iterator[records.Instance]:
  """The labelled examples of `split` formatted with `prompt`, at most `max_examples`."""
  count = 0
  for index, example in enumerate(read_examples(prompt.dataset.tfds_name, split, data_dir)):
    formatted = prompt(example)
    if formatted is None:
      continue
    yield records.Instance(id=f"{split}-{index}", input=formatted.inputs, targets=formatted.targets,
                           options=formatted.options)
    count += 1
    if max_examples is not None and count >= max_examples:
      return


def task_source(prompt: flan_templates.Prompt, split: str = DEFAULT_SPLIT, *, data_dir: str | None = None,
                max_examples: int | None = MAX_EXAMPLES_PER_TASK, flan_file: str | None = None) -> records.TaskSource:
  """The `TaskSource` of one dataset and template; instances are read lazily when streamed.

  `flan_file`: the FLAN `templates.py` the template was read from (recorded in the path for `reopen`).
  """
  _check_max_examples(max_examples)
  spec, template = prompt.dataset, prompt.template
  local_name = spec.dataset if len(spec.templates) == 1 else f"{spec.dataset}_{template.name}"
  options = {}
  if data_dir:
    options["data_dir"] = data_dir
  if flan_file and template.name.startswith(flan_templates.FLAN_TEMPLATE_PREFIX):
    options["flan"] = flan_file
  if max_examples != MAX_EXAMPLES_PER_TASK:
    options["max"] = "none" if max_examples is None else str(max_examples)
  return records.TaskSource(
      name=records.task_name(spec.benchmark, local_name),
      benchmark=spec.benchmark,
      dataset=spec.dataset,
      categories=(spec.category,),
      definition="",  # the templates carry the instruction inline, as in P3
      demonstrations=(),
      path=task_path(spec.tfds_name, template.name, split, options),
      kind=prompt.kind,
      open_instances=functools.partial(_iter_instances, prompt, split, data_dir, max_examples),
      template=template.name,
      format=FORMAT,
      original_task=not template.inverted,
  )


def task_sources(dataset: str | flan_templates.DatasetTemplates, split: str = DEFAULT_SPLIT, *,
                 benchmark: str | None = None, data_dir: str | None = None,
                 max_examples: int | None = MAX_EXAMPLES_PER_TASK,
                 flan: flan_templates.FlanPatterns | None = None) -> Iterator[records.TaskSource]:
  """One `TaskSource` per template of a dataset (format "tfds"), without reading any data yet.

  Args:
    dataset: a `flan_templates.DatasetTemplates`, or a TFDS name with or without version ("glue/rte");
      a name registered in both benchmarks yields the tasks of each unless `benchmark` picks one.
    split: the TFDS split (or slice) the instances come from.
    benchmark: "flan" or "t5" to restrict a name lookup.
    data_dir: the TFDS data folder (None: TFDS's default).
    max_examples: cap on labelled examples per task (None: no cap).
    flan: FLAN's own templates (`flan_templates.load_flan_datasets`) for a dataset given by name.

  Raises:
    KeyError: no registered dataset matches the name.
  """
  _check_max_examples(max_examples)
  registry = flan.datasets if flan is not None else None
  if isinstance(dataset, str):
    specs = flan_templates.find(dataset, benchmark, registry)
    if not specs:
      flan_templates.lookup(dataset, benchmark or flan_templates.FLAN)  # raises, listing known datasets
  else:
    specs = (dataset,)
  for spec in specs:
    for prompt in flan_templates.prompts(spec):
      yield task_source(prompt, split, data_dir=data_dir, max_examples=max_examples,
                        flan_file=flan.path if flan is not None else None)


def is_prepared(tfds_name: str, data_dir: str | None = None) -> bool:
  """Whether the TFDS dataset's files exist in `data_dir` (no download is attempted).

  A dataset without its folder (`data_dir/<name>[/<config>]`) is not prepared, and no builder is made for it:
  TFDS's builder of an unprepared dataset looks for its info in TFDS's bucket and leaves an empty temporary
  folder behind each time, one per dataset of every `bench build --tfds_data_dir`.
  """
  if data_dir is not None:
    name = tfds_name.split(":", maxsplit=1)[0]
    if not tf.io.gfile.isdir(f"{data_dir.rstrip('/')}/{name}"):
      return False
  return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()


def select(
    names: Sequence[str] | None, benchmarks: Sequence[str] = flan_templates.BENCHMARKS,
    specs: Sequence[flan_templates.DatasetTemplates] | None = None) -> tuple[flan_templates.DatasetTemplates, ...]:
  """The registered datasets of `benchmarks` whose TFDS name (with or without version) is in `names` (None: all).

  Raises:
    KeyError: a name matches no registered dataset of those benchmarks (the message lists the known ones).
  """
  registered = flan_templates.datasets(benchmarks, specs)
  if names is None:
    return registered
  chosen: list[flan_templates.DatasetTemplates] = []
  for name in names:
    found = [d for d in registered if d.dataset == name.split(":")[0] and (":" not in name or d.tfds_name == name)]
    if not found:
      known = ", ".join(sorted({d.dataset for d in registered}))
      raise KeyError(f"no FLAN/T5 dataset {name!r} in benchmark(s) {', '.join(benchmarks)}; known: {known}")
    chosen.extend(d for d in found if d not in chosen)
  return tuple(d for d in registered if d in chosen)


def iter_tasks(data_dir: str | None = None, *, split: str = DEFAULT_SPLIT,
               benchmarks: Sequence[str] = flan_templates.BENCHMARKS,
               max_examples: int | Mapping[str, int | None] | None = MAX_EXAMPLES_PER_TASK,
               skip_unprepared: bool = True, datasets: Sequence[str] | None = None,
               flan: flan_templates.FlanPatterns | None = None) -> Iterator[records.TaskSource | records.Skipped]:
  """Every registered FLAN/T5 task, like the other readers' `iter_tasks`.

  Datasets not prepared in `data_dir` are reported as `records.Skipped` (one per dataset) when
  `skip_unprepared`; pass False when the data is provided otherwise (e.g. `tfds.testing.mock_data`).

  Args:
    data_dir: the TFDS data folder (None: TFDS's default).
    split: the TFDS split (or slice) the instances come from.
    benchmarks: "flan" and/or "t5".
    max_examples: cap on labelled examples per task, or a mapping benchmark -> cap (a benchmark it lacks
      gets `MAX_EXAMPLES_PER_TASK`).
    skip_unprepared: report unprepared datasets as `Skipped` instead of failing when streamed.
    datasets: only these TFDS names (with or without version; `select`); None: every registered one.
    flan: FLAN's own templates (`flan_templates.load_flan_datasets`); None: this package's templates.

  Raises:
    KeyError: a name of `datasets` is not registered.
  """
  chosen = select(datasets, benchmarks, flan.datasets if flan is not None else None)
  for spec in chosen:
    if skip_unprepared:
      try:
        prepared = is_prepared(spec.tfds_name, data_dir)
      except Exception as e:  # pylint: disable=broad-except  # unknown name/version in this TFDS release
        yield records.Skipped(spec.tfds_name, f"TFDS cannot build {spec.tfds_name}: {type(e).__name__}: {e}")
        continue
      if not prepared:
        where = data_dir or "the default TFDS data folder"
        yield records.Skipped(spec.tfds_name, f"not prepared in {where}; run `tfds build {spec.dataset}`")
        continue
    cap = max_examples.get(spec.benchmark, MAX_EXAMPLES_PER_TASK) if isinstance(max_examples, Mapping) else max_examples
    yield from task_sources(spec, split, data_dir=data_dir, max_examples=cap, flan=flan)


@functools.lru_cache(maxsize=8)
def _flan_patterns(path: str) -> flan_templates.FlanPatterns:
  return flan_templates.load_flan_datasets(path)


_FROM_PATH: Any = object()


def reopen(path: str, benchmark: str, *, data_dir: str | None = _FROM_PATH, max_examples: int | None = _FROM_PATH,
           flan_dir: str | None = _FROM_PATH) -> records.TaskSource:
  """The `TaskSource` a catalog entry points to: `path` as written by `task_path`.

  `optiml_jax.data.sources.reopen("tfds", path, benchmark)` dispatches here. `data_dir`, `max_examples` and
  `flan_dir` default to the path's options (see the module docstring).

  Raises:
    records.SourceError: malformed path, or no such dataset/template for the benchmark, or an unreadable FLAN
      templates file.
  """
  tfds_name, split, template_name = parse_path(path)
  options = path_options(path)
  if data_dir is _FROM_PATH:
    data_dir = options.get("data_dir")
  if max_examples is _FROM_PATH:
    max_value = options.get("max")
    try:
      max_examples = (MAX_EXAMPLES_PER_TASK if max_value is None else None if max_value == "none" else int(max_value))
    except ValueError as e:
      raise records.SourceError(path, f"option max={max_value!r} is not a number or 'none'") from e
  if flan_dir is _FROM_PATH:
    flan_dir = options.get("flan")
  flan = None
  try:
    if flan_dir:
      flan = _flan_patterns(flan_templates.flan_templates_path(flan_dir))
    spec = flan_templates.lookup(tfds_name, benchmark, flan.datasets if flan is not None else None)
    template = spec.template(template_name)
  except KeyError as e:
    raise records.SourceError(path, str(e.args[0])) from e
  except (OSError, ValueError) as e:
    raise records.SourceError(path, f"FLAN templates: {e}") from e
  return task_source(flan_templates.Prompt(spec, template), split, data_dir=data_dir, max_examples=max_examples,
                     flan_file=flan.path if flan is not None else None)


# ---------------------------------------------------------------------------------------------------------
# seqio: the same datasets and templates as a TfdsDataSource plus a preprocessor.


def data_source(tfds_name: str, splits: Sequence[str] | Mapping[str, str] | None = None,
                data_dir: str | None = None) -> seqio.TfdsDataSource:
  """A seqio `TfdsDataSource` over a versioned TFDS name ("glue/rte:2.0.0").

  Args:
    tfds_name: TFDS name with version, as in `flan_templates.DATASETS`.
    splits: allowed split names, or a map from seqio split to TFDS split/slice (e.g.
      {"validation": "train[:1000]"}); None: every split TFDS knows.
    data_dir: the TFDS data folder (None: TFDS's default).
  """
  if ":" not in tfds_name:
    known = [d.tfds_name for d in flan_templates.find(tfds_name)]
    raise ValueError(f"TFDS name {tfds_name!r} needs a version for seqio, e.g. {known or ['glue/rte:2.0.0']}")
  return seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir, splits=splits)


def _is_labelled(features: Mapping[str, tf.Tensor], labelled: tf.Tensor) -> tf.Tensor:
  del features
  return labelled


def _drop_flag(features: Mapping[str, tf.Tensor], labelled: tf.Tensor) -> Mapping[str, tf.Tensor]:
  del labelled
  return features


def apply_template(dataset: tf.data.Dataset, prompt: flan_templates.Prompt,
                   max_examples: int | None = MAX_EXAMPLES_PER_TASK, with_options: bool = False) -> tf.data.Dataset:
  """seqio preprocessor: TFDS examples -> formatted text features.

  Produces string features "inputs" and "targets" (which `seqio.preprocessors.tokenize` turns into ids)
  and the same strings as "inputs_pretokenized" / "targets_pretokenized"; with `with_options`, also
  "options", a 1-D string tensor of the answer options (empty for generation templates). Unlabelled
  examples are dropped, then at most `max_examples` are kept. The formatting runs in Python through
  `tf.py_function`, so it matches `task_sources` exactly (such a pipeline cannot be serialized).

  Bind the arguments with `functools.partial(apply_template, prompt=..., max_examples=...)` in a seqio
  Task's preprocessors.
  """
  _check_max_examples(max_examples)
  structure = dataset.element_spec

  def format_numpy(*flat: tf.Tensor) -> tuple[tf.Tensor, ...]:
    example = tf.nest.pack_sequence_as(structure, [t.numpy() for t in flat])
    formatted = prompt(example)
    if formatted is None:
      return (tf.constant(""), tf.constant(""), tf.constant([], tf.string), tf.constant(False))
    return (tf.constant(formatted.inputs), tf.constant(formatted.targets[0]),
            tf.constant(np.array(formatted.options, dtype=object), tf.string), tf.constant(True))

  def to_features(example: Mapping[str, tf.Tensor]) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    inputs, targets, options, labelled = tf.py_function(format_numpy, tf.nest.flatten(example),
                                                        Tout=[tf.string, tf.string, tf.string, tf.bool])
    inputs.set_shape([])
    targets.set_shape([])
    options.set_shape([None])
    labelled.set_shape([])
    features = {"inputs": inputs, "targets": targets, "inputs_pretokenized": inputs, "targets_pretokenized": targets}
    if with_options:
      features["options"] = options
    return features, labelled

  dataset = dataset.map(to_features, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.filter(_is_labelled).map(_drop_flag)
  if max_examples is not None:
    dataset = dataset.take(max_examples)
  return dataset
