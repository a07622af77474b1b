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
  "<tfds name>:<version>@<split>#<template>", e.g. "glue/rte:2.0.0@train#template_3".
"@<split>" may be left out (then "train"); the split may be a TFDS slice ("train[:50%]"). The TFDS data
folder is not part of the path: `reopen` takes it as `data_dir` (default: TFDS's own, `$TFDS_DATA_DIR` or
~/tensorflow_datasets).

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


def task_path(tfds_name: str, template: str, split: str = DEFAULT_SPLIT) -> str:
  """The path a `TaskSource` of this reader carries: "<tfds name>@<split>#<template>"."""
  return f"{tfds_name}@{split}#{template}"


def parse_path(path: str) -> tuple[str, str, str]:
  """(tfds name, split, template) of a task path; the split defaults to "train".

  Raises:
    records.SourceError: the path lacks "#<template>" or a versioned TFDS name.
  """
  location, sep, template = path.rpartition("#")
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
                max_examples: int | None = MAX_EXAMPLES_PER_TASK) -> records.TaskSource:
  """The `TaskSource` of one dataset and template; instances are read lazily when streamed."""
  _check_max_examples(max_examples)
  spec, template = prompt.dataset, prompt.template
  local_name = spec.dataset if len(spec.templates) == 1 else f"{spec.dataset}_{template.name}"
  return records.TaskSource(
      name=records.task_name(spec.benchmark, local_name),
      benchmark=spec.benchmark,
      dataset=spec.dataset,
      categories=(spec.category,),
      definition="",  # the templates carry the instruction inline, as in P3
      demonstrations=(),
      path=task_path(spec.tfds_name, template.name, split),
      kind=prompt.kind,
      open_instances=functools.partial(_iter_instances, prompt, split, data_dir, max_examples),
      template=template.name,
      format=FORMAT,
  )


def task_sources(dataset: str | flan_templates.DatasetTemplates, split: str = DEFAULT_SPLIT, *,
                 benchmark: str | None = None, data_dir: str | None = None,
                 max_examples: int | None = MAX_EXAMPLES_PER_TASK) -> Iterator[records.TaskSource]:
  """One `TaskSource` per template of a dataset (format "tfds"), without reading any data yet.

  Args:
    dataset: a `flan_templates.DatasetTemplates`, or a TFDS name with or without version ("glue/rte");
      a name registered in both benchmarks yields the tasks of each unless `benchmark` picks one.
    split: the TFDS split (or slice) the instances come from.
    benchmark: "flan" or "t5" to restrict a name lookup.
    data_dir: the TFDS data folder (None: TFDS's default).
    max_examples: cap on labelled examples per task (None: no cap).

  Raises:
    KeyError: no registered dataset matches the name.
  """
  _check_max_examples(max_examples)
  if isinstance(dataset, str):
    specs = flan_templates.find(dataset, benchmark)
    if not specs:
      flan_templates.lookup(dataset, benchmark or flan_templates.FLAN)  # raises, listing known datasets
  else:
    specs = (dataset,)
  for spec in specs:
    for prompt in flan_templates.prompts(spec):
      yield task_source(prompt, split, data_dir=data_dir, max_examples=max_examples)


def is_prepared(tfds_name: str, data_dir: str | None = None) -> bool:
  """Whether the TFDS dataset's files exist in `data_dir` (no download is attempted)."""
  return tfds.builder(tfds_name, data_dir=data_dir).is_prepared()


def iter_tasks(data_dir: str | None = None, *, split: str = DEFAULT_SPLIT,
               benchmarks: Sequence[str] = flan_templates.BENCHMARKS, max_examples: int | None = MAX_EXAMPLES_PER_TASK,
               skip_unprepared: bool = True) -> Iterator[records.TaskSource | records.Skipped]:
  """Every registered FLAN/T5 task, like the other readers' `iter_tasks`.

  Datasets not prepared in `data_dir` are reported as `records.Skipped` (one per dataset) when
  `skip_unprepared`; pass False when the data is provided otherwise (e.g. `tfds.testing.mock_data`).
  """
  for spec in flan_templates.datasets(benchmarks):
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
    yield from task_sources(spec, split, data_dir=data_dir, max_examples=max_examples)


def reopen(path: str, benchmark: str, *, data_dir: str | None = None,
           max_examples: int | None = MAX_EXAMPLES_PER_TASK) -> records.TaskSource:
  """The `TaskSource` a catalog entry points to: `path` as written by `task_path`.

  `optiml_jax.data.sources.reopen("tfds", path, benchmark)` dispatches here.

  Raises:
    records.SourceError: malformed path, or no such dataset/template for the benchmark.
  """
  tfds_name, split, template_name = parse_path(path)
  try:
    spec = flan_templates.lookup(tfds_name, benchmark)
    template = spec.template(template_name)
  except KeyError as e:
    raise records.SourceError(path, str(e.args[0])) from e
  return task_source(flan_templates.Prompt(spec, template), split, data_dir=data_dir, max_examples=max_examples)


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
