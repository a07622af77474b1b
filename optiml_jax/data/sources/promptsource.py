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
The kind is "multiple_choice" when the first usable line has answer choices, else "generation".

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
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Iterable, Iterator, Mapping

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
  return records.Instance(id=f"{local_name}-{line_number}", input=prompt.rstrip(), targets=(completion,),
                          options=options)


def _sibling_stems(path: pathlib.Path) -> list[str]:
  return [p.stem for p in path.parent.glob("*.jsonl")]


def read_task(path: str | os.PathLike, benchmark: str = BENCHMARK,
              sibling_stems: Iterable[str] | None = None) -> records.TaskSource:
  """Reads one P3 per-template JSONL file.

  Args:
    path: the template's `.jsonl` file; its stem is the task's local name.
    benchmark: the benchmark name ("promptsource").
    sibling_stems: the stems of the folder's `.jsonl` files (listed from the folder when None); only
      used to split names of unknown datasets.

  Raises:
    records.SourceError: no line with a non-empty completion, bytes that are not UTF-8, or a malformed line
      before the first usable one.
  """
  path_obj = pathlib.Path(path)
  path = str(path)
  local_name = path_obj.stem
  if sibling_stems is None:
    sibling_stems = _sibling_stems(path_obj)
  dataset, template = split_template_name(local_name, sibling_stems)
  first = jsonl.first_record(path, local_name, instance_from_record, dropped="every completion is empty")
  kind = records.MULTIPLE_CHOICE if first.get("answer_choices") else records.GENERATION
  return jsonl.inline_task(path, benchmark, local_name, kind,
                           lambda: jsonl.stream(path, local_name, instance_from_record), FORMAT, dataset=dataset,
                           template=template)


def iter_tasks(p3_dir: str | os.PathLike, benchmark: str = BENCHMARK) -> Iterator[records.TaskSource | records.Skipped]:
  """One task per template file in `p3_dir` (or its `data_per_template/`), in name order; bad -> `Skipped`."""
  files = jsonl.task_files(p3_folder(p3_dir), (".jsonl",))
  stems = [p.stem for p in files]
  return jsonl.iter_task_files(files, lambda p: read_task(p, benchmark, stems))
