"""`make quickstart`: the whole flow on the embedded toy bench, on this machine, with no downloads.

1. writes the synthetic toy bench (SNI format) and builds its catalog (`python -m optiml_jax.bench toy`),
2. trains a tiny OPT from scratch on the `optiml_bench_train` mixture with gin/quickstart.gin,
3. prints where everything went: checkpoints, metrics.jsonl, TensorBoard events and the loss plot.

Everything goes under `--workdir` (default `quickstart_out/`): toybench/, catalog/, model/ and jax_cache/
(compiled programs, so a second run starts faster). Safe to run twice: the toy bench is rebuilt identically
and the previous run's model folder is replaced. Two to four minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time
from typing import Sequence

from optiml_jax import bench
from optiml_jax import train as train_entry


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.quickstart", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="quickstart_out", help="folder for everything this writes")
  parser.add_argument("--train_steps", type=int, default=None, help="override TRAIN_STEPS of quickstart.gin")
  args = parser.parse_args(argv)

  started = time.time()
  workdir = pathlib.Path(args.workdir).resolve()
  toy_dir, catalog_dir, model_dir = workdir / "toybench", workdir / "catalog", workdir / "model"
  print(f"[1/2] toy bench -> {toy_dir}, catalog -> {catalog_dir}", flush=True)
  code = bench.main(["toy", "--out", str(toy_dir), "--catalog", str(catalog_dir)])
  if code:
    return code
  if model_dir.exists():
    shutil.rmtree(model_dir)
  print(f"[2/2] training a tiny OPT from scratch -> {model_dir}", flush=True)
  flags = ["--gin_file=quickstart.gin", f"--gin.MODEL_DIR={model_dir}", f"--gin.CATALOG_DIR={catalog_dir}",
           f"--gin.train.compilation_cache_dir={workdir / 'jax_cache'}"]
  if args.train_steps:
    flags.append(f"--gin.TRAIN_STEPS={args.train_steps}")
  code = train_entry.main(flags)
  if code:
    return code
  print(f"\nquickstart done in {time.time() - started:.0f} s. Next: evaluate the model with\n"
        f"  python -m optiml_jax.eval --gin_file=gin/eval.gin --gin.CHECKPOINT_PATH={model_dir} "
        f"--gin.EVAL_OUTPUT_DIR={workdir / 'eval'} --gin.CATALOG_DIR={catalog_dir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
