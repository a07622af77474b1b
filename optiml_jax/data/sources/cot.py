"""Chain-of-thought reader: JSONL reasoning data -> `records.TaskSource` of benchmark "reasoning".

Where it sits: first stage of the data flow, beside the other readers. The OPT-IML recipe mixes 1% of
chain-of-thought data (14 tasks) into training; each `*.jsonl` file directly inside the folder is one task
(its stem is the local name and the de-duplication key), kind "generation".

Accepted line schemas (one JSON object per line; blank lines are ignored; a file may mix them):

  {"inputs": str, "targets": str}                        FLAN CoT exports: the target already holds the
                                                          rationale and the answer
  {"question": str, "rationale": str, "answer": str}     target = "<rationale> So the answer is <answer>."
  {"question": str, "answer": str}                       no rationale: target = the answer

The answer sentence is FLAN's CoT form; its final period is left out when the answer already ends with
".", "!" or "?". An optional "id" names the instance (default `<file stem>-<line number>`). Numbers are read
as their decimal string. The target loses its surrounding whitespace (the formatter adds its own space before
it). An empty (or only whitespace) "targets" or "answer" is a bad line. Validation: the
first line is checked eagerly, later lines when streamed (a bad line raises `records.SourceError` naming its
line number); see `optiml_jax.data.sources.jsonl`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterator, Mapping

from optiml_jax.data import records
from optiml_jax.data.sources import jsonl

FORMAT = "cot"
BENCHMARK = "reasoning"


def cot_target(rationale: str, answer: str) -> str:
  """FLAN's chain-of-thought target: `"<rationale> So the answer is <answer>."`."""
  answer = answer.strip()
  end = "" if answer.endswith((".", "!", "?")) else "."
  rationale = rationale.strip()
  if not rationale:
    return answer
  return f"{rationale} So the answer is {answer}{end}"


def instance_from_record(obj: Mapping[str, Any], path: str, line_number: int, local_name: str) -> records.Instance:
  """One CoT line (either schema) -> Instance."""
  where = f"line {line_number}"
  if "inputs" in obj or "targets" in obj:
    text = jsonl.as_text(jsonl.required(obj, "inputs", path, where), path, f"{where}: field 'inputs'")
    target = jsonl.as_text(jsonl.required(obj, "targets", path, where), path, f"{where}: field 'targets'").strip()
    if not target:
      raise records.SourceError(path, f"{where}: field 'targets' is empty")
  elif "question" in obj:
    text = jsonl.as_text(obj["question"], path, f"{where}: field 'question'")
    answer = jsonl.as_text(jsonl.required(obj, "answer", path, where), path, f"{where}: field 'answer'")
    if not answer.strip():
      raise records.SourceError(path, f"{where}: field 'answer' is empty")
    rationale = jsonl.as_text(obj.get("rationale", ""), path, f"{where}: field 'rationale'")
    target = cot_target(rationale, answer)
  else:
    raise records.SourceError(
        path, f"{where}: expected fields 'inputs' and 'targets' or 'question', 'rationale' and 'answer', "
        f"found {sorted(obj)}")
  return records.Instance(id=jsonl.instance_id(obj, path, line_number, local_name), input=text, targets=(target,))


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK) -> records.TaskSource:
  """Reads one chain-of-thought JSONL file.

  Raises:
    records.SourceError: the file is empty, not UTF-8, or its first line is malformed.
  """
  path = str(path)
  local_name = pathlib.Path(path).stem
  jsonl.first_record(path, local_name, instance_from_record)
  return jsonl.inline_task(path, benchmark, local_name, records.GENERATION,
                           lambda: jsonl.stream(path, local_name, instance_from_record), FORMAT)


def iter_tasks(directory: str | os.PathLike,
               benchmark: str = BENCHMARK) -> Iterator[records.TaskSource | records.Skipped]:
  """One task per `*.jsonl` file directly inside `directory`, in name order; bad files -> `Skipped`."""
  return jsonl.iter_task_files(jsonl.task_files(directory, (".jsonl",)), lambda p: read_task(p, benchmark))
