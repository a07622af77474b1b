"""Generic JSONL reader (one task per file) and the line-by-line JSONL helpers the other readers share.

Where it sits: first stage of the data flow. `iter_tasks(dir, benchmark)` turns every `*.jsonl` file directly
inside `dir` into one `records.TaskSource` of the benchmark the caller names (CrossFit, ExMix, T5,
UnifiedSKG or FLAN exports, metaseq-style instruction data, ...); the catalog assigns roles.

Accepted line schemas (one JSON object per line; blank lines are ignored):

  {"src": str, "tgt": str | [str, ...]}                 metaseq's instruction-tuning files
  {"inputs": str, "targets": str | [str, ...]}          seqio / FLAN style exports

Optional keys on any line: "id" (the instance id; default `<file stem>-<line number>`), "options" (a list of
answer candidates: rank classification). Numbers in text fields are read as their decimal string. References
and options lose their surrounding whitespace: the formatter joins the target to the prompt with one space of
its own, so a target " yes" would train (or be scored after) a lone-space token. The task's
kind is "multiple_choice" when the first line carries "options", else "generation"; its `dataset` (the
de-duplication key) is the first line's "dataset" value if present, else the file stem.

As for SNI, options are all or nothing and hold the answer: in a multiple-choice task every line carries
"options", in a generation task none does, and a line's options include at least one of its references. A
reference that is empty (or only whitespace) is a defect too. Such a line is a bad line (below), so the
catalog build skips the task naming the file, line and field.

Streaming and errors: `read_task` validates the first non-blank line eagerly (so an empty file, undecodable
bytes or a malformed first line become a `records.SourceError` and `iter_tasks` yields `records.Skipped`);
later lines are checked when `open_instances()` reaches them, and a bad one raises `records.SourceError`
naming the file and line number. Each `open_instances()` call reopens the file.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterator, Mapping

from optiml_jax.data import records

FORMAT = "jsonl"

# Converts one parsed line into an instance: `convert(obj, path, line_number, local_name)`; returns None to drop
# the line (a reader documents when), raises SourceError (via the helpers below) on bad fields.
Converter = Callable[[Mapping[str, Any], str, int, str], "records.Instance | None"]


def _too_deep(e: RecursionError) -> str:
  return f"invalid JSON (nested too deeply to parse: {e})"


def load_json(path: str) -> dict[str, Any]:
  """Parses one task file; undecodable bytes, invalid or too deeply nested JSON, or a non-object raise
  `records.SourceError`."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise records.SourceError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})") from e
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise records.SourceError(path, f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
  except RecursionError as e:  # e.g. "[[[[...]]]]" deeper than the interpreter's recursion limit
    raise records.SourceError(path, _too_deep(e)) from e
  if not isinstance(obj, dict):
    raise records.SourceError(path, f"expected a JSON object at the top level, got {type(obj).__name__}")
  return obj


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
  """Streams `(line_number, line)` of a UTF-8 text file (line numbers from 1, a leading BOM dropped).

  Raises:
    records.SourceError: on bytes that are not UTF-8, naming the line.
  """
  path = str(path)
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise records.SourceError(
            path, f"line {line_number}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)") from e
      yield line_number, (line.lstrip("\ufeff") if line_number == 1 else line)


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
  """Streams `(line_number, object)` for every non-blank line of a JSONL file (line numbers from 1).

  Raises:
    records.SourceError: on bytes that are not UTF-8, invalid (or too deeply nested) JSON or a line that is not
      a JSON object; the reason names the line.
  """
  path = str(path)
  for line_number, line in iter_text_lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise records.SourceError(path, f"line {line_number}: invalid JSON ({e.msg} at column {e.colno})") from e
    except RecursionError as e:
      raise records.SourceError(path, f"line {line_number}: {_too_deep(e)}") from e
    if not isinstance(obj, dict):
      raise records.SourceError(path, f"line {line_number}: expected a JSON object, got {type(obj).__name__}")
    yield line_number, obj


def inline_task(path: str, benchmark: str, local_name: str, kind: str,
                open_instances: Callable[[], Iterator[records.Instance]], fmt: str, dataset: str | None = None,
                template: str = "") -> records.TaskSource:
  """A task whose prompts carry their instruction inline: no definition and no demonstrations (JSONL,
  P3, chain-of-thought and text sources)."""
  return records.TaskSource(
      name=records.task_name(benchmark, local_name),
      benchmark=benchmark,
      dataset=dataset or local_name,
      categories=(),
      definition="",
      demonstrations=(),
      path=path,
      kind=kind,
      open_instances=open_instances,
      template=template,
      format=fmt,
  )


def as_text(value: Any, path: str, where: str) -> str:
  """A text field: strings as they are, numbers as their decimal string (SNI has integer outputs)."""
  if isinstance(value, str):
    return value
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  raise records.SourceError(path, f"{where}: expected a string, got {type(value).__name__}")


def as_text_list(value: Any, path: str, where: str, allow_empty: bool = False) -> tuple[str, ...]:
  """A field holding one text or a list of texts, as a tuple of strings."""
  if isinstance(value, list):
    texts = tuple(as_text(v, path, f"{where}[{i}]") for i, v in enumerate(value))
  else:
    texts = (as_text(value, path, where),)
  if not texts and not allow_empty:
    raise records.SourceError(path, f"{where}: expected at least one string, got an empty list")
  return texts


def stripped(texts: tuple[str, ...]) -> tuple[str, ...]:
  """`texts` without their surrounding whitespace (references and options: see the module docstring)."""
  return tuple(t.strip() for t in texts)


def non_empty(texts: tuple[str, ...], path: str, where: str) -> tuple[str, ...]:
  """`texts` (references), or a SourceError naming the first one that is empty or only whitespace."""
  for i, text in enumerate(texts):
    if not text.strip():
      raise records.SourceError(
          path, f"{where}{f'[{i}]' if len(texts) > 1 else ''} is empty (expected a non-empty "
          "reference output)")
  return texts


def check_options(options: tuple[str, ...], targets: tuple[str, ...], path: str, where: str) -> tuple[str, ...]:
  """`options`, or a SourceError when none of them is a reference (the SNI reader's rule: rank classification
  could never score the instance right)."""
  if options and not set(options) & set(targets):
    raise records.SourceError(path, f"{where}: none of {list(options)} is a reference output {list(targets)}")
  return options


def consistent_options(convert: Converter, multiple_choice: bool, first_line: int, field: str = "options") -> Converter:
  """`convert`, checking that every line agrees with the task's kind: options on every line of a multiple-choice
  task (the kind of its first instance, at `first_line`) and on none of a generation task's (as SNI's reader
  requires of a task's instances). A line that breaks it raises `records.SourceError` naming the line."""

  def checked(obj: Mapping[str, Any], path: str, line_number: int, local_name: str) -> records.Instance | None:
    instance = convert(obj, path, line_number, local_name)
    if instance is not None and bool(instance.options) != multiple_choice:
      if multiple_choice:
        problem = f"no '{field}', but the task is multiple choice (line {first_line} has '{field}')"
      else:
        problem = f"field '{field}' in a generation task (line {first_line} has no '{field}')"
      raise records.SourceError(path,
                                f"line {line_number}: {problem}; a multiple-choice task needs '{field}' on every line")
    return instance

  return checked


def required(obj: Mapping[str, Any], field: str, path: str, where: str) -> Any:
  """`obj[field]`, or a SourceError naming the missing field."""
  if field not in obj:
    raise records.SourceError(path, f"{where}: missing required field '{field}'")
  return obj[field]


def required_list(obj: Mapping[str, Any], field: str, path: str, where: str, items: str) -> list[Any]:
  """`obj[field]` as a non-empty list, or a SourceError naming the field (`items` names what it holds)."""
  value = required(obj, field, path, where)
  if not isinstance(value, list):
    raise records.SourceError(path, f"field '{field}': expected a list, got {type(value).__name__}")
  if not value:
    raise records.SourceError(path, f"field '{field}': empty list (a task needs at least one {items})")
  return value


def instance_id(obj: Mapping[str, Any], path: str, line_number: int, local_name: str) -> str:
  """The line's own "id" if it has one, else `<local name>-<line number>`."""
  if "id" in obj:
    return as_text(obj["id"], path, f"line {line_number}: field 'id'")
  return f"{local_name}-{line_number}"


def instance_from_record(obj: Mapping[str, Any], path: str, line_number: int, local_name: str) -> records.Instance:
  """One generic JSONL line (`src`/`tgt` or `inputs`/`targets`, optional `id`, `options`) -> Instance."""
  where = f"line {line_number}"
  if "src" in obj or "tgt" in obj:
    input_key, target_key = "src", "tgt"
  elif "inputs" in obj or "targets" in obj:
    input_key, target_key = "inputs", "targets"
  else:
    raise records.SourceError(
        path, f"{where}: expected fields 'src' and 'tgt' or 'inputs' and 'targets', found {sorted(obj)}")
  text = as_text(required(obj, input_key, path, where), path, f"{where}: field '{input_key}'")
  references = as_text_list(required(obj, target_key, path, where), path, f"{where}: field '{target_key}'")
  targets = non_empty(stripped(references), path, f"{where}: field '{target_key}'")
  options: tuple[str, ...] = ()
  if "options" in obj:
    options = check_options(stripped(as_text_list(obj["options"], path, f"{where}: field 'options'")), targets, path,
                            f"{where}: field 'options'")
  return records.Instance(id=instance_id(obj, path, line_number, local_name), input=text, targets=targets,
                          options=options)


def stream(path: str, local_name: str, convert: Converter) -> Iterator[records.Instance]:
  """Converts the lines of `path` lazily, in file order, skipping those `convert` drops."""
  for line_number, obj in iter_json_lines(path):
    instance = convert(obj, path, line_number, local_name)
    if instance is not None:
      yield instance


def first_line(path: str, local_name: str, convert: Converter,
               dropped: str = "every line is dropped") -> tuple[int, dict[str, Any]]:
  """`(line number, object)` of the first line that `convert` accepts (validated), read eagerly.

  Raises:
    records.SourceError: "no instances: the file is empty", or "no instances: <dropped>" when it has lines but
      `convert` drops them all; or the error of the first malformed line.
  """
  seen = False
  for line_number, obj in iter_json_lines(path):
    seen = True
    if convert(obj, path, line_number, local_name) is not None:
      return line_number, obj
  raise records.SourceError(path, f"no instances: {dropped}" if seen else "no instances: the file is empty")


def first_record(path: str, local_name: str, convert: Converter,
                 dropped: str = "every line is dropped") -> dict[str, Any]:
  """The object of `first_line`."""
  return first_line(path, local_name, convert, dropped)[1]


def read_task(path: str | os.PathLike, benchmark: str) -> records.TaskSource:
  """Reads one generic JSONL task file (see the module docstring for the schemas).

  Args:
    path: a `.jsonl` file; its stem is the task's local name.
    benchmark: the benchmark the caller declares for this folder ("crossfit", "t5", ...).

  Returns:
    The task; its instances stream from the file on each `open_instances()` call.

  Raises:
    records.SourceError: the file is empty, not UTF-8, or its first line is malformed. (A later line that is
      malformed, or whose options disagree with the task's kind, raises it while streaming.)
  """
  path = str(path)
  local_name = pathlib.Path(path).stem
  line_number, first = first_line(path, local_name, instance_from_record)
  dataset = as_text(first["dataset"], path,
                    f"line {line_number}: field 'dataset'") if "dataset" in first else local_name
  multiple_choice = "options" in first
  convert = consistent_options(instance_from_record, multiple_choice, line_number)
  return inline_task(path, benchmark, local_name, records.MULTIPLE_CHOICE if multiple_choice else records.GENERATION,
                     lambda: stream(path, local_name, convert), FORMAT, dataset=dataset)


def task_files(directory: str | os.PathLike, suffixes: tuple[str, ...]) -> list[pathlib.Path]:
  """Files directly inside `directory` with one of `suffixes`, sorted by name.

  Raises:
    FileNotFoundError: `directory` is not a folder.
  """
  root = pathlib.Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f"source folder not found: {root} (expected a folder of {'/'.join(suffixes)} files)")
  return sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(suffixes))


def iter_task_files(files: list[pathlib.Path],
                    read: Callable[[str], records.TaskSource]) -> Iterator[records.TaskSource | records.Skipped]:
  """Reads each file with `read`; a malformed one becomes `records.Skipped` instead of stopping the walk."""
  for path in files:
    try:
      yield read(str(path))
    except records.SourceError as e:
      yield records.Skipped(path=str(path), reason=e.reason)


def iter_tasks(directory: str | os.PathLike, benchmark: str) -> Iterator[records.TaskSource | records.Skipped]:
  """One task per `*.jsonl` file directly inside `directory`, in name order; bad files -> `Skipped`."""
  return iter_task_files(task_files(directory, (".jsonl",)), lambda p: read_task(p, benchmark))
