"""Plain pre-training text reader -> `records.TaskSource` of benchmark "pretraining", kind "lm".

Where it sits: first stage of the data flow. The OPT-IML recipe keeps 5% of pre-training text in the
mixture, trained with the loss on the whole sequence; formatting treats an `lm` instance's `input` as the
whole text and `targets` is empty. A document stays whole here, one instance however long: the Task
preprocessor, which knows the row length, splits a long one into row-sized chunks, one training example each,
and short ones pack together with other examples (`registry.truncate`, `formatting.split_text`).

Each file directly inside the folder is one task (its stem is the local name and the de-duplication key):

  *.txt     one document per paragraph: documents are separated by one or more blank lines (lines holding
            only whitespace); a document keeps its inner newlines. Instance id: `<stem>-<first line number>`.
  *.jsonl   one document per line, `{"text": str}` (optional "id"); blank lines are ignored, and so is a
            line whose text is empty or only whitespace (as a `.txt` drops blank paragraphs).

Files are streamed line by line on every `open_instances()` call. `read_task` reads up to the first document
eagerly, so an empty file (or one whose every document is empty) or undecodable bytes there become a
`records.SourceError` (and `iter_tasks` yields `records.Skipped`); a later bad line raises `records.SourceError`
naming its line number while streaming.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator, Mapping

from optiml_jax.data import records
from optiml_jax.data.sources import jsonl

FORMAT = "text"
BENCHMARK = "pretraining"
SUFFIXES = (".txt", ".jsonl")


def iter_paragraphs(path: str) -> Iterator[tuple[int, str]]:
  """Streams `(first_line_number, document)` for each blank-line-separated paragraph of a text file."""
  lines: list[str] = []
  start = 0
  for line_number, line in jsonl.iter_text_lines(path):
    if line.strip():
      if not lines:
        start = line_number
      lines.append(line.rstrip("\r\n"))
    elif lines:
      yield start, "\n".join(lines)
      lines = []
  if lines:
    yield start, "\n".join(lines)


def _txt_instances(path: str, local_name: str) -> Iterator[records.Instance]:
  for start, document in iter_paragraphs(path):
    yield records.Instance(id=f"{local_name}-{start}", input=document)


def instance_from_record(obj: Mapping[str, Any], path: str, line_number: int,
                         local_name: str) -> records.Instance | None:
  """One `{"text": ...}` line -> an `lm` instance; None when the text is empty or only whitespace."""
  where = f"line {line_number}"
  text = jsonl.as_text(jsonl.required(obj, "text", path, where), path, f"{where}: field 'text'")
  if not text.strip():
    return None
  return records.Instance(id=jsonl.instance_id(obj, path, line_number, local_name), input=text)


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK) -> records.TaskSource:
  """Reads one pre-training text file (`.txt` or `.jsonl`).

  Raises:
    records.SourceError: unknown suffix, no non-empty document, bytes that are not UTF-8 before the first document,
      or a malformed first JSONL line.
  """
  path = str(path)
  local_name = pathlib.Path(path).stem
  if path.endswith(".txt"):
    if next(iter_paragraphs(path), None) is None:
      raise records.SourceError(path, "no documents: the file is empty or holds only blank lines")
    open_instances = lambda: _txt_instances(path, local_name)
  elif path.endswith(".jsonl"):
    jsonl.first_record(path, local_name, instance_from_record, dropped="every 'text' is empty")
    open_instances = lambda: jsonl.stream(path, local_name, instance_from_record)
  else:
    raise records.SourceError(path, f"unknown text file type: expected one of {SUFFIXES}")
  return jsonl.inline_task(path, benchmark, local_name, records.LANGUAGE_MODELING, open_instances, FORMAT)


def iter_tasks(directory: str | os.PathLike,
               benchmark: str = BENCHMARK) -> Iterator[records.TaskSource | records.Skipped]:
  """One task per `.txt`/`.jsonl` file directly inside `directory`, in name order; bad files -> `Skipped`."""
  return jsonl.iter_task_files(jsonl.task_files(directory, SUFFIXES), lambda p: read_task(p, benchmark))
