"""`make quickstart`: the whole flow on the embedded toy bench, on this machine, with no downloads.

1. writes the synthetic toy bench (SNI format) and builds its catalog (`python -m optiml_jax.bench toy`),
2. trains a tiny OPT from scratch on the `optiml_bench_train` mixture with gin/quickstart.gin
   (checkpoints, metrics.jsonl, TensorBoard events and loss.png under model/),
3. evaluates the last checkpoint at the three generalization levels with gin/eval.gin (rank classification
   accuracy for the multiple-choice tasks, greedy decoding and ROUGE-L for the others; per task, category and
   level beside the chance of guessing; report.md and one chart per level under eval/).

Everything goes under `--workdir` (default `quickstart_out/`): toybench/, catalog/, model/, eval/ and
jax_cache/ (compiled programs, so a second run starts faster). Safe to run twice: the toy bench is rebuilt
identically, the previous run's model/ is deleted and its eval/ outputs replaced (`evaluate` keeps other files
there). A model/ that holds anything a quickstart does not write there (`is_quickstart_model`: step folders,
config.json, tokenizer files, metrics.jsonl, tensorboard/, loss.png) is refused before anything is written (exit
2), as is a --workdir that cannot be a folder. About 100 s on two idle CPU cores. The evaluation runs in a fresh
process, so its gin configuration starts clean.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Sequence

from optiml_jax import bench
from optiml_jax import cli_flags
from optiml_jax import tempfiles
from optiml_jax import train as train_entry
from optiml_jax.checkpoints import hf as hf_lib

EVAL_INSTANCES = 20  # evaluation instances per task (the toy catalog holds 20 to 50)
EVAL_NEW_TOKENS = 16  # toy answers are a few tokens long
WARMUP_STEPS = 10  # quickstart.gin's OptimizerArgs.warmup_steps: a --train_steps run warms up at most half its steps
# What a quickstart's training writes into model/ (its MODEL_DIR), each also as the `.tmp` file a killed write leaves.
MODEL_FILES = frozenset({"config.json", "metrics.jsonl", "loss.png", "tensorboard", *hf_lib.TOKENIZER_FILES})
# Step folders, and what Orbax and the trainer make of them: `<step>.orbax-checkpoint-tmp...`, `<step>.unrestorable`.
_STEP_ENTRY = re.compile(r"\d+(\..+)?")


class UsageError(ValueError):
  """--workdir cannot be used: exit status 2, before anything is written."""


def is_quickstart_model(model_dir: pathlib.Path) -> bool:
  """Whether `model_dir` holds only what a quickstart's training writes there (`MODEL_FILES`, step folders), so that
  deleting it loses nothing of the user's. An empty folder is one."""
  for entry in model_dir.iterdir():
    name = entry.name[:-len(".tmp")] if entry.name.endswith(".tmp") else entry.name
    if name not in MODEL_FILES and not (entry.is_dir() and _STEP_ENTRY.fullmatch(name)):
      return False
  return True


def check_workdir(workdir: pathlib.Path) -> None:
  """Raises UsageError naming --workdir when it cannot hold the quickstart's folders, or when its model/ is not a
  quickstart's (`is_quickstart_model`): a rerun deletes model/, which must not take the user's files with it."""
  if workdir.exists() and not workdir.is_dir():
    raise UsageError(f"--workdir: {workdir} is a file; the quickstart needs a folder (a new one, or an earlier "
                     "quickstart's)")
  blocking = tempfiles.file_in_the_way(workdir)
  if blocking is not None:
    raise UsageError(f"--workdir: {workdir}: cannot be a folder: {blocking} is a file")
  model_dir = workdir / "model"
  if model_dir.exists() and not model_dir.is_dir():
    raise UsageError(f"--workdir: {model_dir} is a file; the quickstart trains into a folder of that name")
  if model_dir.is_dir() and not is_quickstart_model(model_dir):
    raise UsageError(f"--workdir: {model_dir} holds files a quickstart does not write (a quickstart run replaces "
                     "model/ as a whole); move them away, or pass another --workdir")


def warmup_steps(train_steps: int) -> int:
  """The warmup of a `--train_steps` run: quickstart.gin's, or half the steps when that is fewer (the warmup must
  end before the last step)."""
  return min(WARMUP_STEPS, train_steps // 2)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.quickstart", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="quickstart_out", help="folder for everything this writes")
  parser.add_argument("--train_steps", type=cli_flags.positive_int("steps"), default=None,
                      help="override TRAIN_STEPS of quickstart.gin (the warmup is then at most half of them)")
  args = parser.parse_args(argv)

  started = time.time()
  workdir = pathlib.Path(args.workdir).resolve()
  try:
    check_workdir(workdir)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  toy_dir, catalog_dir, model_dir = workdir / "toybench", workdir / "catalog", workdir / "model"
  print(f"[1/3] toy bench -> {toy_dir}, catalog -> {catalog_dir}", flush=True)
  code = bench.main(["toy", "--out", str(toy_dir), "--catalog", str(catalog_dir)])
  if code:
    return code
  if model_dir.exists():
    shutil.rmtree(model_dir)
  print(f"[2/3] training a tiny OPT from scratch -> {model_dir}", flush=True)
  flags = [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={model_dir}", f"--gin.CATALOG_DIR={catalog_dir}",
      f"--gin.RunArgs.compilation_cache_dir={workdir / 'jax_cache'}"
  ]
  if args.train_steps is not None:
    flags += [
        f"--gin.TRAIN_STEPS={args.train_steps}", f"--gin.OptimizerArgs.warmup_steps={warmup_steps(args.train_steps)}"
    ]
  code = train_entry.main(flags)
  if code:
    return code
  eval_dir = workdir / "eval"  # the evaluation replaces an earlier one's outputs there and keeps other files
  print(f"[3/3] evaluating the last checkpoint -> {eval_dir}", flush=True)
  command = [
      sys.executable, "-m", "optiml_jax.eval", "--gin_file=eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
      f"--gin.EVAL_OUTPUT_DIR={eval_dir}", f"--gin.CATALOG_DIR={catalog_dir}", f"--gin.MAX_INSTANCES={EVAL_INSTANCES}",
      f"--gin.evaluate.max_new_tokens={EVAL_NEW_TOKENS}", "--gin.evaluate.progress=False"
  ]
  quiet_tensorflow = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # TensorFlow's C++ warnings off
  code = subprocess.call(command, env=quiet_tensorflow)
  if code:
    return code
  print(f"\nquickstart done in {time.time() - started:.0f} s: loss curve {model_dir / 'loss.png'}, "
        f"report {eval_dir / 'report.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
