"""Tests for the Super-NaturalInstructions reader (real samples in ../shared and files written here)."""

import json
import pathlib

import pytest

from optiml_jax.data import formatting
from optiml_jax.data import records
from optiml_jax.data.sources import sni


def _sni_dir(shared_dir: pathlib.Path) -> pathlib.Path:
  return shared_dir / "data" / "natural-instructions"


def _write(path: pathlib.Path, obj) -> pathlib.Path:
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


def _task(**overrides):
  task = {
      "Definition": ["Answer the question."],
      "Categories": ["Question Answering"],
      "Source": ["toyqa"],
      "Positive Examples": [{
          "input": "2+2?",
          "output": "4",
          "explanation": "arithmetic"
      }],
      "Negative Examples": [],
      "Instances": [
          {
              "id": "task900_toy-1",
              "input": "1+1?",
              "output": ["2"]
          },
          {
              "id": "task900_toy-2",
              "input": "3+3?",
              "output": ["6", "six"]
          },
      ],
  }
  task.update(overrides)
  return task


def test_every_real_task_reads(shared_dir):
  folder = _sni_dir(shared_dir) / "tasks"
  results = list(sni.iter_tasks(_sni_dir(shared_dir)))
  skipped = [r for r in results if isinstance(r, records.Skipped)]
  assert skipped == []
  assert len(results) == len(list(folder.glob("*.json"))) == 291
  for task in results:
    assert task.benchmark == "sni" and task.format == "sni" and task.kind == records.GENERATION
    assert task.name == records.task_name("sni", pathlib.Path(task.path).stem)
    assert task.definition and task.categories
    first = next(task.instances())
    assert first.targets and all(isinstance(t, str) for t in first.targets)
    assert first.options == ()


def test_tasks_folder_gives_the_same_tasks(shared_dir):
  from_root = [t.name for t in sni.iter_tasks(_sni_dir(shared_dir))]
  from_tasks = [t.name for t in sni.iter_tasks(_sni_dir(shared_dir) / "tasks")]
  assert from_root == from_tasks


def test_real_task_fields_follow_the_json(shared_dir):
  path = _sni_dir(shared_dir) / "tasks" / "task1290_xsum_summarization.json"
  raw = json.loads(path.read_text(encoding="utf-8"))
  task = sni.read_task(path)
  assert task.name == "sni:task1290_xsum_summarization"
  assert task.dataset == "xsum"
  assert task.categories == tuple(raw["Categories"])
  assert task.definition == raw["Definition"][0].strip()
  assert len(task.demonstrations) == len(raw["Positive Examples"])
  assert task.demonstrations[0].targets == (raw["Positive Examples"][0]["output"],)
  instances = list(task.instances())
  assert [i.id for i in instances] == [r["id"] for r in raw["Instances"]]
  assert [i.targets for i in instances] == [tuple(r["output"]) for r in raw["Instances"]]


def test_integer_outputs_become_strings(shared_dir):
  task = sni.read_task(_sni_dir(shared_dir) / "tasks" / "task1759_gsm.json")
  raw = json.loads(pathlib.Path(task.path).read_text(encoding="utf-8"))
  assert any(isinstance(o, int) for r in raw["Instances"] for o in r["output"])
  for instance, record in zip(task.instances(), raw["Instances"]):
    assert instance.targets == tuple(str(o) for o in record["output"])
  assert task.dataset == "task1759_gsm"  # No "Source" field: the task's own name.


def test_outputs_lose_surrounding_whitespace(shared_dir):
  # task1147_country_currency has outputs like " Australian Dollar": joined to the prompt with the formatter's
  # own space, the training target started with a lone-space token.
  task = sni.read_task(_sni_dir(shared_dir) / "tasks" / "task1147_country_currency.json")
  raw = json.loads(pathlib.Path(task.path).read_text(encoding="utf-8"))
  assert any(o != o.lstrip() for r in raw["Instances"] for o in r["output"])
  instances = list(task.instances())
  assert [i.targets for i in instances] == [tuple(o.strip() for o in r["output"]) for r in raw["Instances"]]
  for instance in instances:
    _, target = formatting.token_texts(
        formatting.format_example(task, instance, delimiter=" A:")[0], instance.targets[0])
    assert target == " " + instance.targets[0] and not target.startswith("  ")
  assert all(d.targets[0] == d.targets[0].strip() for d in task.demonstrations)


def test_empty_outputs_are_no_references_and_an_instance_without_any_is_dropped(tmp_path):
  # An empty output trained the end token alone after the prompt and was scored against as a reference.
  task = sni.read_task(
      _write(
          tmp_path / "task903_blanks.json",
          _task(
              **{
                  "Instances": [{
                      "input": "capital of France?",
                      "output": ["", "Paris"]
                  }, {
                      "input": "blank",
                      "output": ["   "]
                  }, {
                      "input": "capital of Italy?",
                      "output": ["Rome"]
                  }],
                  "Positive Examples": [{
                      "input": "no answer",
                      "output": ""
                  }, {
                      "input": "capital of Spain?",
                      "output": "Madrid"
                  }],
              })))
  assert [(i.id, i.targets) for i in task.instances()] == [("task903_blanks-0", ("Paris",)),
                                                           ("task903_blanks-2", ("Rome",))]
  assert [d.targets for d in task.demonstrations] == [("Madrid",)]


def test_open_instances_twice_yields_the_same(shared_dir):
  task = sni.read_task(_sni_dir(shared_dir) / "tasks" / "task1761_svamp.json")
  first, second = list(task.instances()), list(task.open_instances())
  assert first == second and len(first) == 64


def test_read_split(shared_dir):
  splits = sni.read_split(_sni_dir(shared_dir))
  assert len(splits["train"]) == 756 and len(splits["test"]) == 119
  assert all(name.startswith("task") and not name.endswith(".json") for name in splits["train"] + splits["test"])
  assert not set(splits["train"]) & set(splits["test"])
  assert splits == sni.read_split(_sni_dir(shared_dir) / "tasks")
  present = {p.stem for p in (_sni_dir(shared_dir) / "tasks").glob("*.json")}
  assert set(splits["train"]) - present  # Most split tasks are absent from the sample: tolerated.


def test_read_split_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="splits/default"):
    sni.read_split(tmp_path)
  (tmp_path / "splits" / "default").mkdir(parents=True)
  (tmp_path / "splits" / "default" / "train_tasks.txt").write_text("task1_a\n\ntask2_b.json\n")
  with pytest.raises(FileNotFoundError, match="test_tasks.txt"):
    sni.read_split(tmp_path)
  (tmp_path / "splits" / "default" / "test_tasks.txt").write_text("task3_c\n")
  assert sni.read_split(tmp_path) == {"train": ["task1_a", "task2_b"], "test": ["task3_c"]}


def _copy_split(shared_dir: pathlib.Path, root: pathlib.Path, encode) -> pathlib.Path:
  """The real default split, each file's text re-encoded by `encode(text) -> bytes`."""
  folder = root / "splits" / "default"
  folder.mkdir(parents=True)
  for name in ("train_tasks.txt", "test_tasks.txt"):
    text = (_sni_dir(shared_dir) / "splits" / "default" / name).read_text(encoding="utf-8")
    (folder / name).write_bytes(encode(text))
  return root


@pytest.mark.parametrize("encode", [
    lambda text: "\ufeff".encode("utf-8") + text.encode("utf-8"),
    lambda text: text.replace("\n", "\r\n").encode("utf-8"),
    lambda text: "\ufeff".encode("utf-8") + text.replace("\n", "\r\n").encode("utf-8"),
    lambda text: text.replace("\n", "\r").encode("utf-8"),
], ids=["bom", "crlf", "bom+crlf", "cr"])
def test_read_split_saved_by_a_windows_editor_reads_the_same(shared_dir, tmp_path, encode):
  """A BOM made the first name '\\ufefftask...': that held-out test task then matched no task and was trained on."""
  expected = sni.read_split(_sni_dir(shared_dir))
  splits = sni.read_split(_copy_split(shared_dir, tmp_path, encode))
  assert splits == expected
  assert splits["test"][0] == expected["test"][0] and records.task_name("sni", splits["test"][0]).isascii()


def test_read_split_that_is_not_utf8_names_the_file_and_line(shared_dir, tmp_path):
  root = _copy_split(shared_dir, tmp_path, lambda text: text.replace("\n", "\ncaf\u00e9\n", 2).encode("latin-1"))
  path = root / "splits" / "default" / "test_tasks.txt"
  with pytest.raises(ValueError) as error:
    sni.read_split(root)
  assert not isinstance(error.value, UnicodeDecodeError)  # a plain ValueError: bench turns it into a usage error
  assert str(error.value).startswith(f"{path}: line 2: not valid UTF-8")
  assert "expected an SNI split file of UTF-8 text, one task name per line" in str(error.value)
  # Behind a BOM and CRLF endings the line is still the right one.
  path.write_bytes(b"\xef\xbb\xbftask1_a\r\ntask2_b\r\ntask3_caf\xe9\r\n")
  with pytest.raises(ValueError, match=r"test_tasks.txt: line 3: not valid UTF-8"):
    sni.read_split(root)


def test_older_format_with_string_definition(tmp_path):
  path = _write(
      tmp_path / "task001_old.json", {
          "Definition": "Copy the input.",
          "Positive Examples": [{
              "input": "a",
              "output": ["a"]
          }],
          "Instances": [{
              "input": "b",
              "output": "b"
          }, {
              "input": "c",
              "output": ["c"]
          }],
      })
  task = sni.read_task(path)
  assert task.definition == "Copy the input."
  assert task.categories == () and task.dataset == "task001_old"
  assert task.demonstrations[0].targets == ("a",)
  assert [(i.id, i.input, i.targets) for i in task.instances()] == [("task001_old-0", "b", ("b",)),
                                                                    ("task001_old-1", "c", ("c",))]


def test_list_definition_is_joined(tmp_path):
  task = sni.read_task(_write(tmp_path / "task002_two.json", _task(Definition=["Part one.", "Part two. "])))
  assert task.definition == "Part one.\n\nPart two."


@pytest.mark.parametrize("name, content, expected", [
    ("task010_badjson.json", b'{"Definition": ["x"], "Instances": [', "invalid JSON"),
    ("task011_bytes.json", b'{"Definition": ["caf\xe9"], "Instances": []}', "not valid UTF-8"),
    ("task012_nodef.json", json.dumps({
        "Instances": [{
            "input": "a",
            "output": ["b"]
        }]
    }).encode(), "'Definition'"),
    ("task013_empty.json", json.dumps(_task(Instances=[])).encode(), "'Instances': empty list"),
    ("task013_blank.json", json.dumps(_task(Instances=[{
        "input": "a",
        "output": [" "]
    }])).encode(), "'Instances': no instance has a non-empty output"),
    ("task014_noinst.json", json.dumps({
        "Definition": ["x"]
    }).encode(), "'Instances'"),
    ("task015_nooutput.json", json.dumps(_task(Instances=[{
        "input": "a",
        "output": ["b"]
    }, {
        "input": "c"
    }])).encode(), "Instances[1]: missing required field 'output'"),
    ("task016_badoutput.json", json.dumps(_task(Instances=[{
        "input": "a",
        "output": [["b"]]
    }])).encode(), "Instances[0].output[0]"),
    ("task017_array.json", b"[1, 2]", "JSON object"),
    ("task018_badexample.json", json.dumps(_task(**{"Positive Examples": [{
        "input": "a"
    }]})).encode(), "Positive Examples[0]: missing required field 'output'"),
    ("task019_optionswithoutanswer.json",
     json.dumps(_task(Instances=[{
         "input": "a",
         "output": ["b"],
         "options": ["c", "d"]
     }])).encode(), "Instances[0].options: none of ['c', 'd'] is a reference output ['b']"),
    ("task021_deep.json", b'{"Definition": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("task020_someoptions.json",
     json.dumps(
         _task(Instances=[{
             "input": "a",
             "output": ["b"],
             "options": ["b", "c"]
         }, {
             "input": "c",
             "output": ["d"]
         }])).encode(), "1 of 2 instances have 'options'"),
])
def test_bad_files_are_skipped_with_the_field(tmp_path, name, content, expected):
  _write(tmp_path / "task001_good.json", _task())
  (tmp_path / name).write_bytes(content)
  results = list(sni.iter_tasks(tmp_path))
  assert [type(r) for r in results] == [records.TaskSource, records.Skipped]
  assert results[1].path == str(tmp_path / name)
  assert expected in results[1].reason
  with pytest.raises(records.SourceError, match=name):
    sni.read_task(tmp_path / name)


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    list(sni.iter_tasks(tmp_path / "does_not_exist"))


def test_instances_with_options_make_a_multiple_choice_task(tmp_path):
  instances = [{
      "id": "x-1",
      "input": "Is 1 odd?",
      "output": ["yes"],
      "options": ["yes", "no"]
  }, {
      "id": "x-2",
      "input": "Is 2 odd?",
      "output": ["no"],
      "options": ["yes", "no"]
  }]
  task = sni.read_task(_write(tmp_path / "task900_mc.json", _task(Instances=instances)))
  assert task.kind == records.MULTIPLE_CHOICE
  assert [(i.targets, i.options) for i in task.instances()] == [(("yes",), ("yes", "no")), (("no",), ("yes", "no"))]
  assert sni.read_task(_write(tmp_path / "task901_gen.json", _task())).kind == records.GENERATION
