"""Command line for the bench catalog: `python -m optiml_jax.bench {build,show,toy}`.

Where it sits: the entry point of the data side. `build` reads the source checkouts with the readers in
`optiml_jax.data.sources`, builds the catalog (`optiml_jax.data.catalog`) from a bench definition
(`tasks/optiml_bench.yaml`, read by `optiml_jax.data.bench_config`) and writes `CATALOG_DIR/catalog.json`,
which the registry and the trainer read.

  python -m optiml_jax.bench build --config optiml_bench.yaml --sni_dir D [--sni_split default]
      [--p3_dir D] [--bigbench_dir D] [--jsonl_dir BENCH=D ...] [--cot_dir D] [--text_dir D]
      [--strict] [--no_progress] --out CATALOG_DIR
  python -m optiml_jax.bench show CATALOG_DIR [--tasks]
  python -m optiml_jax.bench toy --out DIR [--seed 0] [--catalog CATALOG_DIR]

`--config` is a path, or the name of a bench definition shipped with the package (`optiml_bench.yaml`,
`toybench.yaml`; `tasks/optiml_bench.yaml` from a checkout): see `optiml_jax.resources`.

Exit status: 0 on success; 1 when `--strict` and a source file was skipped (nothing is written); 2 on a
usage or configuration error (malformed config, unknown benchmark, missing folder; nothing is written).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from optiml_jax import resources
from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import toybench

# Source flag -> the benchmark its tasks belong to (must be declared in the config).
_DIR_BENCHMARKS = {
    "sni_dir": "sni",
    "p3_dir": "promptsource",
    "bigbench_dir": "bigbench",
    "cot_dir": "reasoning",
    "text_dir": "pretraining"
}


class UsageError(Exception):
  """A usage or configuration error: exit status 2, nothing written."""


def _jsonl_pair(value: str) -> tuple[str, str]:
  benchmark, sep, folder = value.partition("=")
  if not sep or not benchmark or not folder:
    raise argparse.ArgumentTypeError(f"expected BENCH=DIR (e.g. crossfit=/data/crossfit), got {value!r}")
  return benchmark, os.path.abspath(folder)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.bench", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)

  build = commands.add_parser("build", help="read the sources and write CATALOG_DIR/catalog.json")
  build.add_argument("--config", required=True,
                     help="bench definition: a path, or a shipped one by name (e.g. optiml_bench.yaml)")
  build.add_argument("--sni_dir", type=os.path.abspath, help="natural-instructions checkout (tasks/ and splits/)")
  build.add_argument("--sni_split", default="default", help="SNI split folder under splits/ (default: default)")
  build.add_argument("--p3_dir", type=os.path.abspath, help="P3 per-template JSONL folder (PromptSource)")
  build.add_argument("--bigbench_dir", type=os.path.abspath, help="folder of BIG-bench task folders")
  build.add_argument("--jsonl_dir", type=_jsonl_pair, action="append", default=[], metavar="BENCH=DIR",
                     help="generic JSONL folder of a benchmark declared in the config (repeatable)")
  build.add_argument("--cot_dir", type=os.path.abspath, help="chain-of-thought JSONL folder (benchmark 'reasoning')")
  build.add_argument("--text_dir", type=os.path.abspath, help="pre-training text folder (benchmark 'pretraining')")
  build.add_argument("--strict", action="store_true", help="exit 1, writing nothing, if any file is skipped")
  build.add_argument("--no_progress", action="store_true", help="no progress bars")
  build.add_argument("--out", required=True, help="catalog folder to write (replaced atomically)")

  show = commands.add_parser("show", help="print the summary of a built catalog")
  show.add_argument("catalog_dir")
  show.add_argument("--tasks", action="store_true", help="also list every task")

  toy = commands.add_parser("toy", help="write the synthetic toy bench (SNI format)")
  toy.add_argument("--out", required=True, help="folder to write tasks/ and splits/ into")
  toy.add_argument("--seed", type=int, default=0)
  toy.add_argument("--catalog", help="also build its catalog (with tasks/toybench.yaml) into this folder")
  return parser.parse_args(argv)


def _sources(args: argparse.Namespace, config: bench_config.BenchConfig):
  """Checks the source flags against the config and folders; returns (iterator, SNI splits)."""
  from optiml_jax.data import sources  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import sni  # pylint: disable=g-import-not-at-top

  given = {flag: getattr(args, flag) for flag in _DIR_BENCHMARKS if getattr(args, flag)}
  pairs = [(_DIR_BENCHMARKS[flag], folder) for flag, folder in given.items()] + list(args.jsonl_dir)
  if not pairs:
    raise UsageError("no source given: pass at least one of --sni_dir, --p3_dir, --bigbench_dir, "
                     "--jsonl_dir, --cot_dir, --text_dir")
  for benchmark, folder in pairs:
    if benchmark not in config.benchmarks:
      raise UsageError(f"{config.path}: benchmarks.{benchmark}: not declared, but a source folder of it was "
                       f"given ({folder})")
    if not os.path.isdir(folder):
      raise UsageError(f"source folder not found: {folder} (benchmark {benchmark})")
  splits = None
  if args.sni_dir:
    try:
      splits = sni.read_split(args.sni_dir, args.sni_split)
    except FileNotFoundError as e:
      if config.held_out.sni_test_split:
        raise UsageError(f"{e}; {config.path} holds out SNI's test split (held_out.sni_test_split)") from e
  iterator = sources.iter_all(sni_dir=args.sni_dir, p3_dir=args.p3_dir, bigbench_dir=args.bigbench_dir,
                              jsonl_dirs=list(args.jsonl_dir), cot_dir=args.cot_dir, text_dir=args.text_dir)
  return iterator, splits


def run_build(args: argparse.Namespace) -> int:
  try:
    config_path = resources.find_task_file(args.config)
  except resources.ResourceError as e:
    raise UsageError(str(e)) from e
  config = bench_config.load_config(config_path)
  iterator, splits = _sources(args, config)
  try:
    built = catalog.build(config, iterator, splits, progress=not args.no_progress)
  except ValueError as e:  # a task of an undeclared benchmark, no trainable task, ...
    raise UsageError(str(e)) from e
  for skipped in built.skipped:
    print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
  print(catalog.summary(built))
  if args.strict and built.skipped:
    print(f"error: --strict: {len(built.skipped)} source file(s) skipped; nothing written", file=sys.stderr)
    return 1
  path = built.save(args.out)
  print(f"wrote {path}")
  return 0


def run_show(args: argparse.Namespace) -> int:
  try:
    built = catalog.load(args.catalog_dir)
  except (OSError, ValueError) as e:
    raise UsageError(str(e)) from e
  print(catalog.summary(built))
  if args.tasks:
    print()
    for t in sorted(built.tasks, key=lambda t: (t.benchmark, t.role, t.name)):
      print(f"{t.name}\t{t.role}\t{t.category}\t{t.num_examples}\t{t.num_eval_instances}\t{t.rate:.6f}")
  return 0


def run_toy(args: argparse.Namespace) -> int:
  out = toybench.write(os.path.abspath(args.out), seed=args.seed)
  print(f"wrote the toy bench to {out} ({len(toybench.TASKS)} tasks)")
  if args.catalog:
    return run_build(
        argparse.Namespace(config=str(toybench.CONFIG_PATH), sni_dir=str(out), sni_split="default", p3_dir=None,
                           bigbench_dir=None, jsonl_dir=[], cot_dir=None, text_dir=None, strict=True, no_progress=True,
                           out=args.catalog))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  commands = {"build": run_build, "show": run_show, "toy": run_toy}
  try:
    return commands[args.command](args)
  except (UsageError, bench_config.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
