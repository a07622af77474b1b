r"""Entry point: `python -m optiml_jax.eval --gin_file=gin/eval.gin --gin.CHECKPOINT_PATH=P --gin.EVAL_OUTPUT_DIR=O`.

The only place evaluation meets gin (t5x flags: --gin_file, --gin.KEY=VALUE, --gin_bindings,
--gin_search_paths). `evaluate(...)` registers the catalog's seqio Tasks (with `SHOTS` demonstrations),
picks the tasks of the generalization `LEVELS`, evaluates every checkpoint that CHECKPOINT_PATH names through
`evaluation.evaluator` and writes the report (`evaluation.report`):

  CHECKPOINT_PATH  an Orbax step folder (MODEL_DIR/<step>), a `convert` / `save_orbax` folder, a MODEL_DIR
                   (CHECKPOINT_STEPS: 'latest', 'all' or a list of steps) or a Hugging Face folder (OPT, Llama,
                   Mistral, Qwen2, SmolLM2: `models/registry.py`).
  TOKENIZER_DIR    the tokenizer the tasks are tokenized with; None: the one the checkpoint carries (a Hugging
                   Face folder's, or what the trainer copied into MODEL_DIR), else OPT's. The model must embed
                   every id of it; decoding stops at its EOS or the config's.
  OUT/metrics.json, OUT/report.md, OUT/<level>.png      one checkpoint;
  OUT/step_<n>/...  and OUT/steps.md, OUT/steps.json    several (a MODEL_DIR with CHECKPOINT_STEPS='all');
  OUT/baseline/...                                      BASELINE_PATH (a checkpoint, or the OUT folder of an
                                                        earlier evaluation), shown side by side with deltas.

Everything but a recording is written into a fresh folder inside OUT (`.eval-partial-*`) and moved into place when
complete (`staged_output`): the outputs of an earlier evaluation in OUT (`is_output`) are then replaced as a whole,
so OUT never mixes two evaluations, and other files there stay; a run that fails leaves OUT as it was. A recording
(`evaluate.record_requests`) writes OUT/requests/ directly, and a rerun extends it (a request recorded before is
kept; another tokenizer's requests there are refused). An OUT that is a file is refused before anything is read.

A step of a MODEL_DIR that cannot be used (partial, not committed, set aside by the trainer, or with an array or
its metadata that cannot be read: a data file cut short or deleted) is skipped with a one-line reason, listed on
stderr, in report.md ("Checkpoints skipped"), steps.md and metrics.json (`settings.checkpoint_problems`); the
other steps are evaluated. With CHECKPOINT_STEPS='latest', a newest step that cannot be read gives way to the
newest one that can. Tracebacks of the libraries behind such faults go to a log file (`--log_file`, by default
under $TMPDIR/optiml_jax/), or with `--debug` to the screen too (`cli_logging`).

Exit status: 0 when the report was written (tasks that failed are listed in it and on stderr); 1 when no
checkpoint could be read; 2 on a configuration error (gin, a setting `check_settings` refuses, a mesh_shape that does
not fit the devices, unknown level, no tasks, an unreadable CATALOG_DIR, an EVAL_OUTPUT_DIR that cannot be a
folder), printed as one line naming the macro or binding, before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import sys
from typing import Any, Iterator, Sequence, overload

import gin
import jax

from optiml_jax import cli_logging
from optiml_jax import gin_registry  # registers the configurables (@model_config) for gin; checks bindings
from optiml_jax import gin_utils
from optiml_jax import tempfiles
from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import loading
from optiml_jax.evaluation import batching
from optiml_jax.evaluation import evaluator
from optiml_jax.evaluation import report as report_lib
from optiml_jax.evaluation import requests
from optiml_jax.models import partitioning
from optiml_jax.models import registry as model_registry

REQUIRED_MACROS = ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR")
STEPS_FILE = "steps.json"
STEPS_TABLE = "steps.md"
_LOG = logging.getLogger(__name__)
INFERENCES_DIR = "inferences"  # seqio JSONLogger output: inputs, targets, predictions or scores per Task
BASELINE_DIR = "baseline"  # BASELINE_PATH evaluated as a checkpoint: its report
REQUESTS_DIR = "requests"  # record_requests=True: the model calls of every task, to answer elsewhere
ANSWERS = "answers"  # the format of a CHECKPOINT_PATH that is an answers folder (`python -m optiml_jax.answer`)
# An evaluation writes into a fresh folder inside EVAL_OUTPUT_DIR, moved into place when it is complete.
STAGING_PREFIX = ".eval-partial-"
_OUTPUT_NAMES = frozenset({
    report_lib.METRICS_FILE, report_lib.METRICS_FILE + ".tmp", report_lib.REPORT_FILE, STEPS_TABLE, STEPS_FILE,
    INFERENCES_DIR, BASELINE_DIR, *(f"{level}.png" for level in (*report_lib.LEVELS, report_lib.CUSTOM_LEVEL))
})


class ConfigError(ValueError):
  """The evaluation settings are inconsistent: exit status 2."""


@dataclasses.dataclass
class Summary:
  """What `evaluate` did: report folders, and counts of evaluated and failed (task, shots) pairs."""

  outputs: list[str]
  evaluated: int
  failed: int
  problems: list[str]


def _model_info(label: str, checkpoint: evaluator.Checkpoint, config: model_registry.ModelConfig) -> dict[str, Any]:
  return {
      "label": label,
      "checkpoint": checkpoint.path,
      "step": checkpoint.step,
      "format": checkpoint.format,
      "num_params": config.num_params(),
      "config": config.to_hf()
  }


def _evaluate_checkpoint(checkpoint: evaluator.Checkpoint, specs: Sequence[evaluator.EvalTask],
                         failed: Sequence[report_lib.TaskResult], label: str, settings: dict[str, Any],
                         out_dir: pathlib.Path, *, model: model_registry.ModelConfig | None, overrides: dict[str, Any],
                         mesh: jax.sharding.Mesh, batch_size: int, max_length: int | None, max_new_tokens: int,
                         length_normalize: bool, progress: bool, share_prompts: bool = True,
                         vocabularies: Sequence[Any] = (), record_requests: bool = False,
                         end_of_turn: int | None = None) -> report_lib.Report:
  """Loads one checkpoint, evaluates every spec and returns its report (without baseline).

  An answers folder (format ANSWERS) is evaluated from its answers (`requests.Replayer`); with `record_requests`
  the model is not run: the specs' requests are recorded in `out_dir`/requests (`requests.Recorder`) and the
  returned report's scores are placeholders, not to be written.

  `vocabularies`: those the specs' Tasks tokenize with; the model must embed all their ids, and greedy decoding
  stops at any of their EOS ids or the model config's own (`eos_token_id`, possibly several), or at
  `end_of_turn` (the chat format's, when the prompts are chat turns).
  """
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top
  from optiml_jax.evaluation import inference  # pylint: disable=g-import-not-at-top

  params = None
  if checkpoint.format == ANSWERS:  # answered elsewhere (`python -m optiml_jax.answer`): the model's config only
    answered = _answered_model(checkpoint.path)
    try:
      config = model_registry.config_from_hf(answered["config"])
    except (KeyError, TypeError, ValueError) as e:
      raise evaluator.CheckpointError(f"{checkpoint.path}: answers.json: unusable model config ({e})") from e
  elif record_requests:  # no params needed: the requests are the same for every model of this tokenizer
    config = loading.load_config(checkpoint, model, overrides)
  else:
    config, params = evaluator.load_checkpoint(checkpoint, model, overrides)
  # OPT's tokenizer is the fallback when the checkpoint carries none: a model whose config ends generations with
  # other ids was made for another tokenizer (Llama 3's 128256 rows cover OPT's ids, so no size check catches it).
  fallback = [v for v in vocabularies if getattr(v, "tokenizer_dir", None) == vocab.DEFAULT_TOKENIZER_DIR]
  if any(v.eos_id not in config.eos_ids for v in fallback):
    raise ConfigError(
        f"{checkpoint.path}: no tokenizer files beside the checkpoint or in its MODEL_DIR, and its config's EOS ids "
        f"{list(config.eos_ids)} are not those of OPT's tokenizer, the fallback: set TOKENIZER_DIR to the model's "
        "own tokenizer folder, e.g. the Hugging Face folder it was converted from")
  try:
    for vocabulary in vocabularies:
      vocab.check_vocab_covers(config.vocab_size, vocabulary, f"{checkpoint.path} (its config)")
  except ValueError as e:
    raise ConfigError(str(e)) from e
  eos_ids = tuple(
      dict.fromkeys([
          *(v.eos_id for v in vocabularies if v.eos_id is not None), *config.eos_ids,
          *([] if end_of_turn is None else [end_of_turn])
      ]))
  _LOG.info("%s %s (step %s): %d task variant(s)", "recording the requests of" if record_requests else "evaluating",
            checkpoint.path, checkpoint.step, len(specs))
  scorer: inference.ModelCalls
  try:
    if checkpoint.format == ANSWERS:
      scorer = requests.Replayer(checkpoint.path, eos_ids)
      # A direct evaluation cuts prompts to evaluate.max_length (unset: the model's context); answers made with
      # another context would be reported as its results.
      try:
        context = batching.context_length(model_registry.make_model(config), max_length)
        requests.check_replay_context(scorer, context, "evaluate.max_length", unset=max_length is None)
      except ValueError as e:
        raise ConfigError(str(e) if isinstance(e, requests.RequestsError) else f"evaluate.max_length: {e}") from e
    elif record_requests:
      context = batching.context_length(model_registry.make_model(config), max_length)
      try:
        scorer = requests.Recorder(out_dir / REQUESTS_DIR, context, eos_ids, settings.get("tokenizer_dir"))
      except requests.RequestsError as e:  # earlier requests of another tokenizer there
        raise ConfigError(f"EVAL_OUTPUT_DIR: {e}") from e
    else:
      scorer = inference.Scorer(config, params, mesh=mesh, batch_size=batch_size, max_length=max_length,
                                progress=progress, share_prompts=share_prompts, eos_ids=eos_ids)
  except ConfigError:
    raise
  except ValueError as e:  # max_length beyond the context, params that do not fit the model, unusable answers.
    raise ConfigError(f"{checkpoint.path}: {e}") from e
  del params
  if not 1 <= max_new_tokens < scorer.max_length:
    raise ConfigError(f"max_new_tokens={max_new_tokens} must be in [1, {scorer.max_length - 1}] (the context "
                      f"{scorer.max_length} minus one)")
  log_dir = out_dir / INFERENCES_DIR if jax.process_index() == 0 and not record_requests else None
  results = evaluator.evaluate_tasks(specs, scorer, max_new_tokens, length_normalize, log_dir, checkpoint.step)
  settings = dict(settings, max_length=scorer.max_length, inference=scorer.stats.as_dict())
  info = _model_info(label, checkpoint, config)
  if checkpoint.format == ANSWERS:  # the model that answered, and where its answers are
    info.update(answers=checkpoint.path, checkpoint=answered.get("checkpoint"), format=answered.get("format"))
  return report_lib.build_report(list(results) + list(failed), info, settings)


def _write(report: report_lib.Report, out_dir: pathlib.Path, shown: pathlib.Path) -> None:
  """Writes the report into `out_dir` (in the staging folder) and prints it with `shown`, where it will be."""
  if jax.process_index() == 0:
    report_lib.write(report, out_dir)
    print(f"\n{report_lib.summary_table(report)}\n\nreport: {shown}/{report_lib.REPORT_FILE}")


def is_output(name: str) -> bool:
  """Whether `name`, an entry of EVAL_OUTPUT_DIR, is something an evaluation writes there (metrics.json, report.md,
  the charts, inferences/, baseline/, step_<n>/, steps.md, steps.json): the next evaluation into the folder
  replaces all of them. Other entries (requests/ of a recording, a user's notes) are kept."""
  return name in _OUTPUT_NAMES or re.fullmatch(r"step_\d+", name) is not None


def check_output_dir(out: pathlib.Path) -> None:
  """Raises ConfigError unless EVAL_OUTPUT_DIR can be written: a folder, or absent under a writable folder."""
  if out.exists() and not out.is_dir():
    raise ConfigError(f"EVAL_OUTPUT_DIR {out}: exists and is not a folder; name a new or existing folder")
  for parent in (out, *out.parents):
    if parent.exists():
      if not parent.is_dir():
        raise ConfigError(f"EVAL_OUTPUT_DIR {out}: {parent} is a file, not a folder")
      if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"EVAL_OUTPUT_DIR {out}: cannot write into {parent} (permission denied)")
      return


@contextlib.contextmanager
def staged_output(out: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a fresh folder inside `out` (made with its parents when absent) for an evaluation to write into.

  When the block completes, an earlier evaluation's outputs in `out` (`is_output`) give way to the new ones, so the
  folder never holds two evaluations; other files stay. When it fails, the folder is removed (and so are the folders
  made for it) and `out` is as it was. Only process 0 writes: elsewhere `out` itself is yielded, never written.
  """
  if jax.process_index() != 0:
    yield out
    return
  made = [p for p in (*reversed(out.parents), out) if not p.exists()]
  try:
    out.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfiles.mkdtemp(prefix=STAGING_PREFIX, dir=out))
  except OSError as e:
    _remove_empty(made)
    raise ConfigError(f"EVAL_OUTPUT_DIR {out}: cannot write there ({e})") from e
  try:
    yield work
    _swap_in(work, out)
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    _remove_empty(made)
    raise


def _swap_in(work: pathlib.Path, out: pathlib.Path) -> None:
  """Moves the earlier evaluation's outputs in `out` aside, the entries of `work` in, then deletes the former; a
  rename that fails puts everything back as it was."""
  old = pathlib.Path(tempfiles.mkdtemp(prefix=".eval-old-", dir=out))
  moved: list[tuple[pathlib.Path, pathlib.Path]] = []
  try:
    for entry in sorted(out.iterdir()):
      if is_output(entry.name):
        os.replace(entry, old / entry.name)
        moved.append((entry, old / entry.name))
    for entry in sorted(work.iterdir()):
      os.replace(entry, out / entry.name)
      moved.append((entry, out / entry.name))
  except BaseException:
    for source, target in reversed(moved):
      with contextlib.suppress(OSError):
        os.replace(target, source)
    with contextlib.suppress(OSError):
      old.rmdir()
    raise
  work.rmdir()
  shutil.rmtree(old)


def _remove_empty(folders: Sequence[pathlib.Path]) -> None:
  for folder in reversed(folders):
    with contextlib.suppress(OSError):
      folder.rmdir()


def _find_checkpoints(path: str | pathlib.Path,
                      steps: str | Sequence[int]) -> tuple[list[evaluator.Checkpoint], list[str]]:
  """`evaluator.find_checkpoints`, and an answers folder as one checkpoint of format ANSWERS."""
  if requests.is_answers_folder(path):
    return [evaluator.Checkpoint(str(path), ANSWERS, _answered_model(path).get("step"))], []
  return evaluator.find_checkpoints(path, steps)


def _answered_model(path: str | pathlib.Path) -> dict[str, Any]:
  try:
    return requests.answered_model(path)
  except requests.RequestsError as e:
    raise evaluator.CheckpointError(str(e)) from e


def _carried_tokenizer(path: str | pathlib.Path) -> pathlib.Path | None:
  """The tokenizer folder a checkpoint path (or answers folder) carries, or None."""
  if requests.is_answers_folder(path):
    return requests.tokenizer_dir(path)
  return evaluator.tokenizer_folder(path)


def _baseline_report(baseline_path: str, evaluate_one, out_dir: pathlib.Path, shown: pathlib.Path,
                     label: str) -> report_lib.Report:
  """An earlier evaluation's metrics.json, or a fresh evaluation of the baseline checkpoint (or answers); either way
  labelled `label` (`evaluate.baseline_label`: an earlier report's own label, "model" by default, would name both
  column sets alike)."""
  path = pathlib.Path(baseline_path)
  if (path / report_lib.METRICS_FILE).is_file() or path.name == report_lib.METRICS_FILE:
    try:
      earlier = report_lib.load(path)
    except (OSError, ValueError) as e:  # not JSON, not a report
      raise ConfigError(f"BASELINE_PATH {baseline_path}: {e}") from e
    return {**earlier, "model": {**(earlier.get("model") or {}), "label": label}}
  checkpoints, _ = _find_checkpoints(path, "latest")
  report = evaluate_one(checkpoints[0], out_dir)
  _write(report, out_dir, shown)
  return report


def _load_catalog(catalog_dir: str, macro: str) -> Any:
  """The bench catalog; ConfigError naming `macro` (CATALOG_DIR, or CACHE_DIR holding its copy) when there is none
  or it cannot be read."""
  from optiml_jax.data import catalog as catalog_lib  # pylint: disable=g-import-not-at-top
  try:
    return catalog_lib.load(catalog_dir)
  except (OSError, ValueError) as e:  # absent, unreadable, not JSON, an entry with a missing field
    raise ConfigError(f"{macro}: {e}") from e


def _tokenizer_dir(explicit: str | None, checkpoint_path: str, baseline_path: str | None) -> str | None:
  """The tokenizer folder the tasks tokenize with: `explicit` (TOKENIZER_DIR), else the one the checkpoint carries
  (a Hugging Face folder's own, the tokenizer a trainer copied into MODEL_DIR), else None: OPT's.

  Raises:
    ConfigError: a baseline checkpoint carries another tokenizer than the evaluated one (one registration of the
      tasks serves both): evaluate the baseline on its own and pass its report folder as BASELINE_PATH.
  """
  if explicit:
    return explicit
  found = _carried_tokenizer(checkpoint_path)
  if baseline_path:
    theirs = _carried_tokenizer(baseline_path)
    if theirs is not None and not _same_tokenizer(found, theirs):
      ours = found or "none: OPT's"
      raise ConfigError(f"the baseline {baseline_path} carries another tokenizer ({theirs}) than {checkpoint_path} "
                        f"({ours}); evaluate the baseline on its own and pass its output folder "
                        "as BASELINE_PATH, or set TOKENIZER_DIR")
  return None if found is None else str(found)


def _chat_format(tokenizer_dir: str | None, vocabulary: Any, catalog_dir: str | None, cache_dir: str | None) -> Any:
  """evaluate.chat_template: the chat format of the tokenizer the tasks tokenize with (`data/chat.py`)."""
  from optiml_jax.data import chat as chat_lib  # pylint: disable=g-import-not-at-top
  if catalog_dir is None:
    raise ConfigError("evaluate.chat_template: chat prompts are made from the bench's tasks; set CATALOG_DIR")
  if cache_dir is not None:
    raise ConfigError("evaluate.chat_template: CACHE_DIR holds plain prompts, not chat turns; unset it and set "
                      "CATALOG_DIR (the tasks are then formatted from their source files)")
  if tokenizer_dir is None:
    raise ConfigError("evaluate.chat_template: the tokenizer is OPT's, which has no chat template; evaluate a "
                      "checkpoint that carries its chat model's tokenizer, or set TOKENIZER_DIR to it")
  try:
    return chat_lib.ChatFormat.from_tokenizer(tokenizer_dir, vocabulary)
  except chat_lib.ChatTemplateError as e:
    raise ConfigError(f"evaluate.chat_template: {e}") from e


def _same_tokenizer(a: pathlib.Path | None, b: pathlib.Path | None) -> bool:
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top
  try:
    return vocab.load(a) == vocab.load(b)
  except (OSError, ValueError) as e:  # a folder whose tokenizer cannot be read (no EOS named, a broken file)
    raise ConfigError(f"cannot read a checkpoint's tokenizer: {e}") from e


def _task_vocabularies(specs: Sequence[evaluator.EvalTask]) -> list[Any]:
  """The distinct vocabularies of the specs' registered Tasks ("targets"), in order."""
  import seqio  # pylint: disable=g-import-not-at-top
  found: list[Any] = []
  for spec in specs:
    if spec.seqio_name in seqio.TaskRegistry.names():
      vocabulary = seqio.TaskRegistry.get(spec.seqio_name).output_features["targets"].vocabulary
      if vocabulary not in found:
        found.append(vocabulary)
  return found


@overload
def _as_list(value: str | Sequence[str]) -> list[str]:
  ...


@overload
def _as_list(value: None) -> None:
  ...


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
  """A gin value given as one string (`--gin.TASKS=bigbench:*`) becomes a one-element list."""
  if value is None:
    return None
  return [value] if isinstance(value, str) else list(value)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_list_of_counts(value: Any) -> bool:
  """Whether `value` is a non-empty list (or tuple) of ints >= 0."""
  return (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and
          all(_is_int(k) and k >= 0 for k in value))


def check_settings(*, shots: Any, checkpoint_steps: Any, batch_size: Any, dtype: Any) -> list[int]:
  """Raises ConfigError naming the macro or binding of the first setting `evaluate` cannot use, before anything is
  read or written; returns SHOTS as a list (one number is one shot count)."""
  shots = [shots] if _is_int(shots) else shots
  if not _is_list_of_counts(shots):
    raise ConfigError(f"SHOTS (evaluate.shots): expected a list of numbers of demonstrations >= 0, e.g. [0, 5]; got "
                      f"{shots!r}")
  steps = [checkpoint_steps] if _is_int(checkpoint_steps) else checkpoint_steps
  if steps not in ("latest", "all") and not _is_list_of_counts(steps):
    raise ConfigError(f"CHECKPOINT_STEPS (evaluate.checkpoint_steps): expected 'latest', 'all' or a list of steps "
                      f"(e.g. [100, 200]); got {checkpoint_steps!r}")
  if not _is_int(batch_size) or batch_size < 1:
    raise ConfigError(f"evaluate.batch_size: expected a positive number of rows per batch, got {batch_size!r}")
  if dtype is not None and not loading.is_compute_dtype(dtype):
    raise ConfigError(f"evaluate.dtype: expected a floating-point compute dtype (e.g. 'bfloat16', 'float32') or "
                      f"None (the checkpoint's), got {dtype!r}")
  return list(shots)


def _make_mesh(mesh_shape: Any) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh of `evaluate.mesh_shape` over the local devices; ConfigError naming the binding
  when it cannot be made (`partitioning.make_mesh`'s reason: e.g. sizes that do not multiply to the device count)."""
  if isinstance(mesh_shape, str) or not isinstance(mesh_shape, Sequence) or len(mesh_shape) != 3 or not all(
      _is_int(size) for size in mesh_shape):
    raise ConfigError(f"evaluate.mesh_shape: expected (data, fsdp, tensor), got {mesh_shape!r}")
  data, fsdp, tensor = mesh_shape
  try:
    return partitioning.make_mesh(data, fsdp, tensor)
  except ValueError as e:
    raise ConfigError(f"evaluate.mesh_shape: {e}") from e


@gin.configurable
def evaluate(*, checkpoint_path: str = gin.REQUIRED, eval_output_dir: str = gin.REQUIRED,
             catalog_dir: str | None = None, levels: Sequence[str] = evaluator.LEVELS, shots: Sequence[int] = (0,),
             tasks: Sequence[str] | None = None, benchmarks: Sequence[str] | None = None,
             max_instances: int | None = None, checkpoint_steps: str | Sequence[int] = "latest",
             baseline_path: str | None = None, model: model_registry.ModelConfig | None = None,
             tokenizer_dir: str | None = None, dtype: str | None = None, mesh_shape: Sequence[int] = (-1, 1, 1),
             batch_size: int = 32, max_length: int | None = None, max_new_tokens: int = 256,
             length_normalize: bool = False, share_prompts: bool = True, label: str = "model",
             baseline_label: str = "baseline", progress: bool = True, cache_dir: str | None = None,
             record_requests: bool = False, chat_template: bool = False,
             compilation_cache_dir: str | None = None) -> Summary:
  """Evaluates the checkpoint(s) at `checkpoint_path` and writes the report into `eval_output_dir`.

  With `record_requests`, writes instead the model calls of every task into `eval_output_dir`/requests, for
  `python -m optiml_jax.answer` to answer on another machine (`evaluation/requests.py`); `checkpoint_path` then
  only says which model config and tokenizer the requests are for, and no model is run.

  Args: see gin/eval.gin, where every binding is commented.
  """
  from optiml_jax.data import cache  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import catalog as catalog_lib  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top

  # gin has called this function and its model config by now: a binding of anything else would be dropped.
  gin_registry.check_bindings_are_read("evaluate.model", "evaluate.* and the model configurable evaluate.model "
                                       "refers to")
  levels, tasks, benchmarks = _as_list(levels), _as_list(tasks), _as_list(benchmarks)
  catalog_macro = "CATALOG_DIR" if catalog_dir is not None else "CACHE_DIR"
  catalog_dir = catalog_dir if catalog_dir is not None else cache_dir  # a cache holds a copy of its catalog
  if catalog_dir is None and tasks is None:
    raise ConfigError("nothing to evaluate: set CATALOG_DIR (the bench catalog) or TASKS (registered seqio Tasks)")
  if record_requests and baseline_path:
    raise ConfigError("evaluate.record_requests: the requests serve every model of the tokenizer; unset "
                      "BASELINE_PATH and answer them once per model")
  shots = check_settings(shots=shots, checkpoint_steps=checkpoint_steps, batch_size=batch_size, dtype=dtype)
  if isinstance(checkpoint_steps, int):
    checkpoint_steps = [checkpoint_steps]
  out = pathlib.Path(eval_output_dir)
  check_output_dir(out)
  if compilation_cache_dir:  # before anything compiles: JAX reads the setting at its first compilation with a cache
    jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir))
  mesh = _make_mesh(mesh_shape)
  bench = _load_catalog(catalog_dir, catalog_macro) if catalog_dir is not None else catalog_lib.Catalog(tasks=[])
  checkpoints, problems = _find_checkpoints(checkpoint_path, checkpoint_steps)
  if record_requests:
    checkpoints = checkpoints[-1:]  # one model says which config and tokenizer the requests are for
  # 'latest' of a MODEL_DIR: older committed steps stand in, newest first, if the latest cannot be read.
  older: list[evaluator.Checkpoint] = []
  if (checkpoint_steps == "latest" and checkpoints[0].format != ANSWERS and
      discovery.kind_of(checkpoint_path) == discovery.MODEL_DIR):
    every, _ = evaluator.find_checkpoints(checkpoint_path, "all")
    older = [c for c in reversed(every) if c.step != checkpoints[0].step]
  for problem in problems:
    _LOG.warning("%s", problem)
  tokenizer_dir = _tokenizer_dir(tokenizer_dir, checkpoint_path, baseline_path)
  try:
    vocabulary = registry.default_vocabulary(tokenizer_dir)
  except (OSError, ValueError) as e:  # a missing folder, one without tokenizer files, a tokenizer without EOS
    raise ConfigError(f"evaluate.tokenizer_dir (TOKENIZER_DIR) {tokenizer_dir}: {e}") from e
  _LOG.info("tokenizer: %s", tokenizer_dir or "OPT's (shipped in the package)")
  chat = _chat_format(tokenizer_dir, vocabulary, catalog_dir, cache_dir) if chat_template else None
  if catalog_dir is not None:
    try:
      registry.register_catalog(catalog_dir, vocabulary, shots=shots, mixtures=False, cache_dir=cache_dir, chat=chat)
    except cache.CacheError as e:  # another tokenizer's cache, or a shard it lists is damaged
      raise ConfigError(f"evaluate.cache_dir (CACHE_DIR): {e}") from e
    except (OSError, ValueError) as e:  # a catalog entry that cannot be registered (its source files, its fields)
      raise ConfigError(f"{catalog_macro}: {e}") from e
  try:
    specs, failed = evaluator.select_tasks(bench, levels, shots, tasks, benchmarks, max_instances)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  specs = evaluator.note_missing_demonstrations(specs, bench)
  if not specs:
    raise ConfigError("no task to evaluate: " + ("; ".join(
        r.error for r in failed if r.error) or f"the catalog has no task at levels {list(levels)}"))
  vocabularies = _task_vocabularies(specs) or [vocabulary]
  settings = {
      "catalog_dir": catalog_dir,
      "cache_dir": cache_dir,
      "tokenizer_dir": tokenizer_dir,
      "levels": list(levels),
      "shots": shots,
      "tasks": tasks,
      "benchmarks": benchmarks,
      "max_instances": max_instances,
      "batch_size": batch_size,
      "max_new_tokens": max_new_tokens,
      "length_normalize": length_normalize,
      "share_prompts": share_prompts,
      "chat_template": chat.source if chat else None,
      "checkpoint_problems": problems
  }
  overrides = {"dtype": dtype} if dtype else {}

  def evaluate_one(checkpoint: evaluator.Checkpoint, target: pathlib.Path, name: str = label) -> report_lib.Report:
    return _evaluate_checkpoint(checkpoint, specs, failed, name, settings, target, model=model, overrides=overrides,
                                mesh=mesh, batch_size=batch_size, max_length=max_length, max_new_tokens=max_new_tokens,
                                length_normalize=length_normalize, progress=progress, share_prompts=share_prompts,
                                vocabularies=vocabularies, record_requests=record_requests,
                                end_of_turn=chat.end_of_turn if chat else None)

  if record_requests:  # into OUT/requests, which a rerun extends (a request recorded before is kept)
    return _record(evaluate_one(checkpoints[0], out), out, problems)
  with staged_output(out) as work:
    return _evaluate_all(checkpoint_path, checkpoints, older, problems, evaluate_one, baseline_path, baseline_label,
                         out, work)


def _evaluate_all(checkpoint_path: str, checkpoints: list[evaluator.Checkpoint], older: list[evaluator.Checkpoint],
                  problems: list[str], evaluate_one, baseline_path: str | None, baseline_label: str, out: pathlib.Path,
                  work: pathlib.Path) -> Summary:
  """Evaluates the baseline and every checkpoint, writing into `work` what will be `out` (`staged_output`)."""
  baseline = None
  if baseline_path:
    baseline = _baseline_report(baseline_path, lambda c, t: evaluate_one(c, t, baseline_label), work / BASELINE_DIR,
                                out / BASELINE_DIR, baseline_label)

  reports: dict[int | None, report_lib.Report] = {}
  outputs: list[str] = []
  queue = list(checkpoints)
  while queue:
    checkpoint = queue.pop(0)
    name = "" if len(checkpoints) == 1 else f"step_{checkpoint.step}"
    target, shown = (work / name, out / name) if name else (work, out)
    try:
      report = evaluate_one(checkpoint, target)
    except evaluator.CheckpointError as e:
      if len(checkpoints) == 1 and not older:
        raise
      problems.append(f"{e}; skipped")
      _LOG.error("%s; skipped", e)
      if older and not reports:  # 'latest': the next newest step stands in
        queue.append(older.pop(0))
        _LOG.warning("evaluating step %s, the newest step before it", queue[-1].step)
      continue
    if baseline is not None:
      report = report_lib.with_baseline(report, baseline)
    _write(report, target, shown)
    reports[checkpoint.step] = report
    outputs.append(str(shown))
  if not reports:
    raise evaluator.CheckpointError(f"{checkpoint_path}: no checkpoint could be read: " + "; ".join(problems))
  if len(checkpoints) > 1 and jax.process_index() == 0:
    by_step = {s: r for s, r in reports.items() if s is not None}  # several checkpoints: a MODEL_DIR's steps
    skipped = report_lib.problems_section(problems)
    (work / STEPS_TABLE).write_text(
        report_lib.steps_table(by_step) + "\n" + (f"\n{skipped}" if skipped else ""), encoding="utf-8")
    (work / STEPS_FILE).write_text(
        json.dumps({
            str(s): r["levels"] for s, r in by_step.items()
        }, indent=1) + "\n", encoding="utf-8")
    print(f"\n{report_lib.steps_table(by_step)}")
  all_results = [r for rep in reports.values() for t in rep["tasks"].values() for r in t["shots"].values()]
  return Summary(outputs=outputs, evaluated=sum(1 for r in all_results if r["error"] is None),
                 failed=sum(1 for r in all_results if r["error"] is not None), problems=problems)


def _record(report: report_lib.Report, out: pathlib.Path, problems: list[str]) -> Summary:
  """What a recording run reports: the requests folder, and the tasks that could not be recorded."""
  results = [r for t in report["tasks"].values() for r in t["shots"].values()]
  failed = [r for r in results if r["error"] is not None]
  for result in failed:
    print(f"warning: {result['task']} ({result['shots']}-shot) not recorded: {result['error']}", file=sys.stderr)
  folder = out / REQUESTS_DIR
  count = len(requests.recorded(folder)) if folder.is_dir() else 0
  print(f"\n{count} request(s) of {len(results) - len(failed)} task variant(s) recorded in {folder}; answer them with "
        f"`python -m optiml_jax.answer {folder} --checkpoint MODEL --out ANSWERS_DIR`, then pass ANSWERS_DIR as "
        "CHECKPOINT_PATH (or BASELINE_PATH)")
  return Summary(outputs=[str(folder)], evaluated=len(results) - len(failed), failed=len(failed), problems=problems)


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.eval", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  gin_utils.add_gin_flags(parser)
  parser.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first")
  parser.add_argument("--log_file", default=None,
                      help="where library tracebacks go (default: $TMPDIR/optiml_jax/eval-<time>-<pid>.log)")
  parser.add_argument("--debug", action="store_true", help="print library tracebacks on the screen too")
  return parser.parse_args(gin_utils.rewrite_gin_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  with cli_logging.session("eval", args.log_file, args.debug) as log:
    logging.getLogger("optiml_jax").setLevel(logging.INFO)  # One line per task even when a library set up logging.
    return _main(args, log)


def _main(args: argparse.Namespace, log: cli_logging.Session) -> int:
  if args.multihost:
    jax.distributed.initialize()
  try:
    gin_utils.parse(args.gin_file, args.gin_bindings, args.gin_search_paths)
    gin_utils.check_required_macros(REQUIRED_MACROS)
  except gin_utils.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    summary = evaluate()
  except (ConfigError, gin_utils.GinConfigError, FileNotFoundError) as e:
    print(f"error: {cli_logging.message(e)}", file=sys.stderr)
    return 2
  except evaluator.CheckpointError as e:
    log.report(e)
    return 1
  if summary.failed:
    print(f"warning: {summary.failed} task evaluation(s) failed; see the Errors section of the report", file=sys.stderr)
  for problem in summary.problems:
    print(f"warning: {problem}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  cli_logging.run_quietly(main)
