"""Tests for the generic JSONL, chain-of-thought and pre-training text readers (files written here)."""

import json
import pathlib

import pytest

from optiml_jax.data import records
from optiml_jax.data.sources import cot
from optiml_jax.data.sources import jsonl
from optiml_jax.data.sources import text


def _write_lines(path: pathlib.Path, lines) -> pathlib.Path:
  path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines), encoding="utf-8")
  return path


# --- Generic JSONL -------------------------------------------------------------------------------------------


def test_generic_jsonl_both_schemas(tmp_path):
  _write_lines(tmp_path / "metaseq_task.jsonl", [
      {
          "src": "Translate: chat",
          "tgt": "cat"
      },
      {
          "src": "Translate: chien",
          "tgt": ["dog", "hound"],
          "id": "x7"
      },
  ])
  _write_lines(tmp_path / "seqio_task.jsonl", [
      {
          "inputs": "Is 3 odd?",
          "targets": "yes",
          "options": ["yes", "no"],
          "dataset": "glue/odd"
      },
      {
          "inputs": "Is 4 odd?",
          "targets": "no",
          "options": ["yes", "no"]
      },
  ])
  (tmp_path / "README.md").write_text("not a task")
  metaseq_task, seqio_task = jsonl.iter_tasks(tmp_path, "crossfit")
  assert (metaseq_task.name, metaseq_task.benchmark, metaseq_task.dataset,
          metaseq_task.kind) == ("crossfit:metaseq_task", "crossfit", "metaseq_task", records.GENERATION)
  assert list(metaseq_task.instances()) == [
      records.Instance(id="metaseq_task-1", input="Translate: chat", targets=("cat",)),
      records.Instance(id="x7", input="Translate: chien", targets=("dog", "hound")),
  ]
  assert (seqio_task.dataset, seqio_task.kind) == ("glue/odd", records.MULTIPLE_CHOICE)
  assert [i.options for i in seqio_task.instances()] == [("yes", "no")] * 2
  assert list(seqio_task.instances()) == list(seqio_task.open_instances())


@pytest.mark.parametrize("lines, expected", [
    ([], "no instances: the file is empty"),
    ([{
        "src": "a"
    }], "line 1: missing required field 'tgt'"),
    ([{
        "question": "a"
    }], "line 1: expected fields 'src' and 'tgt' or 'inputs' and 'targets'"),
    ([{
        "inputs": "a",
        "targets": []
    }], "line 1: field 'targets': expected at least one string"),
    ([{
        "inputs": "a",
        "targets": {
            "x": 1
        }
    }], "line 1: field 'targets': expected a string, got dict"),
    (["", "[1, 2]"], "line 2: expected a JSON object, got list"),
])
def test_generic_jsonl_bad_files_are_skipped(tmp_path, lines, expected):
  _write_lines(tmp_path / "bad.jsonl", lines)
  (skipped,) = jsonl.iter_tasks(tmp_path, "t5")
  assert isinstance(skipped, records.Skipped) and expected in skipped.reason, skipped
  assert skipped.path == str(tmp_path / "bad.jsonl")


def test_generic_jsonl_references_and_options_lose_surrounding_whitespace(tmp_path):
  # The formatter joins source and target with its own " ": a target " yes" trained a lone-space token first.
  _write_lines(tmp_path / "spaced.jsonl", [{
      "inputs": "Is 3 odd?",
      "targets": [" yes\n", "Yes "],
      "options": [" yes", "no "]
  }])
  (task,) = jsonl.iter_tasks(tmp_path, "t5")
  (instance,) = task.instances()
  assert (instance.targets, instance.options) == (("yes", "Yes"), ("yes", "no"))


def test_generic_jsonl_bad_later_line_names_its_number(tmp_path):
  task = jsonl.read_task(_write_lines(tmp_path / "t.jsonl", [{"src": "a", "tgt": "b"}, {"src": "c"}]), "exmix")
  with pytest.raises(records.SourceError, match=r"t.jsonl: line 2: missing required field 'tgt'"):
    list(task.instances())


@pytest.mark.parametrize("lines, expected", [
    ([{
        "src": "Is 3 odd?",
        "tgt": "yes",
        "options": ["yes", "no"]
    }, {
        "src": "Is 4 odd?",
        "tgt": "no"
    }], "line 2: no 'options', but the task is multiple choice (line 1 has 'options')"),
    ([{
        "src": "Is 3 odd?",
        "tgt": "yes"
    }, {
        "src": "Is 4 odd?",
        "tgt": "no",
        "options": ["yes", "no"]
    }], "line 2: field 'options' in a generation task (line 1 has no 'options')"),
    ([{
        "inputs": "Is 3 odd?",
        "targets": ["yes", "true"],
        "options": ["yes", "no"]
    }, {
        "inputs": "Is 4 odd?",
        "targets": "no",
        "options": ["odd", "even"]
    }], "line 2: field 'options': none of ['odd', 'even'] is a reference output ['no']"),
    ([{
        "src": "Is 3 odd?",
        "tgt": "yes"
    }, {
        "src": "Say nothing.",
        "tgt": " "
    }], "line 2: field 'tgt' is empty"),
    ([{
        "inputs": "Is 3 odd?",
        "targets": ["yes", ""]
    }], "line 1: field 'targets'[1] is empty"),
    ([{
        "src": "a",
        "tgt": "b"
    }, "[" * 100_000 + "]" * 100_000], "line 2: invalid JSON (nested too deeply"),
])
def test_generic_jsonl_inconsistent_tasks_are_skipped_by_the_build(tmp_path, lines, expected):
  """Such tasks used to be read (an option-less line of a multiple-choice task was dropped by the evaluation, one
  whose options miss its reference scored 0): now the line is a bad line, and reading the task stops there."""
  path = _write_lines(tmp_path / "bad.jsonl", lines)
  with pytest.raises(records.SourceError) as error:
    list(jsonl.read_task(path, "crossfit").instances())  # what the catalog build does with every task
  assert str(error.value).startswith(f"{path}: ") and expected in error.value.reason


def test_generic_jsonl_too_deep_first_line_is_skipped(tmp_path):
  (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
  _write_lines(tmp_path / "good.jsonl", [{"src": "a", "tgt": "b"}])
  deep, good = jsonl.iter_tasks(tmp_path, "crossfit")  # no RecursionError stops the walk
  assert isinstance(deep, records.Skipped) and deep.path == str(tmp_path / "deep.jsonl")
  assert deep.reason.startswith("line 1: invalid JSON (nested too deeply to parse")
  assert isinstance(good, records.TaskSource)


def test_missing_folder_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    list(jsonl.iter_tasks(tmp_path / "nowhere", "t5"))


# --- Chain of thought ------------------------------------------------------------------------------------------


def test_cot_schemas(tmp_path):
  _write_lines(tmp_path / "gsm8k_cot.jsonl", [
      {
          "question": "Tom has 2 apples and buys 3. How many?",
          "rationale": "2 + 3 = 5.",
          "answer": "5"
      },
      {
          "question": "Is the sky green?",
          "rationale": "The sky is blue. ",
          "answer": "no."
      },
      {
          "question": "Capital of France?",
          "answer": "Paris"
      },
      {
          "inputs": "Q: 1+1?",
          "targets": " 1 plus 1 is 2. So the answer is 2.\n",
          "id": "flan-9"
      },
      {
          "question": "How many legs?",
          "rationale": "Spiders have eight.",
          "answer": 8
      },
  ])
  (task,) = cot.iter_tasks(tmp_path)
  assert (task.name, task.benchmark, task.kind, task.format) == ("reasoning:gsm8k_cot", "reasoning", records.GENERATION,
                                                                 "cot")
  assert [(i.id, i.targets[0]) for i in task.instances()] == [
      ("gsm8k_cot-1", "2 + 3 = 5. So the answer is 5."),
      ("gsm8k_cot-2", "The sky is blue. So the answer is no."),
      ("gsm8k_cot-3", "Paris"),
      ("flan-9", "1 plus 1 is 2. So the answer is 2."),
      ("gsm8k_cot-5", "Spiders have eight. So the answer is 8."),
  ]
  assert next(task.instances()).input == "Tom has 2 apples and buys 3. How many?"


@pytest.mark.parametrize("line, expected", [
    ({
        "question": "q",
        "rationale": "r"
    }, "line 1: missing required field 'answer'"),
    ({
        "question": "q",
        "answer": " "
    }, "line 1: field 'answer' is empty"),
    ({
        "inputs": "q"
    }, "line 1: missing required field 'targets'"),
    ({
        "inputs": "q",
        "targets": ""
    }, "line 1: field 'targets' is empty"),
    ({
        "inputs": "q",
        "targets": " \n"
    }, "line 1: field 'targets' is empty"),
    ({
        "prompt": "q"
    }, "line 1: expected fields 'inputs' and 'targets' or 'question'"),
])
def test_cot_bad_first_line_is_skipped(tmp_path, line, expected):
  _write_lines(tmp_path / "bad.jsonl", [line])
  (skipped,) = cot.iter_tasks(tmp_path)
  assert isinstance(skipped, records.Skipped) and expected in skipped.reason, skipped


def test_cot_empty_targets_on_a_later_line_names_it(tmp_path):
  path = _write_lines(tmp_path / "gsm8k.jsonl", [{
      "inputs": "q1",
      "targets": "a. So the answer is 1."
  }, {
      "inputs": "q2",
      "targets": ""
  }])
  with pytest.raises(records.SourceError, match=r"gsm8k.jsonl: line 2: field 'targets' is empty"):
    list(cot.read_task(path).instances())


# --- Pre-training text ------------------------------------------------------------------------------------------


def test_text_paragraphs_and_jsonl(tmp_path):
  (tmp_path / "books.txt").write_text("First document,\nsecond line.\n\n\n  \nSecond document.\r\n\r\nThird\n",
                                      encoding="utf-8")
  _write_lines(tmp_path / "web.jsonl", [{"text": "A web page."}, "", {"text": "Another.", "id": "doc-b"}])
  books, web = text.iter_tasks(tmp_path)
  assert (books.name, books.benchmark, books.kind, books.format) == ("pretraining:books", "pretraining",
                                                                     records.LANGUAGE_MODELING, "text")
  assert list(books.instances()) == [
      records.Instance(id="books-1", input="First document,\nsecond line."),
      records.Instance(id="books-6", input="Second document."),
      records.Instance(id="books-8", input="Third"),
  ]
  assert list(books.instances()) == list(books.open_instances())
  assert [(i.id, i.input, i.targets) for i in web.instances()] == [("web-1", "A web page.", ()),
                                                                   ("doc-b", "Another.", ())]


def test_text_jsonl_drops_empty_documents_as_txt_does(tmp_path):
  # A `.txt` drops blank paragraphs; `{"text": ""}` trained an empty document (a row of EOS alone).
  _write_lines(tmp_path / "a_web.jsonl", [{"text": ""}, {"text": "A page.\n"}, {"text": " \n\t"}, {"text": "B."}])
  _write_lines(tmp_path / "b_blank.jsonl", [{"text": " "}, {"text": ""}])
  web, blank = text.iter_tasks(tmp_path)
  assert [(i.id, i.input) for i in web.instances()] == [("a_web-2", "A page.\n"), ("a_web-4", "B.")]
  assert blank == records.Skipped(str(tmp_path / "b_blank.jsonl"), "no instances: every 'text' is empty")


def test_text_bad_files_are_skipped(tmp_path):
  (tmp_path / "a_blank.txt").write_text("\n \n\n", encoding="utf-8")
  (tmp_path / "b_bytes.txt").write_bytes(b"ok line\n\nbad \xff byte\n")
  _write_lines(tmp_path / "c_notext.jsonl", [{"content": "x"}])
  (tmp_path / "d_ignored.csv").write_text("a,b\n")
  blank, late_bad, notext = text.iter_tasks(tmp_path)
  assert isinstance(blank, records.Skipped) and "no documents" in blank.reason
  assert isinstance(notext, records.Skipped) and "line 1: missing required field 'text'" in notext.reason
  # The bad bytes come after the first document: found while streaming, with the line number.
  assert isinstance(late_bad, records.TaskSource)
  with pytest.raises(records.SourceError, match="line 3: not valid UTF-8"):
    list(late_bad.instances())
