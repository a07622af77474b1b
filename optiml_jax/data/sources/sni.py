"""Super-NaturalInstructions reader: `tasks/*.json` -> `records.TaskSource`, `splits/` -> task-name lists.

Where it sits: first stage of the data flow; the catalog combines these records with `read_split` to assign
roles (SNI's default split: 756 train / 119 test tasks).

Task JSON fields read (SNI v2; older files are accepted too):
  Definition         list of strings (joined with a blank line) or, in older files, one string. Required.
  Instances          non-empty list of {"id", "input", "output"}; `output` is a list of references (or one
                     string in older files); numbers (task1759_gsm, task1761_svamp) become strings. Required.
                     Every output is a reference (SNI's official evaluation scores against all of them) and
                     the first is the training target. An instance without an "id" gets `<task>-<index>`.
                     Outputs lose their surrounding whitespace: the formatter joins the target to the prompt
                     with one space of its own, and an output with a leading space (task1147_country_currency:
                     " Australian Dollar") would train a lone-space token first. An output left empty is no
                     reference (it would train the end token alone and score against nothing) and is dropped; an
                     instance with no other is dropped (as BIG-bench's and P3's readers drop theirs), and the ids
                     of the others do not change; a task with none left is refused.
  Positive Examples  -> `demonstrations` ({"input", "output"}, outputs as above; "explanation" is not
                     used, as in SNI's default evaluation). Optional.
  Categories         -> `categories`. Optional.
  Source             -> `dataset` (the de-duplication key; several sources are joined with "+"); the task's
                     own name when absent.
  options            per instance, optional: a list of answer candidates including a reference output (not an
                     SNI field; the toy bench writes it). A task whose every instance has options is
                     "multiple_choice" (rank classification); without options (all of SNI) it is "generation".

The whole JSON of one task is parsed and validated by `read_task` (a malformed file raises
`records.SourceError` naming the field; `iter_tasks` turns it into `records.Skipped`); the record keeps only
metadata, and each `open_instances()` call parses the file again and streams its instances.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator

from optiml_jax.data import records
from optiml_jax.data.sources import jsonl

FORMAT = "sni"
BENCHMARK = "sni"
DEFINITION_SEPARATOR = "\n\n"


def tasks_folder(sni_dir: str | os.PathLike) -> pathlib.Path:
  """The folder of task JSON files: `<sni_dir>/tasks` for a checkout root, else `sni_dir` itself."""
  root = pathlib.Path(sni_dir)
  return root / "tasks" if (root / "tasks").is_dir() else root


def _definition(task: dict[str, Any], path: str) -> str:
  value = jsonl.required(task, "Definition", path, "task")
  parts = jsonl.as_text_list(value, path, "field 'Definition'")
  return DEFINITION_SEPARATOR.join(p.strip() for p in parts)


def _string_list(task: dict[str, Any], field: str, path: str) -> tuple[str, ...]:
  value = task.get(field, [])
  if value is None:
    return ()
  return jsonl.as_text_list(value, path, f"field '{field}'", allow_empty=True)


def _instance(obj: Any, path: str, where: str, default_id: str) -> records.Instance | None:
  """One instance or positive example -> Instance; None when no output is left non-empty once stripped."""
  if not isinstance(obj, dict):
    raise records.SourceError(path, f"{where}: expected an object with 'input' and 'output', got {type(obj).__name__}")
  text = jsonl.as_text(jsonl.required(obj, "input", path, where), path, f"{where}.input")
  outputs = tuple(
      o.strip() for o in jsonl.as_text_list(jsonl.required(obj, "output", path, where), path, f"{where}.output"))
  outputs = tuple(o for o in outputs if o)
  if not outputs:
    return None
  instance_id = jsonl.as_text(obj["id"], path, f"{where}.id") if "id" in obj else default_id
  options = tuple(
      o.strip() for o in jsonl.as_text_list(obj["options"], path, f"{where}.options")) if "options" in obj else ()
  if options and not set(options) & set(outputs):
    raise records.SourceError(path, f"{where}.options: none of {list(options)} is a reference output {list(outputs)}")
  return records.Instance(id=instance_id, input=text, targets=outputs, options=options)


def _instances(task: dict[str, Any], path: str, local_name: str) -> Iterator[records.Instance]:
  for i, obj in enumerate(task["Instances"]):
    instance = _instance(obj, path, f"Instances[{i}]", f"{local_name}-{i}")
    if instance is not None:
      yield instance


def _stream(path: str, local_name: str) -> Iterator[records.Instance]:
  task = jsonl.load_json(path)
  jsonl.required_list(task, "Instances", path, "task", "instance")
  yield from _instances(task, path, local_name)


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK) -> records.TaskSource:
  """Reads and validates one SNI task JSON (current or older format; see the module docstring).

  Args:
    path: `<checkout>/tasks/<task name>.json`; the file stem is the task's local name.
    benchmark: the benchmark name ("sni").

  Raises:
    records.SourceError: the file is not UTF-8 or not JSON, or a required field is missing or malformed.
  """
  path = str(path)
  local_name = pathlib.Path(path).stem
  task = jsonl.load_json(path)
  definition = _definition(task, path)
  instances = jsonl.required_list(task, "Instances", path, "task", "instance")
  # Validates every instance now, so a bad one is reported when the catalog is built.
  kept = list(_instances({"Instances": instances}, path, local_name))
  if not kept:
    raise records.SourceError(path, "field 'Instances': no instance has a non-empty output")
  with_options = sum(1 for i in kept if i.options)
  if 0 < with_options < len(kept):
    raise records.SourceError(
        path, f"field 'Instances': {with_options} of {len(kept)} instances have 'options'; a multiple-choice "
        "task needs them on every instance")
  positives = task.get("Positive Examples", [])
  if not isinstance(positives, list):
    raise records.SourceError(path, f"field 'Positive Examples': expected a list, got {type(positives).__name__}")
  demonstrations = tuple(d for d in (_instance(obj, path, f"Positive Examples[{i}]", f"{local_name}-positive-{i}")
                                     for i, obj in enumerate(positives)) if d is not None)
  sources = _string_list(task, "Source", path)
  return records.TaskSource(
      name=records.task_name(benchmark, local_name),
      benchmark=benchmark,
      dataset="+".join(sources) if sources else local_name,
      categories=_string_list(task, "Categories", path),
      definition=definition,
      demonstrations=demonstrations,
      path=path,
      kind=records.MULTIPLE_CHOICE if with_options else records.GENERATION,
      open_instances=lambda: _stream(path, local_name),
      format=FORMAT,
  )


def iter_tasks(sni_dir: str | os.PathLike,
               benchmark: str = BENCHMARK) -> Iterator[records.TaskSource | records.Skipped]:
  """Every `*.json` task of a checkout (root with `tasks/`, or the tasks folder), in name order.

  Yields:
    A `records.TaskSource` per readable task, a `records.Skipped` per malformed file.

  Raises:
    FileNotFoundError: the folder does not exist.
  """
  folder = tasks_folder(sni_dir)
  return jsonl.iter_task_files(jsonl.task_files(folder, (".json",)), lambda p: read_task(p, benchmark))


def _split_names(path: pathlib.Path) -> list[str]:
  """The stripped lines of one split file (see `read_split`), or a ValueError naming the file and line."""
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")  # (not utf-8-sig: its error offsets do not count the BOM)
  except UnicodeDecodeError as e:
    line = len((raw[:e.start].decode("utf-8") + "x").splitlines())  # the bytes before e.start are valid
    raise ValueError(f"{path}: line {line}: not valid UTF-8 ({e.reason}, byte {raw[e.start:e.start + 1]!r}); "
                     "expected an SNI split file of UTF-8 text, one task name per line") from e
  # A BOM (Windows editors write one) is no part of a name: "\ufefftask670_..." would match no task.
  return [line.replace("\ufeff", "").strip() for line in text.splitlines()]


def read_split(sni_dir: str | os.PathLike, split: str = "default") -> dict[str, list[str]]:
  """Reads `<checkout>/splits/<split>/<part>_tasks.txt` into `{part: [task names]}`.

  The default split has `train` and `test`; every `*_tasks.txt` present is read (e.g. `dev`). Files are UTF-8
  text, one local SNI task name per line ("task020_mctaco_span_based_question"); a byte-order mark and
  Windows (CRLF) or old Mac (CR) line endings are accepted, surrounding whitespace and blank lines are
  skipped and a trailing ".json" is dropped. Names of tasks absent from the checkout are kept: the catalog
  reports them.

  Args:
    sni_dir: the checkout root (or its `tasks/` folder: the splits are then looked up beside it).
    split: the split folder's name.

  Raises:
    FileNotFoundError: the split folder or its `train_tasks.txt`/`test_tasks.txt` is missing.
    ValueError: a split file is not UTF-8 text (the message names the file and line).
  """
  root = pathlib.Path(sni_dir)
  if not (root / "splits").is_dir() and root.name == "tasks":
    root = root.parent
  folder = root / "splits" / split
  if not folder.is_dir():
    raise FileNotFoundError(f"SNI split folder not found: {folder} (expected splits/{split}/train_tasks.txt "
                            "and test_tasks.txt in the natural-instructions checkout)")
  parts: dict[str, list[str]] = {}
  for path in sorted(folder.glob("*_tasks.txt")):
    names = _split_names(path)
    parts[path.name[:-len("_tasks.txt")]] = [n[:-len(".json")] if n.endswith(".json") else n for n in names if n]
  for required_part in ("train", "test"):
    if required_part not in parts:
      raise FileNotFoundError(f"SNI split file not found: {folder / (required_part + '_tasks.txt')}")
  return parts
