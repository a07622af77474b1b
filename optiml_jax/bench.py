"""Command line for the bench catalog: `python -m optiml_jax.bench {build,show,cache,toy}`.

Where it sits: the entry point of the data side. `build` reads the source checkouts with the readers in
`optiml_jax.data.sources`, builds the catalog (`optiml_jax.data.catalog`) from a bench definition
(`tasks/optiml_bench.yaml`, read by `optiml_jax.data.bench_config`) and writes `CATALOG_DIR/catalog.json`,
which the registry and the trainer read.

  python -m optiml_jax.bench build --config optiml_bench.yaml --sni_dir D [--sni_split default]
      [--p3_dir D [--promptsource_dir D]] [--bigbench_dir D] [--jsonl_dir BENCH=D ...] [--cot_dir D]
      [--text_dir D] [--tfds_data_dir D [--tfds_datasets NAME,...] [--tfds_split S] [--flan_dir D]]
      [--strict] [--no_progress] --out CATALOG_DIR
  python -m optiml_jax.bench show CATALOG_DIR [--tasks]
  python -m optiml_jax.bench cache CATALOG_DIR --out CACHE_DIR [--tokenizer_dir D] [--shots 0,5]
      [--runner=DataflowRunner ...] [other Apache Beam pipeline options]
  python -m optiml_jax.bench toy --out DIR [--seed 0] [--catalog CATALOG_DIR]

`--config` is a path, or the name of a bench definition shipped with the package (`optiml_bench.yaml`,
`toybench.yaml`; `tasks/optiml_bench.yaml` from a checkout): see `optiml_jax.resources`.

Exit status: 0 on success; 1 when `--strict` and a source file was skipped (nothing is written); 2 on a
usage or configuration error (malformed config, unknown benchmark, missing folder, a source folder with no
task in it, an output folder holding anything but an earlier catalog; nothing is written).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

from optiml_jax import resources
from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import records
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


def _name_list(value: str) -> list[str]:
  names = [n.strip() for n in value.split(",") if n.strip()]
  if not names:
    raise argparse.ArgumentTypeError(f"expected comma-separated TFDS names (e.g. glue/rte,squad), got {value!r}")
  return names


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
  build.add_argument(
      "--promptsource_dir", type=os.path.abspath,
      help="promptsource checkout (promptsource/templates/*/templates.yaml): P3 templates whose "
      "metadata.original_task is false are never evaluated on (needs --p3_dir)")
  build.add_argument("--tfds_data_dir", type=os.path.abspath,
                     help="TFDS data folder with the prepared FLAN / T5 datasets (benchmarks 'flan' and 't5')")
  build.add_argument(
      "--tfds_datasets", type=_name_list, metavar="NAME,...",
      help="only these TFDS datasets, e.g. glue/rte,super_glue/boolq (default: every registered "
      "one of the declared benchmarks flan and t5)")
  build.add_argument("--tfds_split", default="train", help="TFDS split (or slice) to read (default: train)")
  build.add_argument(
      "--flan_dir", type=os.path.abspath,
      help="checkout of google-research/FLAN (or its flan/templates.py): FLAN's own templates, read "
      "as data (default: this package's FLAN-style templates)")
  build.add_argument("--strict", action="store_true", help="exit 1, writing nothing, if any file is skipped")
  build.add_argument("--no_progress", action="store_true", help="no progress bars")
  build.add_argument("--out", required=True,
                     help="catalog folder to write: new, empty or an earlier catalog (replaced atomically)")

  show = commands.add_parser("show", help="print the summary of a built catalog")
  show.add_argument("catalog_dir")
  show.add_argument("--tasks", action="store_true", help="also list every task")

  pre = commands.add_parser(
      "cache", help="pre-tokenize a catalog into CACHE_DIR with Apache Beam",
      epilog="Other options are Apache Beam's (--runner=DataflowRunner --project=... etc.; one that resembles an "
      "option of this command, e.g. --tokenizer-dir, is refused); the local default (Beam's FnApiRunner) uses every "
      "core (--direct_num_workers).")
  pre.add_argument("catalog_dir", help="the catalog folder (bench build --out)")
  pre.add_argument("--out", required=True, help="the cache folder (created, or completed when it exists)")
  pre.add_argument("--tokenizer_dir", help="Hugging Face tokenizer folder (default: OPT's, shipped)")
  pre.add_argument("--shots", type=_shots, default=(0,), help="demonstrations to cache, comma-separated (default 0)")
  pre.add_argument("--tasks", type=lambda v: [t for t in v.split(",") if t], help="only these tasks (comma-separated)")
  pre.add_argument("--stats_length", type=int, default=2048, help="row length the truncation counts refer to")

  toy = commands.add_parser("toy", help="write the synthetic toy bench (SNI format)")
  toy.add_argument("--out", required=True,
                   help="folder to write tasks/ and splits/ into: new, empty or an earlier toy bench (replaced)")
  toy.add_argument("--seed", type=int, default=0)
  toy.add_argument("--catalog", help="also build its catalog (with tasks/toybench.yaml) into this folder")
  args, extra = parser.parse_known_args(argv)
  if extra and args.command != "cache":
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  args.pipeline_args = extra
  if args.command == "cache":
    own = [name for name in vars(args) if name not in ("command", "catalog_dir", "pipeline_args")]
    args.unknown_pipeline_args = _unknown_pipeline_args(extra, own, pre.error)
  return args


def _unknown_pipeline_args(extra: Sequence[str], own: Sequence[str], error: Callable[[str], Any]) -> list[str]:
  """The flags among the arguments `bench cache` hands to Apache Beam (those its parser left) that Beam's Python SDK
  does not know either, after refusing (`error`: exit 2) one that resembles the command's own options (`own`,
  without dashes), such as `--tokenizer-dir` for `--tokenizer_dir`: Beam would drop it with a warning, and the
  build would go on without it (with OPT's tokenizer, say)."""
  from optiml_jax.data import cache_beam  # pylint: disable=g-import-not-at-top  (Beam: only when there are extras)

  flags = [arg.split("=", 1)[0] for arg in extra if arg.startswith("-") and arg.strip("-")]
  beam = cache_beam.beam_option_flags() if flags else None
  unknown = []
  for flag in flags:
    if beam is not None and flag in beam:
      continue
    close = difflib.get_close_matches(flag.lstrip("-").replace("-", "_").lower(), own, n=1, cutoff=0.75)
    if close:
      error(f"unrecognized argument {flag}: did you mean --{close[0]}? (the other arguments are Apache Beam's "
            "pipeline options)")
    unknown.append(flag)
  return unknown


def _shots(value: str) -> tuple[int, ...]:
  try:
    shots = tuple(int(k) for k in value.split(",") if k.strip())
  except ValueError:
    shots = ()
  if not shots or min(shots) < 0:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers of demonstrations >= 0, got {value!r}")
  return shots


def _sources(args: argparse.Namespace, config: bench_config.BenchConfig):
  """Checks the source flags against the config and folders; returns (iterator, SNI splits, `_SourceFolders`)."""
  from optiml_jax.data import sources  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import sni  # pylint: disable=g-import-not-at-top

  given = {flag: getattr(args, flag) for flag in _DIR_BENCHMARKS if getattr(args, flag)}
  pairs = [(_DIR_BENCHMARKS[flag], folder) for flag, folder in given.items()] + list(args.jsonl_dir)
  tfds_dir = getattr(args, "tfds_data_dir", None)
  if not pairs and not tfds_dir:
    raise UsageError("no source given: pass at least one of --sni_dir, --p3_dir, --bigbench_dir, "
                     "--jsonl_dir, --cot_dir, --text_dir, --tfds_data_dir")
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
      needs = [
          key for key, needed in (("held_out.sni_test_split", config.held_out.sni_test_split),
                                  ("held_out.sni_train: split", config.held_out.sni_train == "split")) if needed
      ]
      if needs:
        raise UsageError(f"{e}; {config.path} needs SNI's split ({' and '.join(needs)})") from e
    except ValueError as e:  # an unreadable split file
      raise UsageError(str(e)) from e
  metadata = _promptsource_metadata(args)
  iterator = sources.iter_all(sni_dir=args.sni_dir, p3_dir=args.p3_dir, bigbench_dir=args.bigbench_dir,
                              jsonl_dirs=list(args.jsonl_dir), cot_dir=args.cot_dir, text_dir=args.text_dir,
                              p3_metadata=metadata)
  folders = _SourceFolders(
      iterator, {
          **{
              f"--{flag} {folder}": folder for flag, folder in given.items()
          },
          **{
              f"--jsonl_dir {benchmark}={folder}": folder for benchmark, folder in args.jsonl_dir
          }
      })
  if tfds_dir:
    return itertools.chain(folders, _tfds_sources(args, config)), splits, folders
  return folders, splits, folders


class _SourceFolders:
  """The readers' stream, passed through, noting which of the given source folders something was read from.

  Args:
    stream: what `sources.iter_all` yields (tasks and skipped files, each with its `path`).
    folders: {the flag as given, e.g. "--p3_dir /data/p3": its folder}.
  """

  def __init__(self, stream: Iterable[records.TaskSource | records.Skipped], folders: dict[str, str]):
    self._stream = stream
    # As given and with links resolved: a folder may be a link, and so may the files in it (to another checkout).
    self._folders = {
        flag: {os.path.join(resolve(folder), "") for resolve in (os.path.abspath, os.path.realpath)}
        for flag, folder in folders.items()
    }
    self._seen: set[str] = set()

  def __iter__(self) -> Iterator[records.TaskSource | records.Skipped]:
    for item in self._stream:
      paths = (os.path.abspath(item.path), os.path.realpath(item.path))
      self._seen.update(
          flag for flag, prefixes in self._folders.items() if any(p.startswith(f) for p in paths for f in prefixes))
      yield item

  def check(self) -> None:
    """UsageError naming every given folder that yielded neither a task nor a skipped file."""
    empty = [flag for flag in self._folders if flag not in self._seen]
    if empty:
      raise UsageError(f"no task found in {'; '.join(empty)}: is it the right folder? (each reader's layout: "
                       "docs/bench.md, 'Readers of the original formats')")


def _promptsource_metadata(args: argparse.Namespace):
  """promptsource's template metadata for `--promptsource_dir` (None without it)."""
  folder = getattr(args, "promptsource_dir", None)
  if not folder:
    return None
  from optiml_jax.data.sources import promptsource  # pylint: disable=g-import-not-at-top
  if not args.p3_dir:
    raise UsageError("--promptsource_dir marks P3 templates: it needs --p3_dir")
  try:
    metadata = promptsource.read_metadata(folder)
  except FileNotFoundError as e:
    raise UsageError(str(e)) from e
  print(
      f"promptsource metadata: {metadata.files} templates.yaml file(s) from {metadata.root}, "
      f"{len(metadata.flags)} templates, {len(metadata.not_original())} not the original task", file=sys.stderr)
  return metadata


def _tfds_sources(args: argparse.Namespace, config: bench_config.BenchConfig):
  """The FLAN / T5 tasks of `--tfds_data_dir` (benchmarks the config declares), FLAN's templates if given."""
  from optiml_jax.data.sources import flan_templates  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import tfds as tfds_source  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(args.tfds_data_dir):
    raise UsageError(f"source folder not found: {args.tfds_data_dir} (--tfds_data_dir, benchmarks flan and t5)")
  benchmarks = [b for b in flan_templates.BENCHMARKS if b in config.benchmarks]
  if not benchmarks:
    raise UsageError(f"{config.path}: benchmarks: declares neither flan nor t5, but --tfds_data_dir was given")
  flan = None
  if args.flan_dir:
    try:
      flan = flan_templates.load_flan_datasets(args.flan_dir)
    except (OSError, ValueError) as e:
      raise UsageError(f"--flan_dir: {e}") from e
    print(f"FLAN templates: {flan.num_templates} from {flan.path}", file=sys.stderr)
    if flan.missing_keys:
      print(f"  no PATTERNS entry (our templates kept): {', '.join(flan.missing_keys)}", file=sys.stderr)
    for note in flan.unusable:
      print(f"  not used: {note}", file=sys.stderr)
  # Each task's first held-out instances come on top of its training examples.
  caps = {
      b: (config.benchmarks[b].max_examples_per_task or config.max_examples_per_task) +
         max(config.held_out_instances_per_task, config.max_eval_instances) for b in benchmarks
  }
  try:
    tfds_source.select(args.tfds_datasets, benchmarks, flan.datasets if flan is not None else None)
  except KeyError as e:
    raise UsageError(f"--tfds_datasets: {e.args[0]}") from e
  return tfds_source.iter_tasks(args.tfds_data_dir, split=args.tfds_split, benchmarks=benchmarks, max_examples=caps,
                                datasets=args.tfds_datasets, flan=flan)


def run_build(args: argparse.Namespace) -> int:
  try:
    config_path = resources.find_task_file(args.config)
  except resources.ResourceError as e:
    raise UsageError(str(e)) from e
  config = bench_config.load_config(config_path)
  _check_out(args.out)
  iterator, splits, folders = _sources(args, config)
  try:
    built = catalog.build(config, iterator, splits, progress=not args.no_progress)
  except ValueError as e:  # a task of an undeclared benchmark, no trainable task, ...
    raise UsageError(str(e)) from e
  folders.check()
  for skipped in built.skipped:
    print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
  print(catalog.summary(built))
  if args.strict and built.skipped:
    print(f"error: --strict: {len(built.skipped)} source file(s) skipped; nothing written", file=sys.stderr)
    return 1
  path = built.save(args.out)
  print(f"wrote {path}")
  return 0


def _check_out(out: str) -> None:
  try:
    catalog.check_out_dir(out)
  except ValueError as e:
    raise UsageError(f"--out: {e}") from e


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


def run_cache(args: argparse.Namespace) -> int:
  """Builds or completes the cache; exit 1 when a task failed (the others are written and listed)."""
  import logging  # pylint: disable=g-import-not-at-top

  from optiml_jax.data import cache_beam  # pylint: disable=g-import-not-at-top

  logging.getLogger("apache_beam").setLevel(logging.ERROR)  # our report names failed tasks; Beam's chatter is noise
  unknown = getattr(args, "unknown_pipeline_args", ())
  if unknown:
    print(
        f"warning: {', '.join(unknown)}: neither an option of `bench cache` nor a pipeline option Apache Beam "
        "knows; passed to the runner as given (Beam's local runner ignores it)", file=sys.stderr)
  try:
    result = cache_beam.build(args.catalog_dir, args.out, tokenizer_dir=args.tokenizer_dir, shots=args.shots,
                              stats_length=args.stats_length, pipeline_args=args.pipeline_args, tasks=args.tasks)
  except (OSError, ValueError, RuntimeError) as e:  # no catalog, another tokenizer's cache (CacheError), no Beam
    raise UsageError(str(e)) from e
  print(result.describe())
  if result.failed:
    print(f"error: {len(result.failed)} task variant(s) failed; the other shards are written (rerun to retry)",
          file=sys.stderr)
    return 1
  return 0


def run_toy(args: argparse.Namespace) -> int:
  if args.catalog:
    if os.path.realpath(args.catalog) == os.path.realpath(args.out):
      raise UsageError(f"--catalog and --out are the same folder ({args.out}): the catalog needs one of its own")
    _check_out(args.catalog)
  try:
    out = toybench.write(os.path.abspath(args.out), seed=args.seed)
  except ValueError as e:
    raise UsageError(f"--out: {e}") from e
  print(f"wrote the toy bench to {out} ({len(toybench.TASKS)} tasks)")
  if args.catalog:
    return run_build(
        argparse.Namespace(config=str(toybench.CONFIG_PATH), sni_dir=str(out), sni_split="default", p3_dir=None,
                           bigbench_dir=None, jsonl_dir=[], cot_dir=None, text_dir=None, promptsource_dir=None,
                           tfds_data_dir=None, tfds_datasets=None, tfds_split="train", flan_dir=None, strict=True,
                           no_progress=True, out=args.catalog))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  commands = {"build": run_build, "show": run_show, "cache": run_cache, "toy": run_toy}
  try:
    code = commands[args.command](args)
    sys.stdout.flush()  # here, so that a reader gone early is caught below rather than at exit
    return code
  except (UsageError, bench_config.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `bench show --tasks | head`: the reader stopped early, which is no error of ours
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting does not flush into it again
    return 0


if __name__ == "__main__":
  sys.exit(main())
