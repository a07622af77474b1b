"""Forward-pass throughput of our Flax model (any family of models/registry.py) against transformers' PyTorch one.

Where it sits: a developer tool beside the models; nothing imports it. The transformers peer is built from the
preset's `config.to_hf()` (`AutoConfig.for_model`, `AutoModelForCausalLM.from_config`: OPTForCausalLM,
LlamaForCausalLM, Qwen2ForCausalLM, ...). Both models get the same weights (the PyTorch model's random init,
mapped with convert.params_from_hf_state_dict), so the printed max |logit difference| also checks that they
compute the same function. Warm-up steps (and JAX compilation) are not timed; the timed steps alternate between
the two and the median step time is reported. Each side runs on the accelerator when there is one: JAX on its
default device, the transformers model and its tokens on CUDA when PyTorch sees a GPU (synchronized before the
clock stops); the first output line names both devices. Examples:

  python tools/benchmarks/model.py --preset opt-125m --batch 1 --seq 128 --steps 10
  python tools/benchmarks/model.py --preset smollm2-135m --batch 1 --seq 128 --steps 10
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository: optiml_jax uninstalled

# JAX and PyTorch share the accelerator: keep JAX from taking 75% of its memory up front, unless the caller chose
# a fraction under either name (jaxlib refuses to start a GPU with both set).
if not {"XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"} & os.environ.keys():
  os.environ["XLA_CLIENT_MEM_FRACTION"] = "0.45"

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

from optiml_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position

import hf_peer  # pylint: disable=g-import-not-at-top,wrong-import-position  (this folder, on the path)
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position  (this folder)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Result:
  name: str
  tokens_per_s: float
  seconds_per_step: float
  device: str


def torch_device() -> str:
  """Where the transformers peer runs: "cuda" when PyTorch sees a GPU (as JAX's default device would be one),
  else "cpu"."""
  return "cuda" if torch.cuda.is_available() else "cpu"


def bench(preset: str, batch: int, seq: int, dtype: str, steps: int, warmup: int, scan_layers: bool,
          seed: int = 0) -> tuple[Result, Result, float]:
  """(jax result, torch result, max |logit difference|) for one config."""
  config = registry.preset(preset, dtype=dtype, scan_layers=scan_layers, dropout=0.0)
  if seq > config.max_position_embeddings:
    raise ValueError(f"--seq {seq} exceeds max_position_embeddings={config.max_position_embeddings}")
  torch.manual_seed(seed)
  hf_model = hf_peer.hf_model_of(config).eval()
  state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  params = jax.device_put(convert.params_from_hf_state_dict(config, state))
  del state
  device = torch_device()
  hf_model = hf_model.to(device=device, dtype=_TORCH_DTYPES[dtype])
  tokens = np.random.default_rng(seed).integers(3, config.vocab_size, size=(batch, seq))

  model = registry.make_model(config)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, enable_dropout=False))
  jax_tokens = jnp.asarray(tokens, jnp.int32)
  torch_tokens = torch.from_numpy(tokens).to(device)

  def torch_forward():
    with torch.inference_mode():
      logits = hf_model(torch_tokens).logits
    if device == "cuda":  # CUDA kernels run asynchronously: the timer must wait for them, as JAX's side does
      torch.cuda.synchronize()
    return logits

  runs = {"jax": lambda: forward(params, jax_tokens).block_until_ready(), "torch": torch_forward}
  seconds, outputs = timing.time_alternating(runs, steps, warmup)
  devices = {"jax": str(jax_tokens.devices().pop()), "torch": str(torch_tokens.device)}
  results = {name: Result(name, batch * seq / s, s, devices[name]) for name, s in seconds.items()}
  diff = float(np.abs(np.asarray(outputs["jax"]) - outputs["torch"].float().cpu().numpy()).max())
  return results["jax"], results["torch"], diff


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="opt-125m", choices=registry.PRESETS,
                      help="a preset of any family (models/registry.py), e.g. opt-125m, smollm2-135m")
  parser.add_argument("--batch", type=int, default=1, help="sequences per forward pass")
  parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
  parser.add_argument("--dtype", default="float32", choices=sorted(_TORCH_DTYPES), help="compute dtype")
  parser.add_argument("--steps", type=int, default=10, help="timed forward passes")
  parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes (JAX compiles here)")
  parser.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=True,
                      help="run the Flax layers with nn.scan")
  args = parser.parse_args(argv)
  jax_result, torch_result, diff = bench(args.preset, args.batch, args.seq, args.dtype, args.steps, args.warmup,
                                         args.scan_layers)
  print(f"preset={args.preset} batch={args.batch} seq={args.seq} dtype={args.dtype} steps={args.steps} "
        f"jax={jax.__version__} ({jax.devices()[0].platform}) torch={torch.__version__} "
        f"(threads={torch.get_num_threads()})")
  for r in (jax_result, torch_result):
    print(f"  {r.name:6s} {r.tokens_per_s:12.1f} tokens/s  {1000 * r.seconds_per_step:9.2f} ms/step (median)  on "
          f"{r.device}")
  print(f"  jax/torch throughput ratio: {jax_result.tokens_per_s / torch_result.tokens_per_s:.2f}")
  print(f"  max |logit difference|: {diff:.2e}")


if __name__ == "__main__":
  main()
