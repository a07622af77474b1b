"""FLAN-style prompt templates for TFDS datasets: the FLAN and T5 benchmarks of OPT-IML Bench.

Where it sits: `optiml_jax.data.sources.tfds` reads TFDS examples (numpy feature dicts) and formats them
with the templates here into `records.Instance`s (one `TaskSource` per dataset and template) or into
seqio "inputs_pretokenized"/"targets_pretokenized" features. The catalog then assigns roles as for any
other source. Nothing here reads files or tokenizes.

A dataset's entry (`DatasetTemplates`) has an `extract` function that flattens one TFDS example into named
strings, the reference answers and (for classification) the answer options; each `Template` is a pair of
`str.format` patterns over those names. Extra names every pattern may use:
  {answer}   the reference being rendered (targets are rendered once per reference);
  {options}  the options as a bulleted list, one "- option" per line.
Options are rendered through the template's target pattern, so the training target is always one of the
options. FLAN datasets carry several templates each (the paper: 8.5 prompts per FLAN task); T5 datasets one,
in T5's own "<task> field: value" text format. The wording is this project's own, written in FLAN's style.

Templates marked `inverted` swap the task's direction (e.g. answer -> question); OPT-IML removes such
templates from evaluation sources, so the catalog uses them for training only (`TaskSource.original_task`).

FLAN's own templates: `load_flan_patterns(path)` reads the `PATTERNS` dict of a checkout of google-research/FLAN
(`flan/templates.py`: `{"rte": [("<inputs pattern>", "<targets pattern>"), ...], ...}`) as data: the file is
parsed with `ast` and only the literal value of its `PATTERNS` assignment is evaluated (`ast.literal_eval`);
nothing of it is imported or run. `with_flan_patterns(patterns)` then gives every FLAN dataset that has a
`FLAN_BINDINGS` entry FLAN's templates instead of ours (named "flan_template_<i>", i = FLAN's own index):
FLAN's field names are renamed to this module's (`FlanBinding.fields`), FLAN's constants written in
(`FlanBinding.constants`, e.g. the languages of a translation pair), and `{options_}` is FLAN's
"OPTIONS:\n- a\n- b". A FLAN template whose target is not the reference (`{answer}` once renamed), e.g. RTE's
"Generate a context and a hypothesis." or CNN/DM's highlights -> article, is marked `inverted`. A template
using a field the TFDS dataset cannot fill (FLAN read some datasets from other TFDS builds) is left out and
reported; a dataset without a binding, or whose key the file lacks, keeps this module's templates.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import string
from typing import Any, Callable, Iterable, Mapping, Sequence

from optiml_jax.data import records

FLAN = "flan"
T5 = "t5"
BENCHMARKS = (FLAN, T5)


@dataclasses.dataclass(frozen=True)
class Fields:
  """One TFDS example flattened for the patterns.

  Attributes:
    text: named strings the patterns refer to (e.g. {"premise": ..., "hypothesis": ...}).
    answers: the reference answers (before the target pattern); `answers[0]` is the training target.
    options: answer candidates for classification datasets (before the target pattern), else empty.
  """

  text: Mapping[str, str]
  answers: tuple[str, ...]
  options: tuple[str, ...] = ()


Extract = Callable[[Mapping[str, Any]], Fields | None]  # TFDS numpy example -> Fields (None: unlabelled)


@dataclasses.dataclass(frozen=True)
class Template:
  """One prompt: `str.format` patterns for the input and the target.

  Attributes:
    name: unique within its dataset ("template_0", ...).
    inputs: pattern of the input text.
    targets: pattern of the target text; "{answer}" for most templates.
    inverted: True when the template swaps the task's direction (answer -> question): training only.
  """

  name: str
  inputs: str
  targets: str = "{answer}"
  inverted: bool = False


@dataclasses.dataclass(frozen=True)
class DatasetTemplates:
  """A TFDS dataset with its benchmark, category and templates.

  Attributes:
    tfds_name: TFDS name with config and version, e.g. "glue/rte:2.0.0" (seqio requires the version).
    benchmark: "flan" or "t5".
    category: the SNI task category it maps onto (e.g. "Textual Entailment").
    kind: `records.MULTIPLE_CHOICE` when `extract` gives options, else `records.GENERATION`.
    extract: TFDS numpy example -> `Fields`, or None for an unlabelled example (e.g. GLUE test, label -1).
    templates: the prompts, at least one.
    labels: the TFDS `ClassLabel` names that `extract` assumes, in id order (checked against the builder
      in the tests); empty when the label is not a `ClassLabel`.
    label_feature: the feature holding that `ClassLabel`.
  """

  tfds_name: str
  benchmark: str
  category: str
  kind: str
  extract: Extract
  templates: tuple[Template, ...]
  labels: tuple[str, ...] = ()
  label_feature: str = "label"

  @property
  def dataset(self) -> str:
    """The TFDS name without version ("glue/rte"): the key that de-duplicates across benchmarks."""
    return self.tfds_name.split(":")[0]

  def template(self, name: str) -> Template:
    for template in self.templates:
      if template.name == name:
        return template
    raise KeyError(f"{self.tfds_name} ({self.benchmark}): no template {name!r}; expected one of "
                   f"{[t.name for t in self.templates]}")


@dataclasses.dataclass(frozen=True)
class Formatted:
  """A formatted example: input text, reference targets (`targets[0]` trains) and options."""

  inputs: str
  targets: tuple[str, ...]
  options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A dataset bound to one of its templates: a formatting function of TFDS examples."""

  dataset: DatasetTemplates
  template: Template

  def __call__(self, example: Mapping[str, Any]) -> Formatted | None:
    return format_example(self.dataset, self.template, example)

  @property
  def kind(self) -> str:
    return records.GENERATION if self.template.inverted else self.dataset.kind


def _unique(items: Iterable[str]) -> tuple[str, ...]:
  return tuple(dict.fromkeys(items))


def format_example(spec: DatasetTemplates, template: Template, example: Mapping[str, Any]) -> Formatted | None:
  """Formats one TFDS numpy example with `template`.

  Returns:
    The formatted example, or None when the example has no label (e.g. GLUE test, label -1) or only
    empty references: such examples are skipped, not errors.

  Raises:
    records.SourceError: the example lacks a feature or holds a value the dataset cannot have.
  """
  try:
    fields = spec.extract(example)
  except (KeyError, IndexError, ValueError, TypeError) as e:
    raise records.SourceError(spec.tfds_name,
                              f"cannot read example for template {template.name!r}: {type(e).__name__}: {e}") from e
  if fields is None:
    return None
  answers = tuple(a for a in fields.answers if a)
  if not answers:
    return None
  values = dict(fields.text)
  values["options"] = "\n".join(f"- {option}" for option in fields.options)
  values.setdefault("options_", "OPTIONS:\n" + values["options"])  # FLAN's rendering (flan/preprocessors.py)
  try:
    inputs = template.inputs.format(answer=answers[0], **values)
    targets = _unique(template.targets.format(answer=a, **values) for a in answers)
    options = () if template.inverted else _unique(template.targets.format(answer=o, **values) for o in fields.options)
  except KeyError as e:
    raise records.SourceError(
        spec.tfds_name, f"template {template.name!r} uses field {e} that the dataset's fields "
        f"{sorted(values) + ['answer']} do not have") from e
  return Formatted(inputs=inputs, targets=targets, options=options)


# ---------------------------------------------------------------------------------------------------------
# Reading TFDS numpy values.


def _text(value: Any) -> str:
  """A TFDS string feature (bytes from `tfds.as_numpy`) as stripped text."""
  if isinstance(value, bytes):
    return value.decode("utf-8").strip()
  if isinstance(value, str):
    return value.strip()
  raise TypeError(f"expected a string feature, got {type(value).__name__}")


def _texts(value: Any) -> tuple[str, ...]:
  """A TFDS `Sequence(Text)` feature as a tuple of stripped texts."""
  if isinstance(value, (bytes, str)):
    raise TypeError("expected a sequence of strings, got a single string")
  return tuple(_text(v) for v in value)


def _label(example: Mapping[str, Any], num_classes: int, feature: str = "label") -> int | None:
  """The integer label in [0, num_classes), or None for an unlabelled example (-1)."""
  label = int(example[feature])
  if label == -1:
    return None
  if not 0 <= label < num_classes:
    raise ValueError(f"feature {feature!r}: label {label} outside [0, {num_classes})")
  return label


def _classify(answer_names: Sequence[str], **text_features: str) -> Extract:
  """`extract` for a classification dataset: text features renamed, label id -> answer text.

  Args:
    answer_names: the answer text of each label id, in id order (also the options, in that order).
    **text_features: pattern name -> TFDS feature name.
  """
  answers = tuple(answer_names)

  def extract(example: Mapping[str, Any]) -> Fields | None:
    label = _label(example, len(answers))
    if label is None:
      return None
    text = {name: _text(example[feature]) for name, feature in text_features.items()}
    return Fields(text=text, answers=(answers[label],), options=answers)

  return extract


def _generate(target_feature: str, **text_features: str) -> Extract:
  """`extract` for a generation dataset whose reference is one string feature."""

  def extract(example: Mapping[str, Any]) -> Fields:
    text = {name: _text(example[feature]) for name, feature in text_features.items()}
    return Fields(text=text, answers=(_text(example[target_feature]),))

  return extract


def _choose(choices: Sequence[str], label: int | None, **text: str) -> Fields | None:
  """Fields of a multiple-choice example whose options are the example's own choices."""
  if label is None:
    return None
  if not 0 <= label < len(choices):
    raise ValueError(f"label {label} outside the {len(choices)} choices")
  return Fields(text=text, answers=(choices[label],), options=tuple(choices))


# ---------------------------------------------------------------------------------------------------------
# Dataset-specific extraction.

_NLI3 = ("yes", "it is not possible to tell", "no")


def _copa(example: Mapping[str, Any]) -> Fields | None:
  label = _label(example, 2)
  question = _text(example["question"])
  if question not in ("cause", "effect"):
    raise ValueError(f"feature 'question': expected 'cause' or 'effect', got {question!r}")
  choices = (_text(example["choice1"]), _text(example["choice2"]))
  asks = "What was the cause?" if question == "cause" else "What happened as a result?"
  return _choose(choices, label, premise=_text(example["premise"]).rstrip("."),
                 connector="because" if question == "cause" else "so", asks=asks, relation=question,
                 sentence=_text(example["premise"]))


def _squad(example: Mapping[str, Any]) -> Fields:
  answers = _unique(_texts(example["answers"]["text"]))
  return Fields(
      text={
          "title": _text(example["title"]),
          "context": _text(example["context"]),
          "question": _text(example["question"])
      }, answers=answers)


def _winogrande(example: Mapping[str, Any]) -> Fields | None:
  choices = (_text(example["option1"]), _text(example["option2"]))
  return _choose(choices, _label(example, 2), sentence=_text(example["sentence"]))


def _piqa(example: Mapping[str, Any]) -> Fields | None:
  choices = (_text(example["sol1"]), _text(example["sol2"]))
  return _choose(choices, _label(example, 2), goal=_text(example["goal"]))


def _arc(example: Mapping[str, Any]) -> Fields | None:
  answer_key = _label(example, 5, "answerKey")
  choice_labels = [int(v) for v in example["choices"]["label"]]
  choices = _texts(example["choices"]["text"])
  if len(choice_labels) != len(choices):
    raise ValueError(f"feature 'choices': {len(choices)} texts but {len(choice_labels)} labels")
  if answer_key is None:
    return None
  if answer_key not in choice_labels:
    raise ValueError(f"feature 'answerKey': {answer_key} is not among the choice labels {choice_labels}")
  return _choose(choices, choice_labels.index(answer_key), question=_text(example["question"]))


def _hellaswag(example: Mapping[str, Any]) -> Fields | None:
  endings = _texts(example["endings"])
  label = int(example["label"])
  return _choose(endings, None if label == -1 else label, context=_text(example["context"]),
                 activity=_text(example["activity_label"]))


def _stsb(example: Mapping[str, Any]) -> Fields | None:
  score = float(example["label"])
  if score < 0:  # GLUE test split: unlabelled
    return None
  if not math.isfinite(score) or score > 5:
    raise ValueError(f"feature 'label': similarity {score} outside [0, 5]")
  return Fields(text={
      "sentence1": _text(example["sentence1"]),
      "sentence2": _text(example["sentence2"])
  }, answers=(f"{round(score * 5) / 5:.1f}",))  # T5 rounds STS-B scores to steps of 0.2


def _multirc(example: Mapping[str, Any]) -> Fields | None:
  label = _label(example, 2)
  if label is None:
    return None
  return Fields(
      text={
          "question": _text(example["question"]),
          "answer_text": _text(example["answer"]),
          "paragraph": _text(example["paragraph"])
      }, answers=(("False", "True")[label],), options=("False", "True"))


# ---------------------------------------------------------------------------------------------------------
# Templates.


def _templates(*pairs: tuple[str, str] | tuple[str, str, bool]) -> tuple[Template, ...]:
  """Numbered templates from (inputs, targets[, inverted]) tuples; inverted ones named "inverted_<i>"."""
  templates, plain, inverted = [], 0, 0
  for pair in pairs:
    is_inverted = len(pair) == 3 and bool(pair[2])
    if is_inverted:
      name, inverted = f"inverted_{inverted}", inverted + 1
    else:
      name, plain = f"template_{plain}", plain + 1
    templates.append(Template(name=name, inputs=pair[0], targets=pair[1], inverted=is_inverted))
  return tuple(templates)


_A = "{answer}"

_RTE = _templates(
    ("{premise}\n\nIf the passage above is true, is it also true that \"{hypothesis}\"?\n{options}", _A),
    ("Read this text:\n{premise}\n\nDoes it follow that {hypothesis}\nAnswer with one of:\n{options}", _A),
    ("Premise: {premise}\nHypothesis: {hypothesis}\nIs the hypothesis entailed by the premise?\n{options}", _A),
    ("{premise}\nBased on what you just read, can we say \"{hypothesis}\"?\n\n{options}", _A),
    ("Assume this is accurate: \"{premise}\"\n\nThen must the following also be accurate? {hypothesis}\n"
     "Possible answers:\n{options}", _A),
    ("Here is a short text: {premise}\nAnd here is a claim: {hypothesis}\nDoes the text support the claim?\n"
     "{options}", _A),
    ("Decide whether the second sentence can be inferred from the first.\n\nFirst: {premise}\n"
     "Second: {hypothesis}\n\n{options}", _A),
    ("{premise}\n\nQuestion: does this mean that \"{hypothesis}\"? Pick yes or no.\n{options}", _A),
)

_NLI3_TEMPLATES = _templates(
    ("{premise}\n\nGiven the text above, is this statement true? \"{hypothesis}\"\n{options}", _A),
    ("Context: {premise}\n\nStatement: {hypothesis}\nDoes the context support the statement? Answer yes, "
     "no, or that it is not possible to tell.\n{options}", _A),
    ("Read the following and decide whether the claim holds.\n{premise}\nClaim: {hypothesis}\n{options}", _A),
    ("{premise}\nDoes it follow from this that the statement below is true?\n{hypothesis}\n"
     "Choose:\n{options}", _A),
    ("Suppose \"{premise}\" Can we conclude that \"{hypothesis}\"?\n\n{options}", _A),
    ("Premise: \"{premise}\"\nHypothesis: \"{hypothesis}\"\nDoes the premise back up the hypothesis?\n"
     "{options}", _A),
)

_BOOLQ = _templates(
    ("{passage}\n\nAfter reading that, answer this yes-or-no question: {question}?\n{options}", _A),
    ("Passage: {passage}\nQuestion: {question}?\nAnswer yes or no.\n{options}", _A),
    ("{passage}\n\nBased on the passage, {question}?\n\n{options}", _A),
    ("Read this and answer the question.\n\n{passage}\n\nIs it true that {question}?\n{options}", _A),
    ("Text: {passage}\n\nGiven the text, is the answer to \"{question}?\" yes or no?\n{options}", _A),
    ("{question}?\n\nUse this passage to answer:\n{passage}\n{options}", _A),
    ("Here is some background: {passage}\nNow, {question}?\n{options}", _A),
    ("Answer the question using the article.\nArticle: {passage}\nQuestion: {question}\nPossible answers:\n"
     "{options}", _A),
)

_IMDB = _templates(
    ("{text}\n\nIs this movie review positive or negative?\n{options}", _A),
    ("Review:\n{text}\n\nWhat is the sentiment of this review?\n{options}", _A),
    ("Here is a film review: {text}\nDid the reviewer like the movie? Reply with the sentiment.\n{options}", _A),
    ("{text}\nHow would you describe the tone of this review?\n{options}", _A),
    ("Read this opinion about a movie and tell me whether it is favorable.\n\n{text}\n\n{options}", _A),
    ("Classify the sentiment of the following movie review.\n{text}\nSentiment:\n{options}", _A),
    ("A viewer wrote: \"{text}\"\nWas the viewer's opinion positive or negative?\n{options}", _A),
    ("{text}\n\nWould you say this review is negative or positive?\n{options}", _A),
)

_SQUAD = _templates(
    ("Read the passage and answer the question.\n\n{context}\n\nQuestion: {question}", _A),
    ("{context}\n\nUsing the text above, answer: {question}", _A),
    ("Here is an article about {title}:\n{context}\n\n{question}", _A),
    ("Passage: {context}\nQ: {question}\nA short answer taken from the passage:", _A),
    ("{question}\n\nFind the answer in this text:\n{context}", _A),
    ("Answer the question about {title} using the paragraph.\nParagraph: {context}\nQuestion: {question}", _A),
    ("Context: {context}\n\nWhat is the answer to \"{question}\"? Quote the passage.", _A),
    ("Write a question about the passage whose answer is \"{answer}\".\n\nPassage: {context}", "{question}", True),
)

_COPA = _templates(
    ("{premise}. {asks}\n\nPick the more plausible option:\n{options}", _A),
    ("Premise: {premise}\nWhich of these is the {relation}?\n{options}", _A),
    ("{premise} {connector}...\nChoose the better continuation.\n{options}", _A),
    ("Here is a situation: \"{premise}.\" {asks}\n{options}", _A),
    ("Which alternative is the most likely {relation} of the following?\n{premise}.\n\n{options}", _A),
    ("Complete the sentence: {premise} {connector}\n{options}", _A),
)

_AG_NEWS = _templates(
    ("{title}\n\n{description}\n\nWhich topic is this news article about?\n{options}", _A),
    ("Headline: {title}\nSummary: {description}\nWhat section of a newspaper would this appear in?\n"
     "{options}", _A),
    ("Classify this article by topic.\n{title}: {description}\n{options}", _A),
    ("{description}\nWhat is the main subject of the text above?\n{options}", _A),
    ("Read the news item and pick its category.\n\"{title}. {description}\"\n\n{options}", _A),
    ("Article: {title} -- {description}\nTopic:\n{options}", _A),
)

_SST2 = _templates(
    ("Sentence from a movie review: \"{sentence}\"\nIs the sentiment positive or negative?\n{options}", _A),
    ("{sentence}\n\nHow does the writer feel about the film?\n{options}", _A),
    ("What is the sentiment of this phrase?\n{sentence}\n{options}", _A),
    ("Decide whether this movie review snippet is praise or criticism: {sentence}\n\n{options}", _A),
    ("\"{sentence}\"\nDid the critic have a good or bad opinion?\n{options}", _A),
)

_WINOGRANDE = _templates(
    ("{sentence}\n\nWhat should replace the blank (_) above?\n{options}", _A),
    ("Fill in the blank: {sentence}\n{options}", _A),
    ("In the sentence \"{sentence}\", who or what does the _ stand for?\n\n{options}", _A),
    ("Choose the option that best completes the sentence.\n{sentence}\n{options}", _A),
    ("{sentence}\nWhich word or phrase makes sense in place of the underscore?\n{options}", _A),
)

_PIQA = _templates(
    ("Goal: {goal}\n\nWhich way of doing this makes more sense?\n{options}", _A),
    ("How would you accomplish this: {goal}\n{options}", _A),
    ("Here is what I want to do: {goal}\nWhich of these is the right method?\n\n{options}", _A),
    ("Pick the solution that achieves the goal.\nGoal: {goal}\nSolutions:\n{options}", _A),
)

_CNN_DM = _templates(
    ("{article}\n\nWrite the highlights of this article.", _A),
    ("Summarize this news story in a few bullet-style sentences:\n\n{article}", _A),
    ("Article: {article}\n\nKey points:", _A),
    ("{article}\nWhat are the most important facts in the story above?", _A),
    ("Read the article and list its main points.\n{article}", _A),
    ("Give a short summary of the following:\n{article}", _A),
)

_XSUM = _templates(
    ("{document}\n\nSum up the article above in one sentence.", _A),
    ("Write a one-sentence summary of this text:\n\n{document}", _A),
    ("Article: {document}\n\nIn a single sentence, what is it about?", _A),
    ("{document}\nTL;DR in one line:", _A),
    ("Write an article that this one-sentence summary could describe.\n\nSummary: {summary}", "{document}", True),
)

_WMT_DE = _templates(
    ("Translate this German text into English:\n\n{de}", _A),
    ("{de}\n\nWhat does this mean in English?", _A),
    ("German: {de}\nEnglish:", _A),
    ("How would you say the following in English? {de}", _A),
    ("Translate into German:\n{en}", "{de}"),
    ("English: {en}\nGerman:", "{de}"),
)

_MRPC = _templates(
    ("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo these two sentences mean the same thing?\n"
     "{options}", _A),
    ("\"{sentence1}\"\n\"{sentence2}\"\nAre these sentences paraphrases of each other?\n{options}", _A),
    ("Is the meaning of \"{sentence2}\" the same as \"{sentence1}\"?\n\n{options}", _A),
    ("Compare these statements:\n{sentence1}\n{sentence2}\nDo they express the same idea?\n{options}", _A),
    ("First: {sentence1}\nSecond: {sentence2}\nCould the second replace the first without changing "
     "its meaning?\n{options}", _A),
)

_QQP = _templates(
    ("Question 1: {question1}\nQuestion 2: {question2}\nAre these two questions asking the same thing?\n"
     "{options}", _A),
    ("\"{question1}\" and \"{question2}\"\nWould these questions have the same answer?\n{options}", _A),
    ("Is \"{question2}\" a duplicate of \"{question1}\"?\n\n{options}", _A),
    ("Two users posted:\n1) {question1}\n2) {question2}\nDid they ask the same question?\n{options}", _A),
)

_ARC = _templates(
    ("{question}\n\nPick the correct answer:\n{options}", _A),
    ("Science question: {question}\nChoices:\n{options}\nAnswer:", _A),
    ("Answer this grade-school science question.\n{question}\n{options}", _A),
    ("{question}\nWhich of the following is right?\n\n{options}", _A),
)

_HELLASWAG = _templates(
    ("{activity}: {context}\n\nHow does the description most likely continue?\n{options}", _A),
    ("Finish the passage about {activity}.\n{context}\n{options}", _A),
    ("{context}\nWhat comes next?\n\n{options}", _A),
    ("Topic: {activity}\nText: {context}\nPick the most sensible ending:\n{options}", _A),
)


def _t5(pattern: str) -> tuple[Template, ...]:
  """The single T5 template: T5's own "<task> field: value" text-to-text format."""
  return (Template(name="t5", inputs=pattern),)


DATASETS: tuple[DatasetTemplates, ...] = (
    # FLAN: several templates per dataset.
    DatasetTemplates("glue/rte:2.0.0", FLAN, "Textual Entailment", records.MULTIPLE_CHOICE,
                     _classify(("yes", "no"), premise="sentence1", hypothesis="sentence2"), _RTE,
                     labels=("entailment", "not_entailment")),
    DatasetTemplates("anli/r1:0.1.0", FLAN, "Textual Entailment", records.MULTIPLE_CHOICE,
                     _classify(_NLI3, premise="context", hypothesis="hypothesis"), _NLI3_TEMPLATES,
                     labels=("e", "n", "c")),
    DatasetTemplates("super_glue/cb:1.0.2", FLAN, "Textual Entailment", records.MULTIPLE_CHOICE,
                     _classify(("yes", "no", "it is not possible to tell"), premise="premise", hypothesis="hypothesis"),
                     _NLI3_TEMPLATES[:5], labels=("entailment", "contradiction", "neutral")),
    DatasetTemplates("super_glue/boolq:1.0.2", FLAN, "Question Answering", records.MULTIPLE_CHOICE,
                     _classify(("no", "yes"), passage="passage", question="question"), _BOOLQ,
                     labels=("False", "True")),
    DatasetTemplates("super_glue/copa:1.0.2", FLAN, "Cause Effect Classification", records.MULTIPLE_CHOICE, _copa,
                     _COPA, labels=("choice1", "choice2")),
    DatasetTemplates("imdb_reviews:1.0.0", FLAN, "Sentiment Analysis", records.MULTIPLE_CHOICE,
                     _classify(("negative", "positive"), text="text"), _IMDB, labels=("neg", "pos")),
    DatasetTemplates("glue/sst2:2.0.0", FLAN, "Sentiment Analysis", records.MULTIPLE_CHOICE,
                     _classify(("negative", "positive"), sentence="sentence"), _SST2, labels=("negative", "positive")),
    DatasetTemplates(
        "ag_news_subset:1.0.0", FLAN, "Text Categorization", records.MULTIPLE_CHOICE,
        _classify(("World", "Sports", "Business", "Science and technology"), title="title", description="description"),
        _AG_NEWS, labels=("World", "Sports", "Business", "Sci/Tech")),
    DatasetTemplates("squad/v1.1:3.0.0", FLAN, "Question Answering", records.GENERATION, _squad, _SQUAD),
    DatasetTemplates("winogrande:1.2.0", FLAN, "Coreference Resolution", records.MULTIPLE_CHOICE, _winogrande,
                     _WINOGRANDE, labels=("1", "2")),
    DatasetTemplates("piqa:1.0.0", FLAN, "Commonsense Classification", records.MULTIPLE_CHOICE, _piqa, _PIQA,
                     labels=("0", "1")),
    DatasetTemplates("ai2_arc/ARC-Easy:1.0.0", FLAN, "Question Answering", records.MULTIPLE_CHOICE, _arc, _ARC,
                     labels=("A", "B", "C", "D", "E"), label_feature="answerKey"),
    DatasetTemplates("hellaswag:1.1.0", FLAN, "Text Completion", records.MULTIPLE_CHOICE, _hellaswag, _HELLASWAG),
    DatasetTemplates("glue/mrpc:2.0.0", FLAN, "Text Matching", records.MULTIPLE_CHOICE,
                     _classify(("no", "yes"), sentence1="sentence1", sentence2="sentence2"), _MRPC,
                     labels=("not_equivalent", "equivalent")),
    DatasetTemplates("glue/qqp:2.0.0", FLAN, "Text Matching", records.MULTIPLE_CHOICE,
                     _classify(("no", "yes"), question1="question1", question2="question2"), _QQP,
                     labels=("not_duplicate", "duplicate")),
    DatasetTemplates("cnn_dailymail:3.4.0", FLAN, "Summarization", records.GENERATION,
                     _generate("highlights", article="article"), _CNN_DM),
    DatasetTemplates("xsum:1.1.0", FLAN, "Summarization", records.GENERATION,
                     _generate("summary", document="document", summary="summary"), _XSUM),
    DatasetTemplates("wmt16_translate/de-en:1.0.0", FLAN, "Translation", records.GENERATION,
                     _generate("en", de="de", en="en"), _WMT_DE),
    # T5: one template each, in T5's text-to-text format. A dataset that FLAN also has (cnn_dailymail) is
    # de-duplicated by the catalog on `DatasetTemplates.dataset` (T5 tasks are kept only when unique).
    DatasetTemplates("glue/cola:2.0.0", T5, "Grammar Error Detection", records.MULTIPLE_CHOICE,
                     _classify(("unacceptable", "acceptable"), sentence="sentence"), _t5("cola sentence: {sentence}"),
                     labels=("unacceptable", "acceptable")),
    DatasetTemplates("glue/stsb:2.0.0", T5, "Text Matching", records.GENERATION, _stsb,
                     _t5("stsb sentence1: {sentence1} sentence2: {sentence2}")),
    DatasetTemplates("glue/mnli:2.0.0", T5, "Textual Entailment", records.MULTIPLE_CHOICE,
                     _classify(("entailment", "neutral", "contradiction"), premise="premise", hypothesis="hypothesis"),
                     _t5("mnli hypothesis: {hypothesis} premise: {premise}"),
                     labels=("entailment", "neutral", "contradiction")),
    DatasetTemplates("glue/qnli:2.0.0", T5, "Answer Verification", records.MULTIPLE_CHOICE,
                     _classify(("entailment", "not_entailment"), question="question", sentence="sentence"),
                     _t5("qnli question: {question} sentence: {sentence}"), labels=("entailment", "not_entailment")),
    DatasetTemplates("super_glue/wic:1.0.2", T5, "Word Semantics", records.MULTIPLE_CHOICE,
                     _classify(("False", "True"), sentence1="sentence1", sentence2="sentence2", word="word"),
                     _t5("wic sentence1: {sentence1} sentence2: {sentence2} word: {word}"), labels=("False", "True")),
    DatasetTemplates("super_glue/multirc:1.0.2", T5, "Answer Verification", records.MULTIPLE_CHOICE, _multirc,
                     _t5("multirc question: {question} answer: {answer_text} "
                         "paragraph: {paragraph}"), labels=("False", "True")),
    DatasetTemplates("wmt16_translate/ro-en:1.0.0", T5, "Translation", records.GENERATION, _generate("ro", en="en"),
                     _t5("translate English to Romanian: {en}")),
    DatasetTemplates("cnn_dailymail:3.4.0", T5, "Summarization", records.GENERATION,
                     _generate("highlights", article="article"), _t5("summarize: {article}")),
)


def datasets(benchmarks: Sequence[str] = BENCHMARKS,
             specs: Sequence[DatasetTemplates] | None = None) -> tuple[DatasetTemplates, ...]:
  """The registered datasets (or `specs`, e.g. with FLAN's templates) of the given benchmarks, in order."""
  unknown = set(benchmarks) - set(BENCHMARKS)
  if unknown:
    raise ValueError(f"unknown benchmark(s) {sorted(unknown)}; expected some of {BENCHMARKS}")
  return tuple(d for d in (DATASETS if specs is None else specs) if d.benchmark in benchmarks)


def find(tfds_name: str, benchmark: str | None = None,
         specs: Sequence[DatasetTemplates] | None = None) -> tuple[DatasetTemplates, ...]:
  """Registered datasets (or of `specs`) matching a TFDS name (with or without version) and a benchmark."""
  name, _, version = tfds_name.partition(":")
  return tuple(d for d in (DATASETS if specs is None else specs) if d.dataset == name and
               (not version or d.tfds_name == tfds_name) and (benchmark is None or d.benchmark == benchmark))


def lookup(tfds_name: str, benchmark: str, specs: Sequence[DatasetTemplates] | None = None) -> DatasetTemplates:
  """The one registered dataset for a TFDS name and benchmark; KeyError naming the choices otherwise."""
  found = find(tfds_name, benchmark, specs)
  if len(found) != 1:
    known = sorted(f"{d.tfds_name} ({d.benchmark})" for d in DATASETS)
    raise KeyError(f"no FLAN/T5 templates for TFDS dataset {tfds_name!r} in benchmark {benchmark!r}; "
                   f"known: {known}")
  return found[0]


def prompts(spec: DatasetTemplates) -> tuple[Prompt, ...]:
  """The dataset bound to each of its templates."""
  return tuple(Prompt(spec, template) for template in spec.templates)


# ---------------------------------------------------------------------------------------------------------
# FLAN's own templates, read as data from a checkout of google-research/FLAN.

FLAN_TEMPLATES_FILE = os.path.join("flan", "templates.py")
FLAN_TEMPLATE_PREFIX = "flan_template_"


@dataclasses.dataclass(frozen=True)
class FlanBinding:
  """How FLAN's patterns of one dataset map onto a `DatasetTemplates` of this module.

  Attributes:
    key: the dataset's key in FLAN's `PATTERNS` ("rte", "bool_q", "squad_v1", ...).
    fields: FLAN field name -> this module's field name ("answer" for the reference).
    constants: FLAN field name -> fixed text written into the pattern (e.g. {"lang1": "German"}).
  """

  key: str
  fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
  constants: Mapping[str, str] = dataclasses.field(default_factory=dict)


# TFDS dataset (without version) of a FLAN entry of `DATASETS` -> its FLAN binding. winogrande is not bound:
# FLAN splits its sentence at the blank and renders the options with the rest of the sentence, which these
# fields do not carry.
FLAN_BINDINGS: dict[str, FlanBinding] = {
    "glue/rte": FlanBinding("rte"),
    "anli/r1": FlanBinding("anli", {"context": "premise"}),
    "super_glue/cb": FlanBinding("cb"),
    "super_glue/boolq": FlanBinding("bool_q", {"text": "passage"}),  # FLAN's bool_q build also has a title
    "super_glue/copa": FlanBinding("copa", {
        "premise": "sentence",
        "question": "relation"
    }),
    "imdb_reviews": FlanBinding("imdb_reviews"),
    "glue/sst2": FlanBinding("sst2"),
    "ag_news_subset": FlanBinding("ag_news_subset", {"text": "description"}),
    "squad/v1.1": FlanBinding("squad_v1"),
    "piqa": FlanBinding("piqa"),
    "ai2_arc/ARC-Easy": FlanBinding("arc"),
    "hellaswag": FlanBinding("hellaswag"),
    "glue/mrpc": FlanBinding("glue_mrpc"),
    "glue/qqp": FlanBinding("glue_qqp"),
    "cnn_dailymail": FlanBinding("cnn_dailymail", {
        "text": "article",
        "highlights": "answer"
    }),
    "xsum": FlanBinding("xsum", {
        "text": "document",
        "summary": "answer"
    }),
    # FLAN pairs English (sent1) with German (sent2); this dataset translates German into English.
    "wmt16_translate/de-en": FlanBinding("wmt16_translate", {
        "sent1": "de",
        "sent2": "answer"
    }, {
        "lang1": "German",
        "lang2": "English"
    }),
}


def flan_templates_path(flan_dir: str | os.PathLike) -> str:
  """`flan/templates.py` of a FLAN checkout, or the path itself when it is a file."""
  path = os.fspath(flan_dir)
  return path if os.path.isfile(path) else os.path.join(path, FLAN_TEMPLATES_FILE)


def load_flan_patterns(flan_dir: str | os.PathLike) -> dict[str, tuple[tuple[str, str], ...]]:
  """FLAN's `PATTERNS` from a checkout (or its `templates.py`), read as data: `ast`, never imported.

  Raises:
    FileNotFoundError: no `flan/templates.py` there.
    ValueError: the file is not Python, has no top-level `PATTERNS = {...}` of literals, or an entry is not a
      list of (inputs, targets) string pairs (the message names the file and the key).
  """
  path = flan_templates_path(flan_dir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FLAN templates not found: {path} (expected a checkout of google-research/FLAN "
                            f"with {FLAN_TEMPLATES_FILE}, or that file)")
  with open(path, encoding="utf-8") as f:
    source = f.read()
  try:
    tree = ast.parse(source, filename=path)
  except SyntaxError as e:
    raise ValueError(f"{path}: not a Python file ({e})") from e
  value: ast.expr | None = None
  for node in tree.body:
    targets: list[ast.expr] = []
    assigned: ast.expr | None = None
    if isinstance(node, ast.Assign):
      targets, assigned = node.targets, node.value
    elif isinstance(node, ast.AnnAssign):
      targets, assigned = [node.target], node.value
    if any(isinstance(t, ast.Name) and t.id == "PATTERNS" for t in targets) and assigned is not None:
      value = assigned
  if value is None:
    raise ValueError(f"{path}: no top-level `PATTERNS = {{...}}` assignment")
  try:
    patterns = ast.literal_eval(value)
  except ValueError as e:
    raise ValueError(f"{path}: PATTERNS (line {value.lineno}) is not a literal: {e}") from e
  if not isinstance(patterns, dict):
    raise ValueError(f"{path}: PATTERNS is a {type(patterns).__name__}, expected a dict of dataset -> list")
  out = {}
  for key, pairs in patterns.items():
    if not isinstance(key, str) or not isinstance(pairs, (list, tuple)):
      raise ValueError(f"{path}: PATTERNS[{key!r}]: expected a list of (inputs, targets) pairs")
    for i, pair in enumerate(pairs):
      if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
        raise ValueError(f"{path}: PATTERNS[{key!r}][{i}]: expected an (inputs, targets) pair of strings, "
                         f"got {pair!r:.80}")
    out[key] = tuple((str(a), str(b)) for a, b in pairs)
  return out


def _rewrite(pattern: str, binding: FlanBinding) -> tuple[str, set[str]]:
  """A FLAN pattern with fields renamed and constants written in; and the field names it then uses."""
  out, used = [], set()
  for literal, field, spec, conversion in string.Formatter().parse(pattern):
    out.append(literal.replace("{", "{{").replace("}", "}}"))
    if field is None:
      continue
    if field in binding.constants:
      out.append(binding.constants[field].replace("{", "{{").replace("}", "}}"))
      continue
    name = binding.fields.get(field, field)
    used.add(name)
    out.append("{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
  return "".join(out), used


def _known_fields(spec: DatasetTemplates, binding: FlanBinding) -> set[str]:
  """The fields a pattern of `spec` may use: those of its own templates, the binding's targets, and the extras."""
  known = {"answer", "options", "options_", *binding.fields.values()}
  for template in spec.templates:
    for pattern in (template.inputs, template.targets):
      known |= {field for _, field, _, _ in string.Formatter().parse(pattern) if field}
  return known


@dataclasses.dataclass(frozen=True)
class FlanPatterns:
  """The datasets with FLAN's templates where a binding applies, and what could not be used.

  Attributes:
    datasets: every registered dataset; the bound FLAN ones with FLAN's templates.
    unusable: FLAN templates left out, each with the reason.
    missing_keys: bound FLAN keys the file lacks (those datasets keep this module's templates).
    path: the `templates.py` read.
  """

  datasets: tuple[DatasetTemplates, ...]
  unusable: tuple[str, ...]
  missing_keys: tuple[str, ...] = ()
  path: str = ""

  @property
  def num_templates(self) -> int:
    """How many of FLAN's templates are used."""
    return sum(t.name.startswith(FLAN_TEMPLATE_PREFIX) for d in self.datasets for t in d.templates)


def with_flan_patterns(patterns: Mapping[str, Sequence[tuple[str, str]]], path: str = "",
                       specs: Sequence[DatasetTemplates] | None = None) -> FlanPatterns:
  """`specs` with FLAN's own templates for the bound FLAN datasets (see the module docstring)."""
  out, unusable, missing_keys = [], [], []
  for spec in DATASETS if specs is None else specs:
    binding = FLAN_BINDINGS.get(spec.dataset) if spec.benchmark == FLAN else None
    if binding is None:
      out.append(spec)
      continue
    if binding.key not in patterns:
      missing_keys.append(binding.key)
      out.append(spec)
      continue
    known, templates = _known_fields(spec, binding), []
    for i, (inputs, targets) in enumerate(patterns[binding.key]):
      try:
        new_inputs, used_inputs = _rewrite(inputs, binding)
        new_targets, used_targets = _rewrite(targets, binding)
      except ValueError as e:  # unbalanced braces
        unusable.append(f"{spec.tfds_name}: PATTERNS[{binding.key!r}][{i}]: not a format pattern ({e})")
        continue
      missing = sorted((used_inputs | used_targets) - known)
      if missing:
        unusable.append(f"{spec.tfds_name}: PATTERNS[{binding.key!r}][{i}] uses {missing}, which "
                        f"{spec.tfds_name} does not have")
        continue
      templates.append(
          Template(name=f"{FLAN_TEMPLATE_PREFIX}{i}", inputs=new_inputs, targets=new_targets, inverted=new_targets
                   != "{answer}"))
    if not templates:
      unusable.append(f"{spec.tfds_name}: no usable template in PATTERNS[{binding.key!r}]; our templates kept")
      out.append(spec)
      continue
    out.append(dataclasses.replace(spec, templates=tuple(templates)))
  return FlanPatterns(datasets=tuple(out), unusable=tuple(unusable), missing_keys=tuple(missing_keys), path=path)


def load_flan_datasets(flan_dir: str | os.PathLike) -> FlanPatterns:
  """`with_flan_patterns(load_flan_patterns(flan_dir))`: every dataset, FLAN's templates where bound."""
  return with_flan_patterns(load_flan_patterns(flan_dir), flan_templates_path(flan_dir))
