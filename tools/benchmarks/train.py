r"""Train-step throughput of our trainer against Hugging Face PyTorch on the same model, machine and batch.

Measures, in one process and on the same random token batch shape, for a preset of any family
(models/registry.py: OPT, Llama, Mistral, Qwen2, SmolLM2):
  ours      the jit-ed, mesh-sharded step that `trainer.loop.run` runs (`loop.build_program`): the OPT-IML
            AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1, clipping at 1.0), float32 master weights and
            optimizer state, compute in --dtype;
  hf_torch  transformers' causal LM of the same architecture, built from the config's `to_hf()` (hf_peer.py:
            OPTForCausalLM, LlamaForCausalLM, ...; sdpa attention) with `torch.optim.AdamW` (same figures, fused
            on GPU) and the same clipping; float32 weights, bf16 autocast when --dtype bfloat16; packed rows
            (--packed K) with `position_ids` that restart at each segment and a block-diagonal causal mask for
            sdpa (`hf_inputs`);
as ../shared/tools/gpu_anchor_bench.py measures its anchors: dropout off, a few warm-up steps (compilation
included), then --steps timed steps with a device sync at the end; MFU = tokens/s x the config's
`flops_per_token` (6 N + 12 L x attention width x S, N = matmul parameters including the LM head) / peak.
Prints a line per part and one JSON line with the ratio.

  python tools/benchmarks/train.py                        # CPU: opt-125m cut to 2 layers, 1 x 256, ~1 minute
  python tools/benchmarks/train.py --preset llama-tiny --batch 2 --seq 64                 # CPU: a tiny Llama
  python tools/benchmarks/train.py --preset opt-125m --batch 16 --seq 2048             # GPU: bf16 compute
  python tools/benchmarks/train.py --preset opt-1.3b --batch 8 --seq 2048 --attention_impl cudnn
  python tools/benchmarks/train.py --preset llama-3.2-1b --batch 8 --seq 2048 --attention_impl cudnn
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: optiml_jax uninstalled

from optiml_jax import cli_flags  # imports no JAX

if TYPE_CHECKING:  # imported where used: JAX must not start before the memory fraction below is set
  from optiml_jax.models import registry

# On a GPU, JAX's pool takes 75% of memory by default; HF's run (first) hands its memory back before JAX
# starts, so let JAX have what transformers may use, unless the caller chose a fraction under either name
# (jaxlib refuses to start a GPU with both set).
if not {"XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"} & os.environ.keys():
  os.environ["XLA_CLIENT_MEM_FRACTION"] = "0.9"  # the current name (jax 0.6 on); the old one is deprecated


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      "--preset", default="opt-125m",
      help="a preset of any family (models/registry.py: tiny, opt-1.3b, llama-tiny, smollm2-135m, "
      "llama-3.2-1b, qwen2.5-0.5b, ...)")
  parser.add_argument("--layers", type=int, default=None,
                      help="number of layers; 0: the preset's (default: 2 on a CPU, the preset's on a GPU)")
  parser.add_argument("--batch", type=int, default=1, help="sequences per step")
  parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
  parser.add_argument("--steps", type=cli_flags.positive_int("timed steps"), default=3, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation included; 0: none)")
  parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                      help="compute dtype (default: bfloat16 on a GPU, float32 on a CPU)")
  parser.add_argument(
      "--remat", default="none", help="our remat policy: none, full, dots, dots_with_no_batch_dims, "
      "dots_with_no_batch_dims_and_attention")
  parser.add_argument("--no_scan", dest="scan_layers", action="store_false",
                      help="ours: the layers unrolled (scan_layers=False) instead of one scanned layer")
  parser.add_argument("--attention_impl", default=None, choices=("xla", "cudnn"), help="our attention kernel")
  parser.add_argument("--microbatches", type=int, default=1, help="our gradient accumulation")
  parser.add_argument(
      "--target_fraction", type=float, default=1.0,
      help="share of each row's last positions that carry loss, as targets do in instruction "
      "tuning (both sides; HF ignores the others with label -100)")
  parser.add_argument("--lm_head_positions", type=int, default=None,
                      help="ours: the LM head only at each row's first k loss positions (trainer/step.py)")
  parser.add_argument("--loss_chunk_size", type=int, default=None,
                      help="ours: the LM head and loss this many positions at a time (trainer/chunked_loss.py)")
  parser.add_argument("--no_padding_mask", dest="padding_mask", action="store_false",
                      help="ours: PartitioningArgs.padding_mask=False (trainer/step.py)")
  parser.add_argument(
      "--nonfinite_guard", default="auto", choices=("auto", "cond", "select"),
      help="ours: how a non-finite step keeps the state (PartitioningArgs.nonfinite_guard, "
      "trainer/step.py); auto: cond on a CPU, select elsewhere")
  parser.add_argument(
      "--packed", type=int, default=0,
      help="0: unpacked rows without segment ids (as DataArgs.pack=False feeds them); K >= 1: K equal segments "
      "per row with their own positions, as packed rows come (Hugging Face: position ids restarting per segment "
      "and a block-diagonal attention mask)")
  parser.add_argument(
      "--packed_attention", action="store_true",
      help="ours, with --packed K: the segments reach cuDNN as its packed layout (packed_attention_segments=K, "
      "models/packed_attention.py) instead of a dense mask; a Hopper GPU or newer, the dense mask elsewhere")
  parser.add_argument("--parts", default="hf,ours", help="comma-separated: hf, ours (HF runs first: JAX "
                      "preallocates GPU memory when it starts)")
  parser.add_argument("--hf_compile", action="store_true", help="torch.compile the Hugging Face model")
  args = parser.parse_args(argv)
  if args.warmup < 0:
    parser.error(f"--warmup: expected 0 or more untimed steps, got {args.warmup}")
  if args.packed_attention and not args.packed:
    parser.error("--packed_attention needs --packed K (unpacked rows have no segments)")
  return args


def model_config(args: argparse.Namespace, dtype: str) -> registry.ModelConfig:
  """The preset's config (any family) with the benchmark's compute settings; positions extended to --seq."""
  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  compute = dict(dtype=dtype, param_dtype="float32", dropout=0.0, attention_dropout=0.0)
  overrides: dict[str, Any] = dict(compute, remat_policy=args.remat, attention_impl=args.attention_impl,
                                   scan_layers=args.scan_layers)
  if args.packed_attention:
    overrides["packed_attention_segments"] = args.packed
  if args.layers:
    overrides["num_hidden_layers"] = args.layers
  config = registry.preset(args.preset, **overrides)
  if args.seq > config.max_position_embeddings:
    config = registry.preset(args.preset, **overrides, max_position_embeddings=args.seq)
  return config


def token_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
  """Random ids [batch, seq + 1] (as the anchor: ids from 4 up); rows are single sequences."""
  return np.random.default_rng(seed).integers(4, vocab, size=(batch, seq + 1), dtype=np.int64)


def segment_ids(args: argparse.Namespace) -> np.ndarray:
  """[seq] 1..K: --packed K equal segments (the last takes the remainder); ones when unpacked."""
  parts = max(1, args.packed)
  return np.minimum(np.arange(args.seq) // (args.seq // parts), parts - 1).astype(np.int32) + 1


def positions(args: argparse.Namespace) -> np.ndarray:
  """[seq] each position's index within its segment (0, 1, ... restarting where --packed starts a segment)."""
  segments = segment_ids(args)
  return (np.arange(args.seq) - np.searchsorted(segments, segments)).astype(np.int32)


def hf_inputs(args: argparse.Namespace, ids: Any) -> dict[str, Any]:
  """The Hugging Face model's keyword inputs for token ids `ids` ([batch, seq] torch): unpacked rows are plain
  causal rows (no mask: sdpa's `is_causal`), as the anchor runs them; packed rows add `position_ids` restarting at
  each segment and a block-diagonal causal mask [batch, 1, seq, seq] (True: may attend), which the models hand to
  sdpa as it is, so no token attends across segments, as in ours. transformers can also infer that mask from the
  positions alone, but not for every family (OPT's decoder does not pass them to its mask) and only without a KV
  cache: the explicit mask is the form all of them take."""
  import torch  # pylint: disable=g-import-not-at-top

  if not args.packed:
    return {"input_ids": ids}
  segments = torch.from_numpy(segment_ids(args)).to(ids.device)
  causal = torch.ones(args.seq, args.seq, dtype=torch.bool, device=ids.device).tril()
  mask = (segments[:, None] == segments[None, :]) & causal
  position_ids = torch.from_numpy(positions(args)).to(ids.device).long()
  return {
      "input_ids": ids,
      "position_ids": position_ids.unsqueeze(0).expand(ids.shape[0], -1),
      "attention_mask": mask.expand(ids.shape[0], 1, -1, -1),
  }


def loss_weights(args: argparse.Namespace) -> np.ndarray:
  """[batch, seq] 0/1: the last round(target_fraction x length) positions of each segment carry loss."""
  segments = segment_ids(args)
  weights = np.zeros((args.batch, args.seq), np.float32)
  for segment in np.unique(segments):
    where = np.flatnonzero(segments == segment)
    weights[:, where[len(where) - max(1, round(args.target_fraction * len(where))):]] = 1.0
  return weights


def _result(what: str, args: argparse.Namespace, step_s: float, warmup_s: float, loss: float, flops_per_token: float,
            peak: float | None, device: str, **extra: Any) -> dict[str, Any]:
  tokens_per_s = args.batch * args.seq / step_s
  return dict(what=what, batch=args.batch, seq=args.seq, step_s=round(step_s, 4), tokens_per_s=round(tokens_per_s),
              tflops=round(tokens_per_s * flops_per_token / 1e12,
                           2), mfu=None if not peak else round(tokens_per_s * flops_per_token / peak, 4),
              warmup_s=round(warmup_s, 1), loss=loss, device=device, **extra)


def build_ours(args: argparse.Namespace, dtype: str) -> tuple[Any, registry.ModelConfig, Any, dict[str, Any]]:
  """(the trainer's program, the model config, the one-device mesh, the batch on the device), as `run` builds
  them; `program.init_fn` and `program.train_fn` run inside `partitioning.mesh_context(mesh)`."""
  import jax  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import loop  # pylint: disable=g-import-not-at-top

  config = model_config(args, dtype)
  mesh = partitioning.make_mesh(-1, 1, 1, devices=jax.devices()[:1])
  optimizer = config_lib.OptimizerArgs(learning_rate=1e-5, warmup_steps=0)
  layout = config_lib.PartitioningArgs(num_microbatches=args.microbatches, lm_head_positions=args.lm_head_positions,
                                       loss_chunk_size=args.loss_chunk_size, padding_mask=args.padding_mask,
                                       nonfinite_guard=args.nonfinite_guard)
  program = loop.build_program(config, optimizer, layout, 1000, args.seq, mesh)
  ids = token_batch(args.batch, args.seq, config.vocab_size).astype(np.int32)
  host = {
      "decoder_input_tokens": ids[:, :-1],
      "decoder_target_tokens": ids[:, 1:],
      "decoder_loss_weights": loss_weights(args).astype(np.int32),
  }
  if args.packed:
    host["decoder_segment_ids"] = np.broadcast_to(segment_ids(args), (args.batch, args.seq))
    host["decoder_positions"] = np.broadcast_to(positions(args), (args.batch, args.seq))
  batch = {k: jax.device_put(v, program.batch_sharding) for k, v in host.items()}
  return program, config, mesh, batch


def bench_ours(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import layers  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import metrics  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import step as step_lib  # pylint: disable=g-import-not-at-top

  program, config, mesh, batch = build_ours(args, dtype)
  device = jax.devices()[0]
  # Whether packed rows reach attention as cuDNN's packed layout: the model's own choice, asked of it.
  packed_layout = args.packed > 0 and isinstance(
      layers.training_mask(config, None, jax.numpy.ones((1, 8), np.int32), enable_dropout=False), layers.SegmentLayout)
  guard = step_lib.resolve_nonfinite_guard(args.nonfinite_guard, device.platform)  # as build_program resolves it
  rng = jax.random.PRNGKey(0)
  with partitioning.mesh_context(mesh):
    memory = program.train_fn.lower(program.layout.abstract, batch, rng).compile().memory_analysis()
    state = program.init_fn(rng)
    started = time.perf_counter()
    for _ in range(args.warmup):
      state, out = program.train_fn(state, batch, rng)
    jax.block_until_ready(state)  # (with --warmup 0, the initial state)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(args.steps):
      state, out = program.train_fn(state, batch, rng)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - started) / args.steps
  result = _result("ours_jax_train", args, step_s, warmup_s, float(out["loss"]), config.flops_per_token(args.seq),
                   metrics.peak_flops_per_device(device), device.device_kind, dtype=dtype, jax=jax.__version__,
                   remat=args.remat, attention_impl=args.attention_impl, scan_layers=args.scan_layers,
                   microbatches=args.microbatches, target_fraction=args.target_fraction,
                   lm_head_positions=args.lm_head_positions, loss_chunk_size=args.loss_chunk_size,
                   padding_mask=args.padding_mask, nonfinite_guard=guard, packed=args.packed,
                   packed_layout=packed_layout, **_memory_figures(memory, device))
  del state, out, batch
  gc.collect()
  return result


def _memory_figures(memory: Any, device: Any) -> dict[str, Any]:
  """The compiled step's temporary buffers (XLA's count: activations, logits, gradients in flight; any backend)
  and, where the device reports it, the process's peak device memory, in MiB."""
  figures: dict[str, Any] = {}
  if memory is not None:
    figures["temp_mib"] = round(memory.temp_size_in_bytes / 2**20, 1)
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    figures["peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
  return figures


def bench_hf(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  from optiml_jax.trainer import metrics  # pylint: disable=g-import-not-at-top

  config = model_config(args, "float32")
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  # The model, its optimizer and the step closure live in _time_hf_steps only: its return releases them.
  step_s, warmup_s, loss = _time_hf_steps(args, config, device, autocast=dtype == "bfloat16")
  # The peak PyTorch's allocator held (weights, AdamW state, activations), as ours reports JAX's.
  peak_figure = {"peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if device == "cuda" else {}
  peak = None
  kind = "cpu"
  if device == "cuda":
    kind = torch.cuda.get_device_name(0)
    peak = next(
        (f for prefix, f in sorted(metrics.PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])) if kind.startswith(prefix)),
        None)
  result = _result("hf_torch_train" + ("_compiled" if args.hf_compile else ""), args, step_s, warmup_s, loss,
                   config.flops_per_token(args.seq), peak, kind, dtype=dtype, torch=torch.__version__,
                   transformers=transformers.__version__, target_fraction=args.target_fraction, packed=args.packed,
                   **peak_figure)
  gc.collect()  # free the GPU memory the step held before empty_cache
  if device == "cuda":
    torch.cuda.empty_cache()
  return result


def _time_hf_steps(args: argparse.Namespace, config: registry.ModelConfig, device: str,
                   autocast: bool) -> tuple[float, float, float]:
  """(seconds per step, warmup seconds, last loss) of transformers' training of the same model on `device`."""
  import torch  # pylint: disable=g-import-not-at-top

  import hf_peer  # pylint: disable=g-import-not-at-top  (this folder, on the path as the script's)

  torch.manual_seed(0)
  model = hf_peer.hf_model_of(config, attn_implementation="sdpa").to(device)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                          fused=device == "cuda")
  step_model = torch.compile(model) if args.hf_compile else model
  ids = torch.from_numpy(token_batch(args.batch, args.seq, config.vocab_size)).to(device)
  inputs = hf_inputs(args, ids[:, :-1])
  labels = ids[:, 1:].masked_fill(torch.from_numpy(loss_weights(args) == 0).to(device), -100)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      logits = step_model(**inputs).logits
      loss = loss_fn(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  started = time.perf_counter()
  for _ in range(args.warmup):
    loss = step()
  sync()
  warmup_s = time.perf_counter() - started
  started = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  step_s = (time.perf_counter() - started) / args.steps
  return step_s, warmup_s, float(loss.detach())


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top  (asked first: JAX would claim the GPU's memory)
  on_gpu = torch.cuda.is_available()
  dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
  if args.layers is None:
    args.layers = 0 if on_gpu else 2
  config = model_config(args, dtype)
  print(
      f"model: {args.preset} with {config.num_hidden_layers} layers ({config.num_params() / 1e6:.0f}M params), "
      f"batch {args.batch} x {args.seq}, compute {dtype}, {args.warmup} warm-up + {args.steps} timed steps", flush=True)
  results: dict[str, dict[str, Any]] = {}
  for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
    if part not in ("hf", "ours"):
      print(f"error: --parts: unknown part {part!r} (expected hf, ours)", file=sys.stderr)
      return 2
    results[part] = (bench_hf if part == "hf" else bench_ours)(args, dtype)
    r = results[part]
    memory = "".join(f", {k[:-4]} {r[k]:,} MiB" for k in ("temp_mib", "peak_mib") if k in r)
    print(
        f"{r['what']:>16}: {r['tokens_per_s']:>10,} tokens/s  {r['step_s']:.3f} s/step  {r['tflops']} TFLOP/s  "
        f"MFU {'n/a' if r['mfu'] is None else format(r['mfu'], '.1%')}  (warm-up {r['warmup_s']} s, loss "
        f"{r['loss']:.3f}, {r['device']}{memory})", flush=True)
  ratio = None
  if "hf" in results and "ours" in results:
    ratio = round(results["ours"]["tokens_per_s"] / results["hf"]["tokens_per_s"], 3)
    print(f"ours / Hugging Face tokens/s: {ratio}")
  print(
      json.dumps({
          "what": "bench_train",
          "preset": args.preset,
          "layers": config.num_hidden_layers,
          "batch": args.batch,
          "seq": args.seq,
          "dtype": dtype,
          "ours": results.get("ours"),
          "hf_torch": results.get("hf"),
          "ratio_ours_over_hf": ratio
      }))
  return 0


if __name__ == "__main__":
  sys.exit(main())
