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
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import tempfile
import time

import transformers

from optiml_jax.data import bench_config
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


def _build(sni_dir: pathlib.Path, max_tasks: int, out_dir: pathlib.Path) -> catalog.Catalog:
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  tasks = itertools.islice(sources.iter_all(sni_dir=sni_dir), max_tasks)
  built = catalog.build(config, tasks, sni.read_split(sni_dir))
  built.save(out_dir)
  return built


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
  args = parser.parse_args()

  work = pathlib.Path(tempfile.mkdtemp(prefix="bench_data_"))
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
