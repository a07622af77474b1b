"""PromptSource / P3 reader: per-template JSONL files -> `records.TaskSource` (one task per template).

Where it sits: first stage of the data flow. Each `*.jsonl` file in the P3 folder (`data_per_template/`, or
the folder given) holds one PromptSource template applied to one dataset; the catalog groups templates by
`dataset` (the de-duplication key, "super_glue/rte" style) and assigns roles.

Lines (blank lines are ignored):
  {"prompt": str, "completion": str}     T0 training data as exported per template; a trailing
                                         "<|endoftext|>" on the completion is removed.
  {"inputs_pretokenized": str, "targets_pretokenized": str, "answer_choices": [str, ...]}
                                         bigscience/P3 columns; "answer_choices" (optional) -> options.
The prompt carries the instruction inline (`definition` is empty) and loses its trailing whitespace; the
completion is stripped. Lines whose completion is empty are dropped: P3 has no reference for them (several
`trec` templates of the public T0 export have only empty completions). Instance id: `<file stem>-<line>`.
The kind is "multiple_choice" when the first usable line has answer choices, else "generation". As for SNI,
answer choices are all or nothing and hold the answer: every usable line of a multiple-choice template has
them, no line of a generation template does, and the (stripped) completion is one of the (stripped) choices;
a line that breaks this is a bad line (below), so the catalog build skips the template naming the line.

File names are `<dataset>[_<subset>]_<template>.jsonl` with non-alphanumerics of the subset replaced by "_"
("cnn_dailymail_3_0_0_news_summary"), so the dataset/template boundary is ambiguous. `split_template_name`
resolves it by the longest prefix in `P3_DATASETS` (the T0 / T0+ / T0++ training and evaluation datasets).
For a dataset that always has a subset but an unknown one, the next "_" word is taken as the subset. For an
unknown dataset, the heuristic looks at the other files of the folder that start with the same word and are
not known datasets: the dataset is the longest run of "_" words all of them share (leaving every template
non-empty); a file alone with its first word takes that word as the dataset.

Validation: `read_task` reads lines up to the first usable one eagerly (an empty file, undecodable bytes or a
malformed line before it become a `records.SourceError`); later lines are checked while streaming and a bad
one raises `records.SourceError` naming its line number.

Original tasks: P3's exported files do not say whether a template poses the dataset's original task or inverts
it (e.g. answer -> question); promptsource's own `templates.yaml` files do (`metadata.original_task`). Given a
promptsource checkout (`read_metadata(promptsource_dir)`: `promptsource/templates/<dataset>[/<subset>]/
templates.yaml`, read with a safe YAML loader that knows only promptsource's `!Template` and
`!TemplateMetadata` tags), `iter_tasks` sets `TaskSource.original_task` from it, matching a P3 file to its
template by `<dataset>_<subset>_<template name>` with every run of other characters than letters and digits
taken as one "_" (case-insensitive). A template without the metadata, or absent from the checkout, counts as
an original task.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping

import yaml

from optiml_jax.data import records
from optiml_jax.data.sources import jsonl

FORMAT = "p3"
BENCHMARK = "promptsource"
END_OF_TEXT = "<|endoftext|>"

# PromptSource datasets of P3 (T0, T0+ and T0++ training sets and the T0 evaluation sets): dataset -> the
# subsets P3 uses. A dataset with subsets never appears without one in a P3 file name.
P3_DATASETS: dict[str, tuple[str, ...]] = {
    # T0 training mixture.
    "adversarial_qa": ("dbidaf", "dbert", "droberta", "adversarialQA"),
    "ag_news": (),
    "amazon_polarity": (),
    "app_reviews": (),
    "cnn_dailymail": ("3.0.0",),
    "common_gen": (),
    "commonsense_qa": (),
    "cos_e": ("v1.11",),
    "cosmos_qa": (),
    "dbpedia_14": (),
    "dream": (),
    "duorc": ("ParaphraseRC", "SelfRC"),
    "gigaword": (),
    "glue": ("mrpc", "qqp"),
    "imdb": (),
    "kilt_tasks": ("hotpotqa",),
    "multi_news": (),
    "paws": ("labeled_final",),
    "qasc": (),
    "quail": (),
    "quarel": (),
    "quartz": (),
    "quoref": (),
    "ropes": (),
    "rotten_tomatoes": (),
    "samsum": (),
    "sciq": (),
    "social_i_qa": (),
    "trec": (),
    "wiki_bio": (),
    "wiki_hop": ("original",),
    "wiki_qa": (),
    "wiqa": (),
    "xsum": (),
    "yelp_review_full": (),
    # T0+ additions.
    "ai2_arc": ("ARC-Challenge", "ARC-Easy"),
    "drop": (),
    "hellaswag": (),
    "openbookqa": ("main", "additional"),
    "piqa": (),
    "race": ("high", "middle", "all"),
    "squad_v2": (),
    "trivia_qa": ("unfiltered",),
    "web_questions": (),
    # T0++ additions and T0 evaluation sets.
    "super_glue": ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc.fixed"),
    "anli": (),
    "story_cloze": ("2016",),
    "winogrande": ("winogrande_xl", "winogrande_debiased"),
}

_NON_WORD = re.compile(r"[^0-9A-Za-z_]")


def _normalize(name: str) -> str:
  """File-name form of a dataset/subset name: non-alphanumerics -> "_", lower case (same length)."""
  return _NON_WORD.sub("_", name).lower()


def _known_prefixes() -> list[tuple[str, str, str]]:
  """(normalized prefix, dataset key, dataset), longest prefix first."""
  prefixes: list[tuple[str, str, str]] = []
  for dataset, subsets in P3_DATASETS.items():
    if subsets:
      prefixes.extend((_normalize(f"{dataset}_{s}"), f"{dataset}/{s}", dataset) for s in subsets)
    else:
      prefixes.append((_normalize(dataset), dataset, dataset))
  return sorted(prefixes, key=lambda p: -len(p[0]))


_PREFIXES = _known_prefixes()
_SUBSET_DATASETS = sorted((d for d, s in P3_DATASETS.items() if s), key=len, reverse=True)


def _match_known(stem: str) -> tuple[str, str] | None:
  """(dataset key, template) by the longest known prefix, or None."""
  normalized = _normalize(stem)
  for prefix, key, _ in _PREFIXES:
    if normalized.startswith(prefix + "_") and len(stem) > len(prefix) + 1:
      return key, stem[len(prefix) + 1:]
  for dataset in _SUBSET_DATASETS:  # Known dataset, unknown subset: the next word is the subset.
    prefix = _normalize(dataset)
    if normalized.startswith(prefix + "_"):
      words = stem[len(prefix) + 1:].split("_", 1)
      if len(words) == 2 and words[0] and words[1]:
        return f"{dataset}/{words[0]}", words[1]
  return None


def split_template_name(stem: str, sibling_stems: Iterable[str] = ()) -> tuple[str, str]:
  """Splits a P3 file stem into (dataset key, template name); see the module docstring for the rules.

  Args:
    stem: the file name without ".jsonl", e.g. "adversarial_qa_dbidaf_based_on".
    sibling_stems: the stems of the other files in the same folder (used only for unknown datasets).

  Returns:
    e.g. ("adversarial_qa/dbidaf", "based_on"), ("cnn_dailymail/3.0.0", "news_summary").
  """
  known = _match_known(stem)
  if known is not None:
    return known
  words = stem.split("_")
  if len(words) < 2:
    return stem, ""
  group = [s.split("_") for s in set(sibling_stems) | {stem} if s.split("_")[0] == words[0] and _match_known(s) is None]
  shared = 1
  if len(group) > 1:
    limit = min(len(g) for g in group) - 1  # Every template keeps at least one word.
    while shared < limit and all(g[shared] == words[shared] for g in group):
      shared += 1
  return "_".join(words[:shared]), "_".join(words[shared:])


def p3_folder(p3_dir: str | os.PathLike) -> pathlib.Path:
  """`<p3_dir>/data_per_template` when present, else `p3_dir`."""
  root = pathlib.Path(p3_dir)
  return root / "data_per_template" if (root / "data_per_template").is_dir() else root


def instance_from_record(obj: Mapping[str, Any], path: str, line_number: int,
                         local_name: str) -> records.Instance | None:
  """One P3 line -> Instance, or None when its completion is empty."""
  where = f"line {line_number}"
  if "prompt" in obj or "completion" in obj:
    input_key, target_key = "prompt", "completion"
  elif "inputs_pretokenized" in obj or "targets_pretokenized" in obj:
    input_key, target_key = "inputs_pretokenized", "targets_pretokenized"
  else:
    raise records.SourceError(
        path, f"{where}: expected fields 'prompt' and 'completion' (or 'inputs_pretokenized' and "
        f"'targets_pretokenized'), found {sorted(obj)}")
  prompt = jsonl.as_text(jsonl.required(obj, input_key, path, where), path, f"{where}: field '{input_key}'")
  completion = jsonl.as_text(jsonl.required(obj, target_key, path, where), path, f"{where}: field '{target_key}'")
  completion = completion.strip()
  if completion.endswith(END_OF_TEXT):
    completion = completion[:-len(END_OF_TEXT)].strip()
  options: tuple[str, ...] = ()
  if obj.get("answer_choices"):
    choices = jsonl.as_text_list(obj["answer_choices"], path, f"{where}: field 'answer_choices'")
    options = tuple(choice.strip() for choice in choices)
  if not completion:
    return None
  jsonl.check_options(options, (completion,), path, f"{where}: field 'answer_choices'")
  return records.Instance(id=f"{local_name}-{line_number}", input=prompt.rstrip(), targets=(completion,),
                          options=options)


def _sibling_stems(path: pathlib.Path) -> list[str]:
  return [p.stem for p in path.parent.glob("*.jsonl")]


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK, sibling_stems: Iterable[str] | None = None,
              original_task: bool = True) -> records.TaskSource:
  """Reads one P3 per-template JSONL file.

  Args:
    path: the template's `.jsonl` file; its stem is the task's local name.
    benchmark: the benchmark name ("promptsource").
    sibling_stems: the stems of the folder's `.jsonl` files (listed from the folder when None); only
      used to split names of unknown datasets.
    original_task: False when the template is known not to pose the dataset's original task.

  Raises:
    records.SourceError: no line with a non-empty completion, bytes that are not UTF-8, or a malformed line
      before the first usable one. (A later malformed line, or one whose answer choices disagree with the
      task's kind, raises it while streaming.)
  """
  path_obj = pathlib.Path(path)
  path = str(path)
  local_name = path_obj.stem
  if sibling_stems is None:
    sibling_stems = _sibling_stems(path_obj)
  dataset, template = split_template_name(local_name, sibling_stems)
  line_number, first = jsonl.first_line(path, local_name, instance_from_record, dropped="every completion is empty")
  multiple_choice = bool(first.get("answer_choices"))
  convert = jsonl.consistent_options(instance_from_record, multiple_choice, line_number, field="answer_choices")
  task = jsonl.inline_task(path, benchmark, local_name,
                           records.MULTIPLE_CHOICE if multiple_choice else records.GENERATION,
                           lambda: jsonl.stream(path, local_name, convert), FORMAT, dataset=dataset, template=template)
  return task if original_task else dataclasses.replace(task, original_task=False)


def iter_tasks(p3_dir: str | os.PathLike, benchmark: str = BENCHMARK,
               metadata: TemplateMetadata | None = None) -> Iterator[records.TaskSource | records.Skipped]:
  """One task per template file in `p3_dir` (or its `data_per_template/`), in name order; bad -> `Skipped`.

  With `metadata` (`read_metadata`), its unreadable `templates.yaml` files come first as `Skipped`, and each
  task's `original_task` is the template's `metadata.original_task` (True when unknown).
  """
  files = jsonl.task_files(p3_folder(p3_dir), (".jsonl",))
  stems = [p.stem for p in files]
  if metadata is None:
    return jsonl.iter_task_files(files, lambda p: read_task(p, benchmark, stems))
  tasks = jsonl.iter_task_files(
      files,
      lambda p: read_task(p, benchmark, stems, original_task=metadata.original_task(pathlib.Path(p).stem) is not False))
  return _chain(metadata.skipped, tasks)


def _chain(first: Iterable[records.Skipped],
           then: Iterable[records.TaskSource | records.Skipped]) -> Iterator[records.TaskSource | records.Skipped]:
  yield from first
  yield from then


# ---------------------------------------------------------------------------------------------------------
# promptsource's templates.yaml: which templates pose the original task.

TEMPLATES_FILE = "templates.yaml"


def template_key(*parts: str) -> str:
  """The matching key of a P3 file stem or of (dataset, subset, template name): alphanumeric runs, lower case."""
  return re.sub(r"[^0-9a-z]+", "_", "_".join(p for p in parts if p).lower()).strip("_")


@dataclasses.dataclass
class TemplateMetadata:
  """promptsource's per-template `original_task` flags, keyed by `template_key(dataset, subset, name)`.

  Attributes:
    root: the folder the `templates.yaml` files were read from.
    flags: key -> `metadata.original_task` (None when the template does not say).
    skipped: unreadable `templates.yaml` files (bad YAML, an unknown tag, a malformed entry).
    files: how many `templates.yaml` files were read.
    matched, unmatched: P3 stems looked up with and without an entry (counted by `original_task`).
  """

  root: str
  flags: dict[str, bool | None] = dataclasses.field(default_factory=dict)
  skipped: list[records.Skipped] = dataclasses.field(default_factory=list)
  files: int = 0
  matched: int = 0
  unmatched: int = 0

  def original_task(self, stem: str) -> bool | None:
    """`metadata.original_task` of the template a P3 file stem was made with (None: unknown)."""
    key = template_key(stem)
    if key not in self.flags:
      self.unmatched += 1
      return None
    self.matched += 1
    return self.flags[key]

  def not_original(self) -> list[str]:
    return sorted(k for k, v in self.flags.items() if v is False)


class _TemplatesLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
  """A safe loader that reads promptsource's `!Template` / `!TemplateMetadata` objects as plain mappings."""


def _as_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[Any, Any]:
  if not isinstance(node, yaml.MappingNode):
    raise yaml.constructor.ConstructorError(None, None, f"expected a mapping after {node.tag}", node.start_mark)
  return loader.construct_mapping(node, deep=True)


_TemplatesLoader.add_constructor("!Template", _as_mapping)
_TemplatesLoader.add_constructor("!TemplateMetadata", _as_mapping)


def templates_folder(promptsource_dir: str | os.PathLike) -> pathlib.Path:
  """`<dir>/promptsource/templates` of a checkout, else `<dir>/templates`, else `<dir>` itself."""
  root = pathlib.Path(promptsource_dir)
  for candidate in (root / "promptsource" / "templates", root / "templates"):
    if candidate.is_dir():
      return candidate
  return root


def read_templates_file(path: str | os.PathLike) -> dict[str, bool | None]:
  """The `original_task` flag of every template of one promptsource `templates.yaml`, by `template_key`.

  Raises:
    records.SourceError: not UTF-8 or not YAML, a tag other than promptsource's, or a missing field (the
      message names the file and the template).
  """
  path = str(path)
  try:
    with open(path, encoding="utf-8") as f:
      data = yaml.load(f, Loader=_TemplatesLoader)  # a SafeLoader with two mapping tags
  except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deeply
    raise records.SourceError(path, f"not a promptsource templates file: {type(e).__name__}: {e}") from e
  if not isinstance(data, dict) or not isinstance(data.get("dataset"), str):
    raise records.SourceError(path, "expected a mapping with 'dataset', ['subset'] and 'templates'")
  subset = data.get("subset") or ""
  templates = data.get("templates") or {}
  if not isinstance(subset, str) or not isinstance(templates, dict):
    raise records.SourceError(path, "'subset' must be a string and 'templates' a mapping of template id -> !Template")
  flags: dict[str, bool | None] = {}
  for template_id, template in templates.items():
    if not isinstance(template, dict) or not isinstance(template.get("name"), str):
      raise records.SourceError(path, f"templates.{template_id}: expected a !Template with a 'name'")
    metadata = template.get("metadata") or {}
    if not isinstance(metadata, dict):
      raise records.SourceError(path, f"templates.{template_id} ({template['name']}): 'metadata' is not a mapping")
    flag = metadata.get("original_task")
    if flag is not None and not isinstance(flag, bool):
      raise records.SourceError(
          path, f"templates.{template_id} ({template['name']}): metadata.original_task must be true, false or "
          f"absent, got {flag!r}")
    flags[template_key(data["dataset"], subset, template["name"])] = flag
  return flags


def read_metadata(promptsource_dir: str | os.PathLike) -> TemplateMetadata:
  """Reads every `templates.yaml` under a promptsource checkout (see `templates_folder`).

  Raises:
    FileNotFoundError: the folder does not exist or holds no `templates.yaml`.
  """
  folder = templates_folder(promptsource_dir)
  if not folder.is_dir():
    raise FileNotFoundError(f"promptsource folder not found: {promptsource_dir}")
  paths = sorted(folder.rglob(TEMPLATES_FILE))
  if not paths:
    raise FileNotFoundError(f"{folder}: no {TEMPLATES_FILE} found (expected promptsource/templates/<dataset>/"
                            f"[<subset>/]{TEMPLATES_FILE} of a promptsource checkout)")
  metadata = TemplateMetadata(root=str(folder))
  for path in paths:
    try:
      metadata.flags.update(read_templates_file(path))
    except records.SourceError as e:
      metadata.skipped.append(records.Skipped(e.path, e.reason))
      continue
    metadata.files += 1
  return metadata
