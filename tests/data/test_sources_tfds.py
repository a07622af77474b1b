"""Tests of the TFDS-backed FLAN/T5 source and its templates, on `tfds.testing.mock_data` (no downloads)."""

import functools
import re
import tempfile

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from optiml_jax.data import records
from optiml_jax.data import sources as all_sources
from optiml_jax.data.sources import flan_templates
from optiml_jax.data.sources import tfds as tfds_source

# Mock data is random: these datasets need values it cannot produce (COPA's question is "cause" or
# "effect"; ARC's choice texts and labels have equal lengths). They are tested on hand-written examples.
_NEEDS_REAL_VALUES = {"super_glue/copa:1.0.2", "ai2_arc/ARC-Easy:1.0.0"}
_MOCKABLE = [d for d in flan_templates.DATASETS if d.tfds_name not in _NEEDS_REAL_VALUES]

# SNI category names the templates may map onto (a subset of SNI's 76 task types).
_SNI_CATEGORIES = {
    "Textual Entailment",
    "Question Answering",
    "Cause Effect Classification",
    "Sentiment Analysis",
    "Text Categorization",
    "Coreference Resolution",
    "Commonsense Classification",
    "Text Completion",
    "Text Matching",
    "Summarization",
    "Translation",
    "Grammar Error Detection",
    "Answer Verification",
    "Word Semantics",
}


@pytest.fixture
def mock_tfds(tmp_path):
  """Random TFDS data (5 examples per split; integer features below 4) and an empty TFDS data folder."""
  with tfds.testing.mock_data(num_examples=5, max_value=4, policy=tfds.testing.MockPolicy.USE_CODE):
    yield str(tmp_path)


def _spec_id(spec: flan_templates.DatasetTemplates) -> str:
  return f"{spec.benchmark}:{spec.tfds_name}"


def test_registry_covers_benchmarks_categories_and_template_counts():
  flan = flan_templates.datasets([flan_templates.FLAN])
  t5 = flan_templates.datasets([flan_templates.T5])
  assert len(flan) >= 12 and len(t5) >= 5
  assert sum(len(d.templates) >= 8 for d in flan) >= 4  # a handful with FLAN's ~8 prompts
  assert all(len(d.templates) >= 4 for d in flan)
  assert all(len(d.templates) == 1 for d in t5)
  assert {d.category for d in flan_templates.DATASETS} <= _SNI_CATEGORIES
  assert len({d.category for d in flan}) >= 8
  keys = [(d.tfds_name, d.benchmark) for d in flan_templates.DATASETS]
  assert len(keys) == len(set(keys))
  for spec in flan_templates.DATASETS:
    names = [t.name for t in spec.templates]
    assert len(names) == len(set(names)), spec.tfds_name
    assert len({t.inputs for t in spec.templates}) == len(names), f"{spec.tfds_name}: duplicate template"
  with pytest.raises(ValueError, match="unknown benchmark"):
    flan_templates.datasets(["sni"])


def test_label_names_match_the_tfds_builders():
  """Each `labels` tuple is the builder's ClassLabel names in id order, and every name/version exists."""
  for spec in flan_templates.DATASETS:
    features = tfds.builder(spec.tfds_name).info.features
    if spec.labels:
      assert features[spec.label_feature].names == list(spec.labels), spec.tfds_name


@pytest.mark.parametrize("spec", _MOCKABLE, ids=_spec_id)
def test_every_template_formats_mock_examples(spec, mock_tfds):
  sources = list(tfds_source.task_sources(spec, "train", data_dir=mock_tfds))
  assert [s.template for s in sources] == [t.name for t in spec.templates]
  rendered_inputs = set()
  for source, template in zip(sources, spec.templates):
    assert source.format == "tfds" and source.benchmark == spec.benchmark
    assert source.dataset == spec.dataset and source.categories == (spec.category,)
    instances = list(source.instances())
    assert len(instances) == 5, source.name
    for instance in instances:
      assert instance.input.strip() and not re.search(r"\{\w+\}", instance.input), instance
      assert instance.targets and all(t.strip() for t in instance.targets), instance
      if template.inverted or spec.kind == records.GENERATION:
        assert source.kind == records.GENERATION and instance.options == ()
      else:
        assert source.kind == records.MULTIPLE_CHOICE
        assert len(instance.options) >= 2 and instance.targets[0] in instance.options
        if "{options}" in template.inputs:
          assert all(f"- {option}" in instance.input for option in instance.options)
    rendered_inputs.add(instances[0].input)
  assert len(rendered_inputs) == len(spec.templates)  # templates differ on the same example


def test_squad_keeps_every_distinct_reference():
  spec = flan_templates.lookup("squad/v1.1", flan_templates.FLAN)
  example = {
      "id": b"q1",
      "title": b"Rivers",
      "context": b"The Nile flows north into the sea.",
      "question": b"Which way does the Nile flow?",
      "answers": {
          "text": np.array([b"north", b"north ", b"northward"], dtype=object),
          "answer_start": np.array([14, 14, 14], dtype=np.int32)
      }
  }
  formatted = flan_templates.format_example(spec, spec.templates[0], example)
  assert formatted.targets == ("north", "northward") and formatted.options == ()
  assert "Which way does the Nile flow?" in formatted.inputs
  inverted = spec.template("inverted_0")
  formatted = flan_templates.format_example(spec, inverted, example)
  assert formatted.targets == ("Which way does the Nile flow?",) and '"north"' in formatted.inputs


def test_copa_and_arc_on_hand_written_examples():
  copa = flan_templates.lookup("super_glue/copa", flan_templates.FLAN)
  example = {
      "premise": b"The glass fell off the table.",
      "question": b"effect",
      "choice1": b"It shattered.",
      "choice2": b"It was refilled.",
      "label": np.int64(0),
      "idx": 3
  }
  for template in copa.templates:
    formatted = flan_templates.format_example(copa, template, example)
    assert formatted.targets == ("It shattered.",)
    assert formatted.options == ("It shattered.", "It was refilled.")
  assert "The glass fell off the table so" in flan_templates.format_example(copa, copa.template("template_5"),
                                                                            example).inputs
  cause = dict(example, question=b"cause")
  assert "because" in flan_templates.format_example(copa, copa.template("template_2"), cause).inputs

  arc = flan_templates.lookup("ai2_arc/ARC-Easy", flan_templates.FLAN)
  example = {
      "id": b"x",
      "question": b"Which is a liquid at room temperature?",
      "answerKey": np.int64(3),
      "choices": {
          "text": np.array([b"iron", b"salt", b"sand", b"water"], dtype=object),
          "label": np.array([0, 1, 2, 3])
      }
  }
  formatted = flan_templates.format_example(arc, arc.templates[0], example)
  assert formatted.targets == ("water",) and formatted.options == ("iron", "salt", "sand", "water")
  # The answer key is matched against the choice labels, not taken as a position.
  shifted = dict(example, choices={"text": example["choices"]["text"], "label": np.array([1, 2, 3, 0])})
  assert flan_templates.format_example(arc, arc.templates[0], shifted).targets == ("sand",)


def test_unlabelled_and_empty_examples_are_skipped():
  rte = flan_templates.lookup("glue/rte", flan_templates.FLAN)
  example = {"sentence1": b"A.", "sentence2": b"B.", "label": np.int64(-1), "idx": np.int32(0)}
  assert flan_templates.format_example(rte, rte.templates[0], example) is None
  stsb = flan_templates.lookup("glue/stsb", flan_templates.T5)
  assert flan_templates.format_example(stsb, stsb.templates[0], dict(example, label=np.float32(-1))) is None
  formatted = flan_templates.format_example(stsb, stsb.templates[0], dict(example, label=np.float32(3.13)))
  assert formatted.targets == ("3.2",)
  xsum = flan_templates.lookup("xsum", flan_templates.FLAN)
  assert flan_templates.format_example(xsum, xsum.templates[0], {"document": b"D.", "summary": b" "}) is None


def test_bad_examples_name_the_dataset_template_and_field():
  copa = flan_templates.lookup("super_glue/copa", flan_templates.FLAN)
  example = {"premise": b"P.", "question": b"reason", "choice1": b"a", "choice2": b"b", "label": np.int64(1)}
  with pytest.raises(records.SourceError, match=r"super_glue/copa:1.0.2.*template_0.*'question'"):
    flan_templates.format_example(copa, copa.templates[0], example)
  rte = flan_templates.lookup("glue/rte", flan_templates.FLAN)
  with pytest.raises(records.SourceError, match=r"glue/rte:2.0.0.*'sentence2'"):
    flan_templates.format_example(rte, rte.templates[0], {"sentence1": b"A.", "label": np.int64(0)})
  with pytest.raises(records.SourceError, match=r"label 7 outside \[0, 2\)"):
    flan_templates.format_example(rte, rte.templates[0], {"sentence1": b"A.", "sentence2": b"B.", "label": np.int64(7)})
  broken = flan_templates.Template(name="broken", inputs="{premise} {nonexistent}")
  with pytest.raises(records.SourceError, match="'nonexistent'"):
    flan_templates.format_example(rte, broken, {"sentence1": b"A.", "sentence2": b"B.", "label": 0})


def test_max_examples_caps_the_stream_and_ids_follow_source_order(mock_tfds):
  source = next(tfds_source.task_sources("glue/rte", data_dir=mock_tfds, max_examples=2))
  assert [i.id for i in source.instances()] == ["train-0", "train-1"]
  # Streams are lazy and repeatable.
  assert list(source.instances()) == list(source.instances())
  with pytest.raises(ValueError, match="max_examples"):
    next(tfds_source.task_sources("glue/rte", max_examples=0))


def test_paths_names_and_reopen(mock_tfds):
  sources = [s for s in tfds_source.iter_tasks(mock_tfds, skip_unprepared=False)]
  assert all(isinstance(s, records.TaskSource) for s in sources)
  assert len({s.name for s in sources}) == len(sources)
  assert sum(len(d.templates) for d in flan_templates.DATASETS) == len(sources)
  rte = next(s for s in sources if s.name == "flan:glue_rte_template_3")
  assert rte.path == f"glue/rte:2.0.0@train#template_3|data_dir={mock_tfds}"  # self-contained for reopen
  assert {s.name for s in sources if s.dataset == "cnn_dailymail"
         } == {"t5:cnn_dailymail", *(f"flan:cnn_dailymail_template_{i}" for i in range(6))}
  for source in (rte, next(s for s in sources if s.name == "t5:glue_cola")):
    again = tfds_source.reopen(source.path, source.benchmark, data_dir=mock_tfds)
    assert again == source
    assert list(again.instances()) == list(source.instances())
    # What the registry and the evaluator call: the path alone carries the data folder.
    assert all_sources.reopen("tfds", source.path, source.benchmark) == source
  assert tfds_source.parse_path("glue/rte:2.0.0#template_3") == ("glue/rte:2.0.0", "train", "template_3")
  assert tfds_source.parse_path("glue/rte:2.0.0@validation[:10]#t5") == ("glue/rte:2.0.0", "validation[:10]", "t5")
  validation = tfds_source.reopen("glue/rte:2.0.0@validation#template_0", "flan", data_dir=mock_tfds)
  assert next(validation.instances()).id == "validation-0"


@pytest.mark.parametrize("path, benchmark, message", [
    ("glue/rte:2.0.0", "flan", "expected"),
    ("glue/rte@train#template_0", "flan", "no version"),
    ("glue/rte:2.0.0#template_99", "flan", "no template 'template_99'"),
    ("glue/rte:2.0.0#t5", "t5", "no FLAN/T5 templates"),
])
def test_reopen_rejects_bad_paths(path, benchmark, message):
  with pytest.raises(records.SourceError, match=re.escape(message)) as error:
    tfds_source.reopen(path, benchmark)
  assert error.value.path == path


def test_unprepared_datasets_are_skipped_without_download(tmp_path, monkeypatch):
  temporary = tmp_path / "tmp"  # where TFDS's builder of an unprepared dataset would leave a folder each
  temporary.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temporary))
  results = list(tfds_source.iter_tasks(str(tmp_path), benchmarks=["t5"]))
  assert not list(temporary.iterdir())
  assert all(isinstance(r, records.Skipped) for r in results)
  assert [r.path for r in results] == [d.tfds_name for d in flan_templates.datasets(["t5"])]
  assert all("not prepared" in r.reason for r in results)
  source = next(tfds_source.task_sources("glue/cola", data_dir=str(tmp_path)))
  with pytest.raises(records.SourceError, match="glue/cola:2.0.0.*not prepared.*tfds build glue/cola"):
    next(source.instances())
  with pytest.raises(KeyError, match="no FLAN/T5 templates"):
    next(tfds_source.task_sources("not_a_dataset"))


def test_apply_template_drops_unlabelled_and_caps():
  rte = flan_templates.prompts(flan_templates.lookup("glue/rte", flan_templates.FLAN))[1]
  dataset = tf.data.Dataset.from_tensor_slices({
      "sentence1": ["It rained all day.", "Unlabelled.", "The shop is closed.", "Third."],
      "sentence2": ["The ground got wet.", "Unknown.", "The shop is open.", "Fourth."],
      "label": np.array([0, -1, 1, 0], dtype=np.int64),
      "idx": np.arange(4, dtype=np.int32)
  })
  out = list(tfds_source.apply_template(dataset, rte, max_examples=2, with_options=True).as_numpy_iterator())
  assert [ex["targets_pretokenized"] for ex in out] == [b"yes", b"no"]
  assert out[0]["inputs"] == out[0]["inputs_pretokenized"]
  assert out[0]["inputs"].decode().startswith("Read this text:\nIt rained all day.")
  assert list(out[1]["options"]) == [b"yes", b"no"]
  squad = flan_templates.prompts(flan_templates.lookup("squad/v1.1", flan_templates.FLAN))[0]
  nested = tf.data.Dataset.from_tensors({
      "id": "q",
      "title": "T",
      "context": "C.",
      "question": "Q?",
      "answers": {
          "text": ["a", "b"],
          "answer_start": np.array([0, 1], dtype=np.int32)
      }
  })
  out = list(tfds_source.apply_template(nested, squad, with_options=True).as_numpy_iterator())
  assert out[0]["targets"] == b"a" and out[0]["options"].shape == (0,)


def test_seqio_task_over_tfds_data_source_matches_the_task_source(mock_tfds):
  spec = flan_templates.lookup("super_glue/boolq", flan_templates.FLAN)
  prompt = flan_templates.prompts(spec)[2]
  source = tfds_source.data_source(spec.tfds_name, splits=["train", "validation"], data_dir=mock_tfds)
  assert isinstance(source, seqio.TfdsDataSource)
  vocabulary = seqio.ByteVocabulary()
  name = "optiml_test_flan_boolq_template_2"
  seqio.TaskRegistry.add(
      name, source=source, output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)
      }, preprocessors=[
          functools.partial(tfds_source.apply_template, prompt=prompt, max_examples=3), seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos
      ])
  try:
    examples = list(
        seqio.get_mixture_or_task(name).get_dataset(
            # Mocked builders have no split sizes, which seqio's in-memory caching check reads.
            sequence_length=None,
            split="train",
            shuffle=False,
            try_in_mem_cache=False).as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  instances = list(tfds_source.task_source(prompt, data_dir=mock_tfds, max_examples=3).instances())
  assert len(examples) == len(instances) == 3
  for example, instance in zip(examples, instances):
    assert example["inputs_pretokenized"].decode() == instance.input
    assert example["targets_pretokenized"].decode() == instance.targets[0]
    assert vocabulary.decode(example["targets"].tolist()) == instance.targets[0]
    assert example["targets"][-1] == vocabulary.eos_id
  with pytest.raises(ValueError, match="needs a version"):
    tfds_source.data_source("glue/rte")


# ---------------------------------------------------------------------------------------------------------------
# FLAN's own templates, read as data from a checkout of google-research/FLAN (flan/templates.py).

# The layout of FLAN's file: a licence header, a docstring, then `PATTERNS = {key: [(inputs, targets), ...]}`.
# The statement after PATTERNS would fail if the file were run: reading it must never execute it.
_FLAN_TEMPLATES_PY = '''# Copyright 2021 The FLAN Authors.
"""Templates for FLAN."""

# pylint: disable=line-too-long

PATTERNS = {
    "rte": [
        ("{premise}\\n\\nBased on the paragraph above can we conclude that \\"{hypothesis}\\"?\\n\\n{options_}",
         "{answer}"),
        ("{premise}\\nCan we infer the following?\\n{hypothesis}\\n\\n{options_}", "{answer}"),
        ("Generate a context and a hypothesis.", "Context: {premise}\\n\\nHypothesis: {hypothesis}"),
    ],
    "bool_q": [
        ("{title}\\n\\n{text}\\n\\nIs it true that {question}?\\n\\n{options_}", "{answer}"),
        ("Text: {text}\\n\\nQuestion: {question}?\\n\\n{options_}", "{answer}"),
    ],
    "cnn_dailymail": [
        ("Write highlights for this article:\\n\\n{text}", "{highlights}"),
        ("Write an article using the following points:\\n\\n{highlights}", "{text}"),
    ],
    "wmt16_translate": [
        ("{sent1}\\n\\nTranslate to {lang2}", "{sent2}"),
        ("{sent2}\\n\\nTranslate to {lang1}", "{sent1}"),
    ],
}

raise RuntimeError("flan/templates.py was executed")
'''


@pytest.fixture
def flan_checkout(tmp_path):
  (tmp_path / "FLAN" / "flan").mkdir(parents=True)
  (tmp_path / "FLAN" / "flan" / "templates.py").write_text(_FLAN_TEMPLATES_PY, encoding="utf-8")
  return tmp_path / "FLAN"


def test_flan_patterns_are_read_as_data(flan_checkout, tmp_path):
  patterns = flan_templates.load_flan_patterns(flan_checkout)  # the checkout, or the file itself
  assert patterns == flan_templates.load_flan_patterns(flan_checkout / "flan" / "templates.py")
  assert list(patterns) == ["rte", "bool_q", "cnn_dailymail", "wmt16_translate"]
  assert patterns["rte"][2] == ("Generate a context and a hypothesis.",
                                "Context: {premise}\n\nHypothesis: {hypothesis}")
  for text, message in [
      ("X = 1\n", "no top-level `PATTERNS"),
      ("PATTERNS = dict(rte=[])\n", r"PATTERNS \(line 1\) is not a literal"),
      ("PATTERNS = {'rte': [('only one',)]}\n", r"PATTERNS\['rte'\]\[0\]: expected an \(inputs, targets\) pair"),
      ("PATTERNS = {'rte': 'x'}\n", r"PATTERNS\['rte'\]: expected a list"),
      ("PATTERNS = {\n", "not a Python file"),
  ]:
    bad = tmp_path / "bad_templates.py"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
      flan_templates.load_flan_patterns(bad)
    assert str(bad) in str(info.value)
  with pytest.raises(FileNotFoundError, match=r"flan/templates.py"):
    flan_templates.load_flan_patterns(tmp_path / "no_checkout")


def test_flan_patterns_replace_our_templates_where_bound(flan_checkout):
  flan = flan_templates.load_flan_datasets(flan_checkout)
  assert flan.path == str(flan_checkout / "flan" / "templates.py")
  rte = flan_templates.lookup("glue/rte", "flan", flan.datasets)
  assert [(t.name, t.inverted) for t in rte.templates] == [("flan_template_0", False), ("flan_template_1", False),
                                                           ("flan_template_2", True)]
  # Bound datasets the file lacks keep our templates; T5 and unbound datasets are untouched.
  assert "anli" in flan.missing_keys
  assert flan_templates.lookup("anli/r1", "flan", flan.datasets) == flan_templates.lookup("anli/r1", "flan")
  assert flan_templates.lookup("glue/cola", "t5", flan.datasets) == flan_templates.lookup("glue/cola", "t5")
  # FLAN read BoolQ from a TFDS build with titles: the template using {title} is left out, and said so.
  boolq = flan_templates.lookup("super_glue/boolq", "flan", flan.datasets)
  assert [t.name for t in boolq.templates] == ["flan_template_1"]
  assert flan.unusable == ("super_glue/boolq:1.0.2: PATTERNS['bool_q'][0] uses ['title'], which "
                           "super_glue/boolq:1.0.2 does not have",)
  assert flan.num_templates == 3 + 1 + 2 + 2

  example = {"sentence1": b"It rained all day.", "sentence2": b"The ground is wet.", "label": np.int64(0)}
  formatted = flan_templates.format_example(rte, rte.templates[0], example)
  assert formatted.inputs == ("It rained all day.\n\nBased on the paragraph above can we conclude that "
                              "\"The ground is wet.\"?\n\nOPTIONS:\n- yes\n- no")  # FLAN's own options block
  assert formatted.targets == ("yes",) and formatted.options == ("yes", "no")
  inverted = flan_templates.format_example(rte, rte.templates[2], example)
  assert inverted.targets == ("Context: It rained all day.\n\nHypothesis: The ground is wet.",)
  assert inverted.options == () and flan_templates.Prompt(rte, rte.templates[2]).kind == records.GENERATION
  cnn = flan_templates.lookup("cnn_dailymail", "flan", flan.datasets)
  article = {"article": b"Long story.", "highlights": b"Short points."}
  assert flan_templates.format_example(cnn, cnn.templates[0], article).targets == ("Short points.",)
  assert flan_templates.format_example(cnn, cnn.templates[1], article).targets == ("Long story.",)
  assert cnn.templates[1].inverted and not cnn.templates[0].inverted
  wmt = flan_templates.lookup("wmt16_translate/de-en", "flan", flan.datasets)
  pair = {"de": b"Guten Morgen", "en": b"Good morning"}
  forward = flan_templates.format_example(wmt, wmt.templates[0], pair)
  assert (forward.inputs, forward.targets) == ("Guten Morgen\n\nTranslate to English", ("Good morning",))
  assert wmt.templates[1].inverted  # English -> German: the other direction


def test_flan_tasks_on_mock_data_reopen_from_their_path(flan_checkout, mock_tfds):
  flan = flan_templates.load_flan_datasets(flan_checkout)
  sources = list(
      tfds_source.iter_tasks(mock_tfds, skip_unprepared=False, datasets=["glue/rte", "glue/cola"], flan=flan,
                             max_examples={"flan": 3}))
  assert [s.name for s in sources] == [
      "flan:glue_rte_flan_template_0", "flan:glue_rte_flan_template_1", "flan:glue_rte_flan_template_2", "t5:glue_cola"
  ]
  assert [s.original_task for s in sources] == [True, True, False, True]
  assert sources[0].path == (f"glue/rte:2.0.0@train#flan_template_0|data_dir={mock_tfds}"
                             f"|flan={flan.path}|max=3")
  assert sources[3].path == f"glue/cola:2.0.0@train#t5|data_dir={mock_tfds}"  # T5's cap is the default
  for source in sources:
    instances = list(source.instances())
    assert len(instances) == (3 if source.benchmark == "flan" else 5)
    again = all_sources.reopen("tfds", source.path, source.benchmark)
    assert again == source and list(again.instances()) == instances
  assert "OPTIONS:\n- yes\n- no" in next(sources[0].instances()).input
  with pytest.raises(KeyError, match=r"no FLAN/T5 dataset 'glue/nope'.*known: .*glue/rte"):
    tfds_source.select(["glue/nope"])
  with pytest.raises(records.SourceError, match="bad option 'colour=red'"):
    tfds_source.reopen("glue/rte:2.0.0#template_0|colour=red", "flan")
