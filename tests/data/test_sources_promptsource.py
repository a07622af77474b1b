"""Tests for the PromptSource / P3 per-template reader (real samples in ../shared and files written here)."""

import json
import pathlib

import pytest

from optiml_jax.data import records
from optiml_jax.data.sources import promptsource

END = promptsource.END_OF_TEXT


def _p3_dir(shared_dir: pathlib.Path) -> pathlib.Path:
  return shared_dir / "data" / "p3"


def _write_lines(path: pathlib.Path, lines) -> pathlib.Path:
  path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines), encoding="utf-8")
  return path


def _has_usable_line(path: pathlib.Path) -> bool:
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.strip() and json.loads(line)["completion"].replace(END, "").strip():
      return True
  return False


def test_every_real_template_is_read_or_reported(shared_dir):
  folder = _p3_dir(shared_dir) / "data_per_template"
  files = sorted(folder.glob("*.jsonl"))
  assert len(files) == 279
  results = list(promptsource.iter_tasks(_p3_dir(shared_dir)))
  assert [r.path for r in results] == [str(p) for p in files]
  for result, path in zip(results, files):
    # The sample's empty files and the trec templates whose completions are all empty are the only skips.
    if _has_usable_line(path):
      assert isinstance(result, records.TaskSource), result
      assert result.benchmark == "promptsource" and result.format == "p3" and result.template
      assert result.name == records.task_name("promptsource", path.stem)
      assert next(result.instances()).targets[0]
    else:
      assert isinstance(result, records.Skipped) and result.reason.startswith("no instances")
  tasks = [r for r in results if isinstance(r, records.TaskSource)]
  assert len(tasks) > 250


@pytest.mark.parametrize("stem, dataset, template", [
    ("adversarial_qa_dbidaf_based_on", "adversarial_qa/dbidaf", "based_on"),
    ("cnn_dailymail_3_0_0_2_or_3_sentences", "cnn_dailymail/3.0.0", "2_or_3_sentences"),
    ("wiki_hop_original_choose_best_object_affirmative_1", "wiki_hop/original", "choose_best_object_affirmative_1"),
    ("wiki_qa_Is_This_True_", "wiki_qa", "Is_This_True_"),
    ("wiki_bio_who", "wiki_bio", "who"),
    ("kilt_tasks_hotpotqa_final_exam", "kilt_tasks/hotpotqa", "final_exam"),
    ("social_i_qa_Generate_answer", "social_i_qa", "Generate_answer"),
    ("paws_labeled_final_Concatenation_no_label", "paws/labeled_final", "Concatenation_no_label"),
    ("duorc_ParaphraseRC_answer_question", "duorc/ParaphraseRC", "answer_question"),
    ("glue_mrpc_same_thing", "glue/mrpc", "same_thing"),
    ("common_gen_Put_together", "common_gen", "Put_together"),
    ("commonsense_qa_answer_to_question", "commonsense_qa", "answer_to_question"),
    ("trec_fine_grained_ABBR_context_first", "trec", "fine_grained_ABBR_context_first"),
    ("yelp_review_full_on_a_scale", "yelp_review_full", "on_a_scale"),
])
def test_real_names_split_at_the_dataset(shared_dir, stem, dataset, template):
  path = _p3_dir(shared_dir) / "data_per_template" / f"{stem}.jsonl"
  assert path.is_file()
  assert promptsource.split_template_name(stem) == (dataset, template)
  if _has_usable_line(path):
    task = promptsource.read_task(path)
    assert (task.dataset, task.template) == (dataset, template)


@pytest.mark.parametrize(
    "stem, siblings, expected",
    [
        ("super_glue_wsc.fixed_GPT_3_Style", (), ("super_glue/wsc.fixed", "GPT_3_Style")),
        ("ai2_arc_ARC_Challenge_pick_the_most_correct_option", (),
         ("ai2_arc/ARC-Challenge", "pick_the_most_correct_option")),
        ("glue_sst2_positive_negative", (), ("glue/sst2", "positive_negative")),  # Known dataset, unknown subset.
        ("squad_v2_Questions_with_Context", (), ("squad_v2", "Questions_with_Context")),
        # Unknown datasets: the "_" words that every file starting with the same word shares.
        ("my_data_set_ask", ("my_data_set_ask", "my_data_set_tell_me", "adversarial_qa_dbert_x"),
         ("my_data_set", "ask")),
        ("my_data_set_ask", ("my_data_set", "my_data_set_ask"), ("my_data", "set_ask")),  # Templates stay non-empty.
        ("my_data_set_ask", ("my_data_set_ask", "my_other_x"), ("my", "data_set_ask")),  # Two datasets share "my".
        ("solo_template_name", (), ("solo", "template_name")),
        ("single", (), ("single", "")),
    ])
def test_name_heuristics(stem, siblings, expected):
  assert promptsource.split_template_name(stem, siblings) == expected


def test_instances_and_streaming(shared_dir):
  path = _p3_dir(shared_dir) / "data_per_template" / "ag_news_classify_with_choices.jsonl"
  raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
  task = promptsource.read_task(path)
  assert (task.dataset, task.template, task.kind, task.definition) == ("ag_news", "classify_with_choices",
                                                                       records.GENERATION, "")
  instances = list(task.instances())
  assert instances == list(task.open_instances())
  assert len(instances) == len(raw)
  assert instances[0].id == "ag_news_classify_with_choices-1"
  assert instances[0].input == raw[0]["prompt"].rstrip()
  assert instances[0].targets == (raw[0]["completion"][:-len(END)].strip(),)
  assert not any(END in i.targets[0] for i in instances)


def test_empty_completions_are_dropped(tmp_path):
  path = _write_lines(tmp_path / "ag_news_toy.jsonl", [
      {
          "prompt": "a\n",
          "completion": END
      },
      {
          "prompt": "b",
          "completion": " World" + END
      },
  ])
  task = promptsource.read_task(path)
  assert [(i.id, i.input, i.targets) for i in task.instances()] == [("ag_news_toy-2", "b", ("World",))]


def test_p3_columns_with_answer_choices(tmp_path):
  path = _write_lines(tmp_path / "super_glue_rte_does_it_follow.jsonl", [
      {
          "inputs_pretokenized": "Does it follow? ",
          "targets_pretokenized": "yes",
          "answer_choices": ["yes", "no"]
      },
  ])
  task = promptsource.read_task(path)
  assert (task.dataset, task.template, task.kind) == ("super_glue/rte", "does_it_follow", records.MULTIPLE_CHOICE)
  assert next(task.instances()).options == ("yes", "no")


def _p3_line(inputs: str, target: str, choices=None) -> dict:
  """A line of bigscience/P3's columns (answer_choices only for templates that have them)."""
  line = {"inputs_pretokenized": inputs, "targets_pretokenized": target}
  if choices is not None:
    line["answer_choices"] = choices
  return line


def test_answer_choices_are_kept_with_a_stripped_completion(tmp_path):
  path = _write_lines(tmp_path / "super_glue_cb_can_we_infer.jsonl", [
      _p3_line("Can we infer? ", " Yes\n", ["Yes", "No", "Maybe"]), {
          "inputs_pretokenized": "Skipped: no reference.",
          "targets_pretokenized": ""
      },
      _p3_line("Can we infer again?", "Maybe", [" Yes", " No", " Maybe"])
  ])
  task = promptsource.read_task(path)
  assert task.kind == records.MULTIPLE_CHOICE
  assert [(i.targets, i.options) for i in task.instances()] == [(("Yes",), ("Yes", "No", "Maybe")),
                                                                (("Maybe",), ("Yes", "No", "Maybe"))]


@pytest.mark.parametrize("lines, expected", [
    ([_p3_line("a", "yes", ["yes", "no"]), _p3_line("b", "no")
     ], "line 2: no 'answer_choices', but the task is multiple choice (line 1 has 'answer_choices')"),
    ([_p3_line("a", "yes", ["yes", "no"]), _p3_line("b", "no", [])], "line 2: no 'answer_choices'"),
    ([{
        "inputs_pretokenized": "a",
        "targets_pretokenized": ""
    },
      _p3_line("b", "sports"),
      _p3_line("c", "world", ["world", "sports"])
     ], "line 3: field 'answer_choices' in a generation task (line 2 has no 'answer_choices')"),
    ([_p3_line("a", "yes", ["yes", "no"]), _p3_line("b", "perhaps", ["yes", "no"])
     ], "line 2: field 'answer_choices': none of ['yes', 'no'] is a reference output ['perhaps']"),
])
def test_inconsistent_answer_choices_are_bad_lines(tmp_path, lines, expected):
  """Such templates used to be read as multiple choice: the evaluation then dropped the lines without choices and
  scored 0 where the completion was no choice. Now reading the task stops at the line, naming it, so the catalog
  build skips the template (as the SNI reader does with a task whose options are partial or miss the answer)."""
  path = _write_lines(tmp_path / "super_glue_rte_mixed.jsonl", lines)
  with pytest.raises(records.SourceError) as error:
    list(promptsource.read_task(path).instances())
  assert str(error.value).startswith(f"{path}: ") and expected in error.value.reason


def test_a_first_line_whose_completion_is_no_choice_is_skipped(tmp_path):
  _write_lines(tmp_path / "super_glue_rte_bad.jsonl", [_p3_line("a", "maybe", ["yes", "no"])])
  (skipped,) = promptsource.iter_tasks(tmp_path)
  assert isinstance(skipped, records.Skipped) and skipped.path == str(tmp_path / "super_glue_rte_bad.jsonl")
  assert skipped.reason == "line 1: field 'answer_choices': none of ['yes', 'no'] is a reference output ['maybe']"


def test_real_templates_read_as_before(shared_dir):
  """The real P3 sample has no answer_choices: the consistency checks leave every template as it was."""
  results = list(promptsource.iter_tasks(_p3_dir(shared_dir)))
  tasks = [r for r in results if isinstance(r, records.TaskSource)]
  assert (len(results), len(tasks)) == (279, 261)
  assert {t.kind for t in tasks} == {records.GENERATION}
  assert sum(1 for t in tasks for _ in t.instances()) == 16_424  # every line streams, none is a bad line


@pytest.mark.parametrize("lines, expected", [
    ([], "no instances: the file is empty"),
    (["", "  "], "no instances: the file is empty"),
    ([{
        "prompt": "a",
        "completion": END
    }], "every completion is empty"),
    (['{"prompt": "a", '], "line 1: invalid JSON"),
    ([{
        "prompt": "a"
    }], "line 1: missing required field 'completion'"),
    ([{
        "question": "a"
    }], "line 1: expected fields 'prompt' and 'completion'"),
    ([{
        "prompt": "a",
        "completion": ["x"]
    }], "line 1: field 'completion': expected a string"),
    (["[" * 100_000 + "]" * 100_000], "line 1: invalid JSON (nested too deeply to parse"),
])
def test_bad_files_are_skipped(tmp_path, lines, expected):
  _write_lines(tmp_path / "ag_news_good.jsonl", [{"prompt": "p", "completion": "c"}])
  _write_lines(tmp_path / "ag_news_zbad.jsonl", lines)
  results = list(promptsource.iter_tasks(tmp_path))
  assert isinstance(results[0], records.TaskSource)
  assert isinstance(results[1], records.Skipped) and expected in results[1].reason, results[1]


def test_undecodable_bytes_are_skipped(tmp_path):
  (tmp_path / "ag_news_bytes.jsonl").write_bytes(b'{"prompt": "caf\xe9", "completion": "x"}\n')
  (skipped,) = promptsource.iter_tasks(tmp_path)
  assert isinstance(skipped, records.Skipped) and "line 1: not valid UTF-8" in skipped.reason


def test_bad_later_line_is_reported_while_streaming(tmp_path):
  path = _write_lines(tmp_path / "ag_news_lazy.jsonl", [{
      "prompt": "a",
      "completion": "b"
  }, "", "{not json", {
      "prompt": "c",
      "completion": "d"
  }])
  task = promptsource.read_task(path)  # The first line is valid: the file is accepted.
  stream = task.instances()
  assert next(stream).targets == ("b",)
  with pytest.raises(records.SourceError, match=r"ag_news_lazy.jsonl: line 3: invalid JSON"):
    next(stream)


# ---------------------------------------------------------------------------------------------------------
# promptsource's templates.yaml: metadata.original_task.


def _template_yaml(dataset, subset, templates):
  """A templates.yaml as promptsource writes it: `!Template` objects with `!TemplateMetadata`."""
  lines = [f"dataset: {dataset}"] + ([f"subset: {subset}"] if subset else []) + ["templates:"]
  for i, (name, original) in enumerate(templates):
    uid = f"{i:08d}-0000-4000-8000-{abs(hash(name)) % 10**12:012d}"
    lines += [
        f"  {uid}: !Template", "    answer_choices: No ||| Yes", f"    id: {uid}",
        "    jinja: '{{sentence1}} ||| {{ answer_choices[label] }}'", "    metadata: !TemplateMetadata",
        "      choices_in_prompt: false", "      languages:", "      - en", "      metrics:", "      - Accuracy"
    ]
    if original is not None:
      lines.append(f"      original_task: {'true' if original else 'false'}")
    lines += [f"    name: {name}", "    reference: ''"]
  return "\n".join(lines) + "\n"


def _write_promptsource(root: pathlib.Path, entries) -> pathlib.Path:
  """`root/promptsource/templates/<dataset>[/<subset>]/templates.yaml` for each (dataset, subset, templates)."""
  for dataset, subset, templates in entries:
    folder = root / "promptsource" / "templates" / dataset / (subset or "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "templates.yaml").write_text(_template_yaml(dataset, subset, templates), encoding="utf-8")
  return root


# Template names and flags as promptsource has them for these datasets of the P3 sample.
_PROMPTSOURCE = [
    ("glue", "mrpc", [("want to know", True), ("paraphrase", True), ("equivalent", True), ("replace", True),
                      ("same thing", True), ("generate_paraphrase", False), ("generate_sentence", False)]),
    ("wiki_qa", None, [("Is This True?", True), ("Jeopardy style", False), ("Generate Question from Topic", False),
                       ("found_on_google", None)]),
]


def test_templates_yaml_is_read_safely(tmp_path):
  root = _write_promptsource(tmp_path, _PROMPTSOURCE)
  flags = promptsource.read_templates_file(root / "promptsource/templates/glue/mrpc/templates.yaml")
  assert flags["glue_mrpc_generate_paraphrase"] is False and flags["glue_mrpc_want_to_know"] is True
  metadata = promptsource.read_metadata(root)
  assert metadata.files == 2 and not metadata.skipped
  assert metadata.not_original() == [
      "glue_mrpc_generate_paraphrase", "glue_mrpc_generate_sentence", "wiki_qa_generate_question_from_topic",
      "wiki_qa_jeopardy_style"
  ]
  assert metadata.flags["wiki_qa_found_on_google"] is None  # no metadata: counts as original
  # A tag other than promptsource's two is refused (no arbitrary objects), as is a malformed flag.
  evil = tmp_path / "other" / "x" / "templates.yaml"
  evil.parent.mkdir(parents=True)
  evil.write_text("dataset: x\ntemplates:\n  a: !!python/object/apply:os.system ['echo hacked']\n", encoding="utf-8")
  with pytest.raises(records.SourceError, match="not a promptsource templates file"):
    promptsource.read_templates_file(evil)
  bad = tmp_path / "other" / "y" / "templates.yaml"
  bad.parent.mkdir(parents=True)
  bad.write_text(
      _template_yaml("y", None, [("t", True)]).replace("original_task: true", "original_task: maybe"), encoding="utf-8")
  with pytest.raises(records.SourceError, match=r"\(t\): metadata.original_task must be true, false or absent"):
    promptsource.read_templates_file(bad)
  (tmp_path / "other" / "z").mkdir()
  (tmp_path / "other" / "z" / "templates.yaml").write_text(_template_yaml("z", None, [("t", False)]), encoding="utf-8")
  mixed = promptsource.read_metadata(tmp_path / "other")  # bad files are reported, the good one read
  assert sorted(pathlib.Path(s.path).parent.name for s in mixed.skipped) == ["x", "y"]
  assert (mixed.files, mixed.not_original()) == (1, ["z_t"])
  with pytest.raises(FileNotFoundError, match="promptsource folder not found"):
    promptsource.read_metadata(tmp_path / "other" / "x" / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no templates.yaml found"):
    promptsource.read_metadata(tmp_path / "empty")


def test_templates_yaml_nested_too_deeply_is_reported_not_raised(tmp_path):
  deep = tmp_path / "deep" / "templates.yaml"
  deep.parent.mkdir()
  deep.write_text("dataset: deep\ntemplates: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
  (tmp_path / "z").mkdir()
  (tmp_path / "z" / "templates.yaml").write_text(_template_yaml("z", None, [("t", False)]), encoding="utf-8")
  metadata = promptsource.read_metadata(tmp_path)  # no RecursionError: the file is reported, the other one read
  assert [(s.path, s.reason.split(":")[0]) for s in metadata.skipped] == [(str(deep),
                                                                           "not a promptsource templates file")]
  assert "RecursionError" in metadata.skipped[0].reason and metadata.not_original() == ["z_t"]


def test_original_task_marks_the_real_p3_templates(shared_dir, tmp_path):
  metadata = promptsource.read_metadata(_write_promptsource(tmp_path, _PROMPTSOURCE))
  results = list(promptsource.iter_tasks(_p3_dir(shared_dir), metadata=metadata))
  tasks = {r.name: r for r in results if isinstance(r, records.TaskSource)}
  not_original = sorted(n for n, t in tasks.items() if not t.original_task)
  assert not_original == [
      "promptsource:glue_mrpc_generate_paraphrase", "promptsource:wiki_qa_Generate_Question_from_Topic",
      "promptsource:wiki_qa_Jeopardy_style"
  ]
  assert tasks["promptsource:wiki_qa_Is_This_True_"].original_task  # "Is This True?" in promptsource
  assert metadata.matched == 6 + 4  # the sample's glue/mrpc files, and its wiki_qa files that have an entry
  assert metadata.unmatched == len(results) - metadata.matched
  # Without metadata every template counts as an original task (P3's exported files carry no such field).
  assert all(r.original_task for r in promptsource.iter_tasks(_p3_dir(shared_dir)) if isinstance(r, records.TaskSource))
