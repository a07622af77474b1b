"""Source readers: original benchmark files -> plain `records.TaskSource` records (first stage of the flow).

One module per original format; each yields `TaskSource` records (metadata plus a lazily re-opened instance
stream) and turns a malformed file into `records.Skipped`, so one bad file never stops a catalog build:

  format      module          benchmark       input
  "sni"       sni             "sni"           Super-NaturalInstructions checkout (`tasks/*.json`, `splits/`)
  "p3"        promptsource    "promptsource"  P3 per-template JSONL (`data_per_template/*.jsonl`)
  "bigbench"  bigbench        "bigbench"      BIG-bench JSON tasks (`<task>/task.json`)
  "jsonl"     jsonl           caller's        generic `src`/`tgt` or `inputs`/`targets` JSONL, one task per file
  "cot"       cot             "reasoning"     chain-of-thought JSONL, one task per file
  "text"      text            "pretraining"   plain text (`.txt` paragraphs or `.jsonl` "text"), kind "lm"
  "tfds"      tfds            caller's        FLAN / T5 tasks from TensorFlow Datasets (its own `iter_tasks`)

`iter_all` walks the file-based sources in the order above; `reopen` reads one task again from the
(format, path, benchmark) the catalog stored. Nothing here tokenizes.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterable, Iterator

from optiml_jax.data import records
from optiml_jax.data.sources import bigbench
from optiml_jax.data.sources import cot
from optiml_jax.data.sources import jsonl
from optiml_jax.data.sources import promptsource
from optiml_jax.data.sources import sni
from optiml_jax.data.sources import text

PathLike = str | os.PathLike

# Reader module of each file-based format; each has `read_task(path, benchmark)`.
_FILE_READERS = {
    sni.FORMAT: sni,
    promptsource.FORMAT: promptsource,
    bigbench.FORMAT: bigbench,
    jsonl.FORMAT: jsonl,
    cot.FORMAT: cot,
    text.FORMAT: text,
}
# Formats whose module has `reopen(path, benchmark, **options)`; imported on use (TensorFlow is slow to load).
_REOPEN_MODULES = {"tfds": "optiml_jax.data.sources.tfds"}
FORMATS = tuple(_FILE_READERS) + tuple(_REOPEN_MODULES)


def iter_all(
    sni_dir: PathLike | None = None, p3_dir: PathLike | None = None, bigbench_dir: PathLike | None = None,
    jsonl_dirs: Iterable[tuple[str, PathLike]] = (), cot_dir: PathLike | None = None, text_dir: PathLike | None = None,
    p3_metadata: promptsource.TemplateMetadata | None = None) -> Iterator[records.TaskSource | records.Skipped]:
  """Every task of the given sources, in the order of the arguments; unreadable files -> `records.Skipped`.

  Args:
    sni_dir: a natural-instructions checkout (or its `tasks/` folder).
    p3_dir: the P3 folder (with `data_per_template/`, or the folder of template files itself).
    bigbench_dir: a folder of BIG-bench task folders (or a BIG-bench checkout).
    jsonl_dirs: `(benchmark, folder)` pairs of generic JSONL folders, e.g. `(("crossfit", "/data/crossfit"),)`.
    cot_dir: a folder of chain-of-thought JSONL files.
    text_dir: a folder of pre-training `.txt` / `.jsonl` files.
    p3_metadata: promptsource's template metadata (`promptsource.read_metadata`), which marks the P3 templates
      that are not the original task.

  Raises:
    FileNotFoundError: a given folder does not exist (a configuration error, not a bad file).
  """
  if sni_dir is not None:
    yield from sni.iter_tasks(sni_dir)
  if p3_dir is not None:
    yield from promptsource.iter_tasks(p3_dir, metadata=p3_metadata)
  if bigbench_dir is not None:
    yield from bigbench.iter_tasks(bigbench_dir)
  for pair in jsonl_dirs:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
      raise ValueError(f"jsonl_dirs: expected (benchmark, folder) pairs, got {pair!r}")
    benchmark, folder = pair
    yield from jsonl.iter_tasks(folder, benchmark)
  if cot_dir is not None:
    yield from cot.iter_tasks(cot_dir)
  if text_dir is not None:
    yield from text.iter_tasks(text_dir)


def reopen(
    format: str,
    path: PathLike,
    benchmark: str,  # pylint: disable=redefined-builtin
    **options: Any) -> records.TaskSource:
  """Reads one task again from what the catalog stored (`CatalogEntry.format`, `.path`, `.benchmark`).

  Args:
    format: the `TaskSource.format` the task was read with (one of `FORMATS`).
    path: its `TaskSource.path`.
    benchmark: its benchmark (readers of caller-named benchmarks need it to rebuild the same name).
    **options: passed on to readers that take options (tfds: `data_dir`, ...); file readers take none.

  Raises:
    ValueError: unknown format, or options given to a file reader.
    records.SourceError: the file has become unreadable.
  """
  if format in _FILE_READERS:
    if options:
      raise ValueError(f"reopen: format {format!r} takes no options, got {sorted(options)}")
    return _FILE_READERS[format].read_task(os.fspath(path), benchmark)
  if format in _REOPEN_MODULES:
    return importlib.import_module(_REOPEN_MODULES[format]).reopen(os.fspath(path), benchmark, **options)
  raise ValueError(f"reopen: unknown source format {format!r} for {path}; expected one of {FORMATS}")
