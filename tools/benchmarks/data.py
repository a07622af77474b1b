"""Throughput of the data pipeline (formatting, tokenization, packing) against the Hugging Face tokenizer alone.

Where it sits: a developer tool beside optiml_jax/data; nothing imports it. It builds a catalog from SNI-format
tasks (the real sample in ../shared/data/natural-instructions by default, else the toy bench), registers it
and times, on the same training examples:

  hf_tokenizer   transformers' fast tokenizer (OPT's, or --tokenizer_dir's) on the joined texts,
                 source.rstrip(" ") + " " + target
                 (the floor: tokenization alone, texts prepared beforehand, batched calls);
  format+tok     registry.iter_examples: reading, formatting (delimiter, demonstrations) and tokenizing, in Python;
  pipeline       pipeline.BatchStream over a mixture of the tasks: the above inside seqio/tf.data, plus
                 truncation, mixing, shuffling, packing and batching (steady state, after the first batch).

examples/s counts source examples (segments, for packed rows), tokens/s the non-padding positions
(inputs + targets of each example). The ratio hf_tokenizer / pipeline is the cost the pipeline adds.
Example:

  python tools/benchmarks/data.py --max_tasks 40 --batches 30
  python tools/benchmarks/data.py --tokenizer_dir ~/.cache/optiml_jax/smollm2/SmolLM2-135M-Instruct

The paper's scale (`--tasks N`): a catalog of N tasks made from the SNI sample copied under new task numbers
(plus P3's templates when the sample has them), the `optiml_bench_train` mixture over its training tasks, and the
figures a restarted pod run pays: registration, the first packed batch, steady tokens/s, resuming at a late
batch, and peak resident memory. `--cache` builds the bench cache first (Apache Beam, FnApiRunner over every
core; timed) and reads batches from it (`cached_stream.CachedBatchStream`; `--reader seqio`: the same cache
through the seqio Tasks, mixture and tf.data instead, as seqio's own cached tasks would run); without it, the
uncached seqio pipeline (`pipeline.BatchStream`, whose resume replays the batches before the position).

  python tools/benchmarks/data.py --tasks 2000 --cache --inputs_length 1536 --targets_length 512 --batches 200
  python tools/benchmarks/data.py --tasks 2000 --batches 40      # the uncached path (minutes to the first batch)
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import re
import resource
import shutil
import sys
import tempfile
import time

import transformers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: optiml_jax uninstalled

from optiml_jax.data import bench_config
from optiml_jax.data import cache_beam
from optiml_jax.data import cached_stream
from optiml_jax.data import catalog
from optiml_jax.data import formatting
from optiml_jax.data import pipeline
from optiml_jax.data import registry
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data.sources import sni

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_SNI = REPO.parent / "shared" / "data" / "natural-instructions"
DEFAULT_P3 = REPO.parent / "shared" / "data" / "p3"
TASK_FILE = re.compile(r"^task(\d+)_(.+)\.json$")


def _build(sni_dir: pathlib.Path, max_tasks: int, out_dir: pathlib.Path) -> catalog.Catalog:
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  tasks = itertools.islice(sources.iter_all(sni_dir=sni_dir), max_tasks)
  built = catalog.build(config, tasks, sni.read_split(sni_dir))
  built.save(out_dir)
  return built


def replicate_sni(sni_dir: pathlib.Path, copies: int, out: pathlib.Path) -> pathlib.Path:
  """An SNI checkout with every task of `sni_dir` `copies` times, copy k renumbered by k * 10000 (task020_x ->
  task10020_x), and split files listing the copies where the originals are listed."""
  numbered = [(m, f) for f in sorted((sni_dir / "tasks").glob("task*.json")) if (m := TASK_FILE.match(f.name))]
  (out / "tasks").mkdir(parents=True, exist_ok=True)
  renamed: dict[str, list[str]] = {}
  for m, f in numbered:
    for k in range(copies):
      name = f"task{int(m.group(1)) + 10000 * k}_{m.group(2)}"
      shutil.copyfile(f, out / "tasks" / f"{name}.json")
      renamed.setdefault(f.stem, []).append(name)
  for split_file in (sni_dir / "splits").glob("*/*_tasks.txt"):
    target = out / "splits" / split_file.parent.name / split_file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    names = [n.strip().removesuffix(".json") for n in split_file.read_text(encoding="utf-8").splitlines()]
    target.write_text("\n".join(c for n in names if n for c in renamed.get(n, [n])) + "\n", encoding="utf-8")
  return out


def _build_replicated(sni_dir: pathlib.Path, p3_dir: pathlib.Path | None, tasks: int,
                      out_dir: pathlib.Path) -> catalog.Catalog:
  p3_count = len(list((p3_dir / "data_per_template").iterdir())) if p3_dir else 0
  sni_count = len(list((sni_dir / "tasks").glob("task*.json")))
  copies = max(1, -(-(tasks - p3_count) // sni_count))
  replica = replicate_sni(sni_dir, copies, out_dir.parent / "sni_replica")
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  read = itertools.islice(sources.iter_all(sni_dir=replica, p3_dir=p3_dir), tasks)
  built = catalog.build(config, read, sni.read_split(replica))
  built.save(out_dir)
  return built


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _count(batch: dict) -> tuple[int, int]:
  segments = batch["decoder_segment_ids"]
  return int(((batch["decoder_positions"] == 0) & (segments > 0)).sum()), int((segments > 0).sum())


def paper_scale(args: argparse.Namespace, work: pathlib.Path) -> None:
  """The `--tasks N` figures (module docstring)."""
  sni_dir, p3_dir = pathlib.Path(args.sni_dir), pathlib.Path(args.p3_dir)
  if not (sni_dir / "tasks").is_dir():
    raise SystemExit(f"{sni_dir}: no SNI checkout; --tasks needs one (the ../shared sample)")
  start = time.perf_counter()
  built = _build_replicated(sni_dir, p3_dir if (p3_dir / "data_per_template").is_dir() else None, args.tasks,
                            work / "catalog")
  train = [e for e in built.tasks if e.role == catalog.TRAIN and e.num_examples > 0]
  print(f"catalog: {len(built.tasks)} tasks ({len(train)} training, {sum(e.num_examples for e in train)} training "
        f"examples) in {time.perf_counter() - start:.1f} s")
  cache_dir = None
  if args.cache:
    start = time.perf_counter()
    result = cache_beam.build(
        work / "catalog", work / "cache", tokenizer_dir=args.tokenizer_dir,
        pipeline_args=[f"--direct_num_workers={args.cache_workers}"] if args.cache_workers else [])
    print(f"cache build (Apache Beam, FnApiRunner): {time.perf_counter() - start:.1f} s; {result.describe()}")
    cache_dir = str(work / "cache")
  vocabulary = vocab_lib.load(args.tokenizer_dir)
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}

  def make():
    if cache_dir and args.reader == "index":
      return cached_stream.CachedBatchStream(registry.TRAIN_MIXTURE, lengths, args.batch_size, 0, cache_dir=cache_dir)
    return pipeline.BatchStream(registry.TRAIN_MIXTURE, "train", lengths, args.batch_size, seed=0)

  start = time.perf_counter()
  registry.register_catalog(work / "catalog", vocabulary, cache_dir=cache_dir)
  register_seconds = time.perf_counter() - start
  stream = make()
  start = time.perf_counter()
  next(stream)
  first_seconds = time.perf_counter() - start
  # Two windows: the first opens the sources (or shards) of most tasks as they are first drawn; the second is
  # the steady state a long run sees.
  windows = []
  for n in (args.batches // 2, args.batches - args.batches // 2):
    start = time.perf_counter()
    examples = tokens = 0
    for batch in itertools.islice(stream, n):
      e, t = _count(batch)
      examples, tokens = examples + e, tokens + t
    windows.append((n, examples, tokens, time.perf_counter() - start))
  saved = stream.state()
  start = time.perf_counter()
  resumed = make()
  resumed.restore(saved)
  next(resumed)
  resume_seconds = time.perf_counter() - start
  rows = args.inputs_length + args.targets_length
  mode = {
      "index": "cached, drawn by index (CachedBatchStream)",
      "seqio": "cached Tasks through seqio/tf.data (BatchStream over the cache's Tasks)"
  }[args.reader] if cache_dir else "uncached (seqio BatchStream)"
  print(f"\n{mode}, {len(train)} training tasks, rows of {rows}, batch {args.batch_size}:")
  print(f"  register_catalog       {register_seconds:8.1f} s")
  print(f"  first packed batch     {first_seconds:8.1f} s")
  for label, (n, examples, tokens, seconds) in zip(("batches 2..", "then"), windows):
    print(f"  {label:<12} {n:>4d} batches {tokens / seconds:10.0f} tokens/s ({examples / seconds:.0f} examples/s, "
          f"rows {tokens / (n * args.batch_size * rows):.1%} full)")
  print(f"  resume at batch {saved['batches_consumed']:<5d}  {resume_seconds:8.3f} s (restore + the next batch)")
  print(f"  peak resident memory   {_peak_rss_gb():8.2f} GB")
  print(
      json.dumps({
          "tasks": len(built.tasks),
          "training_tasks": len(train),
          "mode": "uncached" if not cache_dir else args.reader,
          "register_s": round(register_seconds, 2),
          # Milliseconds kept: a cached stream's first batch and resume can take under 5 ms.
          "first_batch_s": round(first_seconds, 4),
          "tokens_per_s": [round(w[2] / w[3]) for w in windows],
          "resume_s": round(resume_seconds, 4),
          "peak_rss_gb": round(_peak_rss_gb(), 2),
      }))


def _report(name: str, examples: int, tokens: int, seconds: float) -> tuple[float, float]:
  eps, tps = examples / seconds, tokens / seconds
  print(f"{name:<14} {examples:>8d} examples {tokens:>10d} tokens {seconds:>8.2f} s "
        f"{eps:>10.1f} examples/s {tps:>12.0f} tokens/s")
  return eps, tps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sni_dir", default=str(DEFAULT_SNI), help="SNI checkout; toy bench if absent")
  parser.add_argument("--max_tasks", type=int, default=40, help="tasks read from the checkout")
  parser.add_argument("--shots", type=int, default=0, help="demonstrations per example")
  parser.add_argument("--inputs_length", type=int, default=1536)
  parser.add_argument("--targets_length", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=30, help="timed batches (after the first)")
  parser.add_argument(
      "--tokenizer_dir", help="a Hugging Face tokenizer folder (e.g. a converted SmolLM2 folder); "
      "default: OPT's, shipped in the package")
  parser.add_argument("--tasks", type=int, help="the paper-scale figures over a replicated catalog of this many tasks")
  parser.add_argument("--p3_dir", default=str(DEFAULT_P3), help="P3 folder added to the replicated catalog")
  parser.add_argument("--cache", action="store_true", help="with --tasks: build the bench cache and read from it")
  parser.add_argument(
      "--reader", choices=("index", "seqio"), default="index",
      help="with --cache: draw batches by index (the trainer's reader) or run the cache's seqio Tasks "
      "through seqio's mixture and tf.data (what seqio's own cached tasks would cost)")
  parser.add_argument("--cache_workers", type=int, default=0, help="local Beam worker processes (default: every core)")
  args = parser.parse_args()

  work = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
  if args.tasks:
    paper_scale(args, work)
    return
  sni_dir = pathlib.Path(args.sni_dir)
  if not (sni_dir / "tasks").is_dir():
    print(f"{sni_dir} not found: using the toy bench")
    sni_dir = toybench.write(work / "toy", seed=0)
  built = _build(sni_dir, args.max_tasks, work / "catalog")
  vocabulary = vocab_lib.load(args.tokenizer_dir)
  registry.register_catalog(work / "catalog", vocabulary, shots=(args.shots,), mixtures=False)
  train = [e for e in built.tasks if e.role == catalog.TRAIN and e.num_examples > 0]
  names = [registry.variant_name(e.name, args.shots) for e in train]
  registry.add_mixture("bench_data_mix", names)
  print(f"{len(train)} training tasks, {sum(e.num_examples for e in train)} examples, shots={args.shots}, "
        f"rows of {args.inputs_length + args.targets_length} tokens, batch {args.batch_size}")

  # Format + tokenize in Python (registry.iter_examples), collecting the joined texts for the HF tokenizer.
  start = time.perf_counter()
  texts, count, tokens = [], 0, 0
  for entry in train:
    task = sources.reopen(entry.format, entry.path, entry.benchmark)
    for ex in registry.iter_examples(entry, task, registry.TRAIN_SPLIT, args.shots, vocabulary):
      count += 1
      tokens += ex["inputs"].size + ex["targets"].size
      source, target = formatting.token_texts(ex["inputs_pretokenized"], ex["targets_pretokenized"])
      texts.append(source + target)
  format_seconds = time.perf_counter() - start

  hf = transformers.AutoTokenizer.from_pretrained(str(args.tokenizer_dir or vocab_lib.DEFAULT_TOKENIZER_DIR))
  start = time.perf_counter()
  hf_tokens = 0
  for i in range(0, len(texts), 64):
    hf_tokens += sum(len(ids) for ids in hf(texts[i:i + 64], add_special_tokens=False)["input_ids"])
  hf_seconds = time.perf_counter() - start
  hf_tokens += len(texts) * (1 + len(vocabulary.prefix_ids))  # + EOS (and BOS), as the pipeline counts them

  stream = pipeline.BatchStream("bench_data_mix", "train", {
      "inputs": args.inputs_length,
      "targets": args.targets_length
  }, args.batch_size, seed=0)
  start = time.perf_counter()
  next(stream)
  first_seconds = time.perf_counter() - start
  start = time.perf_counter()
  p_examples = p_tokens = 0
  for batch in itertools.islice(stream, args.batches):
    segments = batch["decoder_segment_ids"]
    p_examples += int(((batch["decoder_positions"] == 0) & (segments > 0)).sum())
    p_tokens += int((segments > 0).sum())
  pipe_seconds = time.perf_counter() - start
  fill = p_tokens / (args.batches * args.batch_size * (args.inputs_length + args.targets_length))

  print()
  _, hf_tps = _report("hf_tokenizer", len(texts), hf_tokens, hf_seconds)
  _report("format+tok", count, tokens, format_seconds)
  _, pipe_tps = _report("pipeline", p_examples, p_tokens, pipe_seconds)
  print(f"pipeline: first batch after {first_seconds:.1f} s (graph building, shuffle buffers, first window); "
        f"rows {fill:.1%} full")
  print(f"hf_tokenizer / pipeline tokens/s: {hf_tps / pipe_tps:.1f}x")
  print(f"resuming after N batches re-reads them: about N x {pipe_seconds / args.batches:.2f} s")


if __name__ == "__main__":
  main()
