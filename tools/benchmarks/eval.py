"""Evaluation throughput: rank-classification scoring (and greedy decoding) against transformers' PyTorch model.

Where it sits: a developer tool beside `optiml_jax/evaluation/inference.py`; nothing imports it. It takes a preset
of any family (models/registry.py); the transformers peer is the same architecture built from the config's
`to_hf()` (hf_peer.py). Both sides get the same weights (the PyTorch model's random init, mapped with
convert.params_from_hf_state_dict) and the same tokens, and compute the same thing: the summed log-likelihood
of every token of each row given the ones before it (the forward-only work of rank classification). Warm-up
calls (JAX compiles there) are not timed; timed calls alternate between the two sides and the median is
reported. One JSON line per measurement, as `../shared/tools/gpu_anchor_bench.py` prints them.

Parts (--parts, comma-separated):
  score     the jit-ed scoring step on one device-resident [batch, seq] batch vs PyTorch forward +
            log_softmax + gather + sum (the anchor's `--parts score`); also max |score difference|.
  pipeline  `inference.score_options` end to end (host batching, padding, transfers) over `--steps`
            batches of `batch` rows of `seq` tokens.
  options   `inference.score_options` of `batch` examples (a prompt of `seq` tokens, --options options of
            --option_tokens tokens each) with prompts shared by their options vs one full row per option.
  decode    `inference.greedy_decode` of `batch` prompts of seq/4 tokens, `--new_tokens` each (never
            stopping early) vs transformers `generate(do_sample=False)`; new tokens per second.
Token ids are random, from 4 up to the model's vocabulary size.

CPU (small shapes):
  python tools/benchmarks/eval.py --preset opt-125m --batch 4 --seq 128 --steps 3
  python tools/benchmarks/eval.py --preset llama-tiny --batch 4 --seq 64 --parts score,decode
GPU, opt-1.3b shapes, with the anchor in the same call (H200 anchor: 183,270 tokens/s at 32 x 512):
  python tools/benchmarks/eval.py --preset opt-1.3b --batch 32 --seq 512 --dtype bfloat16 --attention_impl cudnn \\
    && python ../shared/tools/gpu_anchor_bench.py --size 1.3b --batch 32 --seq 512 --parts score
GPU, a Llama 3.2 1B shape (the anchor has no Llama: the in-process transformers run is the peer):
  python tools/benchmarks/eval.py --preset llama-3.2-1b --batch 32 --seq 512 --dtype bfloat16 --attention_impl cudnn
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: optiml_jax uninstalled

# JAX and PyTorch share the accelerator: keep JAX from taking 75% of its memory up front, unless the caller chose
# a fraction under either name (jaxlib refuses to start a GPU with both set).
if not {"XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"} & os.environ.keys():
  os.environ["XLA_CLIENT_MEM_FRACTION"] = "0.45"  # the current name (jax 0.6 on); the old one is deprecated

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from optiml_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.evaluation import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position

import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (this folder)
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position  (this folder)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PARTS = ("score", "pipeline", "decode", "options")


def emit(**fields: Any) -> None:
  print(json.dumps(fields), flush=True)


def _sync() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def build(preset: str, dtype: str, attention_impl: str | None, seed: int = 0) -> tuple[Any, Any, Any, str]:
  """(our module, its params on the device, the transformers model with the same weights, torch device)."""
  config = registry.preset(preset, dtype=dtype, param_dtype=dtype, dropout=0.0, attention_impl=attention_impl)
  torch.manual_seed(seed)
  hf_model = hf_peer.hf_model_of(config, attn_implementation="sdpa").eval()
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  params = convert.params_from_hf_state_dict(config, state)
  del state
  params = jax.device_put(jax.tree.map(lambda x: np.asarray(x).astype(jnp.dtype(dtype)), params))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_model = hf_model.to(device=device, dtype=_TORCH_DTYPES[dtype])
  return registry.make_model(config), params, hf_model, device


def bench_score(model, params, hf_model, device, batch: int, seq: int, steps: int, warmup: int) -> None:
  tokens = np.random.default_rng(1).integers(4, model.config.vocab_size, size=(batch, seq + 1)).astype(np.int32)
  inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
  weights = jnp.ones(inputs.shape, jnp.float32)
  step = inference.score_step(model)
  torch_tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)

  @torch.inference_mode()
  def torch_score():
    logits = hf_model(input_ids=torch_tokens[:, :-1]).logits.float()
    scores = torch.log_softmax(logits, -1).gather(-1, torch_tokens[:, 1:, None]).squeeze(-1).sum(-1)
    _sync()
    return scores

  seconds, outputs = timing.time_alternating(
      {
          "jax": lambda: jax.block_until_ready(step(params, inputs, targets, weights)),
          "torch": torch_score
      }, steps, warmup)
  diff = float(np.abs(np.asarray(outputs["jax"][0]) - outputs["torch"].float().cpu().numpy()).max())
  forward_flops = model.config.flops_per_token(seq) / 3
  for name, s in seconds.items():
    tokens_per_s = batch * seq / s
    emit(what=f"{name}_score", batch=batch, seq=seq, dtype=str(model.config.dtype), step_s=round(s, 4),
         tokens_per_s=round(tokens_per_s), tflops=round(tokens_per_s * forward_flops / 1e12, 1))
  mean_abs = float(np.abs(outputs["torch"].float().cpu().numpy()).mean())
  emit(what="score_ratio_jax_over_torch", value=round(seconds["torch"] / seconds["jax"], 3),
       max_abs_score_diff=round(diff, 4), mean_abs_score=round(mean_abs, 2))


def bench_pipeline(model, params, batch: int, seq: int, steps: int) -> None:
  rows = np.random.default_rng(2).integers(4, model.config.vocab_size, size=(batch * steps, seq + 1))
  prompts = [[int(r[0])] for r in rows]
  options = [[r[1:].tolist()] for r in rows]
  inference.score_options(model, params, prompts[:batch], options[:batch], batch_size=batch)  # Compiles.
  stats = inference.InferenceStats()
  inference.score_options(model, params, prompts, options, batch_size=batch, stats=stats)
  emit(what="jax_score_options_end_to_end", batch=batch, seq=seq, rows=len(rows), seconds=round(stats.seconds, 3),
       tokens_per_s=round(len(rows) * seq / stats.seconds))


def bench_options(model, params, batch: int, seq: int, num_options: int, option_tokens: int) -> None:
  """Rank classification as k-shot evaluation runs it: `batch` examples, each a prompt of `seq` tokens and
  `num_options` options of `option_tokens` tokens; prompts shared by their options vs one row per option."""
  rng, vocab_size = np.random.default_rng(4), model.config.vocab_size
  prompts = [rng.integers(4, vocab_size, size=seq).tolist() for _ in range(batch)]
  options = [
      [rng.integers(4, vocab_size, size=option_tokens).tolist() for _ in range(num_options)] for _ in range(batch)
  ]
  seconds, scores = {}, {}
  for share in (True, False):
    run = functools.partial(inference.score_options, model, params, prompts, options, batch_size=batch * num_options,
                            share_prompts=share)
    run()  # Compiles.
    stats = inference.InferenceStats()
    scores[share] = run(stats=stats)
    seconds[share] = stats.seconds
    emit(what="jax_score_options_" + ("shared_prompts" if share else "row_per_option"), examples=batch, prompt=seq,
         options=num_options, option_tokens=option_tokens, seconds=round(stats.seconds, 3),
         examples_per_s=round(batch / stats.seconds, 1), tokens_read=stats.tokens)
  diff = max(abs(a - b) for x, y in zip(scores[True], scores[False]) for a, b in zip(x, y))
  emit(what="options_ratio_shared_over_rows", value=round(seconds[False] / seconds[True], 2),
       max_abs_score_diff=round(diff, 5))


def bench_decode(model, params, hf_model, device, batch: int, prompt_length: int, new_tokens: int, steps: int,
                 warmup: int) -> None:
  tokens = np.random.default_rng(3).integers(4, model.config.vocab_size, size=(batch, prompt_length + 1))
  prompts = [t.tolist() for t in tokens]
  torch_ids = torch.from_numpy(np.asarray(prompts)).to(device)

  @torch.inference_mode()
  def torch_generate():
    out = hf_model.generate(torch_ids, attention_mask=torch.ones_like(torch_ids), do_sample=False,
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    _sync()
    return out

  # eos_id -1 never matches: every example runs the full new_tokens, as with min_new_tokens on the torch side.
  seconds, _ = timing.time_alternating(
      {
          "jax": lambda: inference.greedy_decode(model, params, prompts, new_tokens, eos_id=-1, batch_size=batch),
          "torch": torch_generate
      }, steps, warmup)
  for name, s in seconds.items():
    emit(what=f"{name}_greedy_decode", batch=batch, prompt=prompt_length + 1, new_tokens=new_tokens,
         seconds=round(s, 3), new_tokens_per_s=round(batch * new_tokens / s))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
      "--preset", "--size", dest="preset", default="opt-125m", choices=registry.PRESETS,
      help="model shape (random weights): a preset of any family (models/registry.py); --size is "
      "its old name")
  parser.add_argument("--batch", type=int, default=4, help="rows per batch")
  parser.add_argument("--seq", type=int, default=128, help="tokens read per row")
  parser.add_argument("--dtype", default="float32", choices=sorted(_TORCH_DTYPES), help="compute and weight dtype")
  parser.add_argument("--attention_impl", default=None, choices=("xla", "cudnn"),
                      help="JAX attention kernel (cudnn: NVIDIA GPUs, bf16/fp16)")
  parser.add_argument("--steps", type=int, default=3, help="timed calls per side")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side (JAX compiles here)")
  parser.add_argument("--new_tokens", type=int, default=32, help="decode: new tokens per prompt")
  parser.add_argument("--parts", default="score,pipeline", help=f"comma-separated, of {PARTS}")
  parser.add_argument("--options", type=int, default=4, help="options: options per example")
  parser.add_argument("--option_tokens", type=int, default=4, help="options: tokens per option")
  args = parser.parse_args(argv)
  parts = args.parts.split(",")
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    parser.error(f"--parts: unknown {unknown}; expected some of {PARTS}")
  emit(what="setup", jax=jax.__version__, backend=jax.default_backend(), device=str(jax.devices()[0]),
       torch=torch.__version__, torch_threads=torch.get_num_threads(), preset=args.preset, dtype=args.dtype,
       attention_impl=args.attention_impl)
  model, params, hf_model, device = build(args.preset, args.dtype, args.attention_impl)
  failed = []
  for part in parts:
    try:
      if part == "score":
        bench_score(model, params, hf_model, device, args.batch, args.seq, args.steps, args.warmup)
      elif part == "pipeline":
        bench_pipeline(model, params, args.batch, args.seq, args.steps)
      elif part == "options":
        bench_options(model, params, args.batch, args.seq, args.options, args.option_tokens)
      else:
        bench_decode(model, params, hf_model, device, args.batch, args.seq // 4, args.new_tokens, args.steps,
                     args.warmup)
    except Exception as e:  # pylint: disable=broad-except  (one failing part must not cost the others)
      emit(what=part, error=repr(e)[:400])
      failed.append(part)
  # A failed part is exit 1 once the others have run: gpu.sh repeats a cuDNN run that fails with XLA attention.
  if failed:
    print(f"error: parts failed: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
