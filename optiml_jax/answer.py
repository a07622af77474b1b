r"""Entry point: `python -m optiml_jax.answer REQUESTS_DIR --checkpoint PATH --out ANSWERS_DIR`.

Answers recorded evaluation requests with a model, without TensorFlow, seqio or gin: the half of an evaluation
that needs the accelerator, for a machine whose image has jax and flax only (`evaluation/requests.py`).

  1. where seqio runs:  python -m optiml_jax.eval --gin_file=eval.gin --gin.CHECKPOINT_PATH=MODEL \
                            --gin.EVAL_OUTPUT_DIR=REC --gin.CATALOG_DIR=CATALOG --gin.SHOTS=[0,5] \
                            --gin.evaluate.record_requests=True             -> REC/requests/
  2. on the accelerator: python -m optiml_jax.answer REC/requests --checkpoint MODEL --out ANSWERS \
                            --dtype bfloat16                                 -> ANSWERS/
  3. where seqio runs:  python -m optiml_jax.eval ... --gin.CHECKPOINT_PATH=ANSWERS --gin.EVAL_OUTPUT_DIR=OUT
                            [--gin.BASELINE_PATH=BASE_ANSWERS]               -> OUT/metrics.json, report.md

CHECKPOINT_PATH is any checkpoint `python -m optiml_jax.eval` reads (a Hugging Face folder, a `convert` folder, a
trainer's MODEL_DIR: its latest step, or a step folder). One request is answered after another and the answers
folder records each as it is written: rerunning the command after an interruption answers the rest.

The context the prompts are cut to is the one the requests were recorded for (requests.json's `max_length`: the
recording's `evaluate.max_length`, or its model's whole context), so that the replayed report is the direct
evaluation's; --max_length may only repeat it (requests recorded before the context was written down, format 1,
are answered with --max_length, or the model's whole context).

Exit status: 0 when every request is answered; 1 when the checkpoint cannot be read; 2 when the requests folder,
the answers folder or a setting cannot be used (the message names it; a --batch_size below 1 and a --dtype that is
no floating-point dtype are usage errors; --out and --mesh_shape are checked before any model is read: a file, the
requests folder itself, or a folder holding another model's answers is refused, as is a mesh that does not fit the
devices; and so, before its params are read, are a model whose config's vocab_size cannot embed the requests' token
ids, a --max_length other than the recorded context or beyond the model's, a context too short for a predict
request's new tokens, and an --out holding answers made with another context or --no_share_prompts setting).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import jax

from optiml_jax import cli_flags
from optiml_jax import cli_logging
from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import loading
from optiml_jax.evaluation import batching
from optiml_jax.evaluation import inference
from optiml_jax.evaluation import requests
from optiml_jax.models import partitioning
from optiml_jax.models import registry as model_registry

# A checkpoint without config.json: what to do on this command line (it has no gin to configure a model with).
MISSING_CONFIG_HINT = "copy that model's config.json there (e.g. from the Hugging Face folder it was trained from)"


def _compute_dtype(value: str) -> str:
  """`--dtype`: a floating-point dtype jax knows (a usage error naming the flag, not a checkpoint error later)."""
  if not loading.is_compute_dtype(value):
    raise argparse.ArgumentTypeError(f"expected a floating-point compute dtype (e.g. bfloat16, float32), got {value!r}")
  return value


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.answer", description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("requests_dir", help="a requests folder (`python -m optiml_jax.eval ... record_requests=True`)")
  parser.add_argument("--checkpoint", required=True, help="the model: a checkpoint path as CHECKPOINT_PATH takes")
  parser.add_argument("--out", required=True, help="the answers folder (created; an interrupted run's is resumed)")
  parser.add_argument("--dtype", type=_compute_dtype, default=None, help="compute dtype, e.g. bfloat16 on "
                      "accelerators (default: the checkpoint's)")
  parser.add_argument("--batch_size", type=cli_flags.positive_int("rows per batch"),
                      default=inference.DEFAULT_BATCH_SIZE,
                      help="rows per batch (scoring: prompt + one option; decoding: one prompt)")
  parser.add_argument("--max_length", type=int, default=None,
                      help="context in tokens (default: the one the requests were recorded for; only it is accepted)")
  parser.add_argument("--mesh_shape", default="-1,1,1", help="data,fsdp,tensor sizes of the device mesh")
  parser.add_argument("--no_share_prompts", action="store_true",
                      help="score each option as a full row instead of sharing its prompt's computation")
  parser.add_argument("--no_progress", action="store_true", help="no progress bars")
  parser.add_argument(
      "--compilation_cache_dir", default=None,
      help="JAX's persistent compilation cache: a second model of the same shapes (the tuned one "
      "after the base) reuses the compiled scoring and decoding programs")
  parser.add_argument("--log_file", default=None,
                      help="where library tracebacks go (default: $TMPDIR/optiml_jax/answer-<time>-<pid>.log)")
  parser.add_argument("--debug", action="store_true", help="print library tracebacks on the screen too")
  return parser.parse_args(argv)


def _make_mesh(text: str) -> jax.sharding.Mesh:
  """The mesh of `--mesh_shape` over the local devices; ValueError naming the flag when it cannot be made."""
  try:
    data, fsdp, tensor = (int(x) for x in text.split(","))
  except ValueError as e:
    raise ValueError(f"--mesh_shape: expected three integers data,fsdp,tensor, got {text!r}") from e
  try:
    return partitioning.make_mesh(data, fsdp, tensor)
  except ValueError as e:  # sizes that do not multiply to the device count
    raise ValueError(f"--mesh_shape: {e}") from e


def _context(args: argparse.Namespace, config: model_registry.ModelConfig) -> int:
  """The context to answer with: the one the requests were recorded for (--max_length may only repeat it), checked
  against the model's context and every predict request's new tokens; ValueError naming where it came from."""
  recorded = requests.recorded_max_length(args.requests_dir)
  if args.max_length is not None and recorded is not None and args.max_length != recorded:
    raise ValueError(f"--max_length {args.max_length}: the requests in {args.requests_dir} were recorded for a context "
                     f"of {recorded} tokens (the recording's evaluate.max_length), and the replayed report is that of "
                     f"an evaluation at {recorded}: leave --max_length out, or record them again with "
                     f"--gin.evaluate.max_length={args.max_length}")
  if args.max_length is not None:
    asked, name = args.max_length, "--max_length"
  elif recorded is not None:
    asked, name = recorded, f"the recorded context (max_length in {args.requests_dir}/{requests.REQUESTS_FILE})"
  else:  # requests.json of format 1: the model's whole context
    asked, name = None, "the model's context"
  try:
    context = batching.context_length(model_registry.make_model(config), asked)
  except ValueError as e:  # beyond the model's context
    raise ValueError(f"{name}: {e}") from e
  requests.check_requests_fit(args.requests_dir, context, name)
  return context


def run(args: argparse.Namespace) -> dict:
  """Loads the model and answers every request; returns answers.json's content."""
  requests.check_answers_folder(args.requests_dir, args.out, name="--out")  # said before anything is read
  checkpoints, problems = discovery.find_checkpoints(args.checkpoint, "latest")
  for problem in problems:
    print(f"warning: {problem}", file=sys.stderr)
  checkpoint = checkpoints[0]
  if not requests.recorded(args.requests_dir):  # said before the model is read
    raise requests.RequestsError(f"{args.requests_dir}: no requests recorded here (no {requests.REQUESTS_FILE}); "
                                 "record them with `python -m optiml_jax.eval ... --gin.evaluate.record_requests=True`")
  # Another model's answers in --out: refused now rather than after the model is loaded (its config is compared then).
  requests.check_answers_folder(args.requests_dir, args.out, {
      "checkpoint": checkpoint.path,
      "step": checkpoint.step,
      "format": checkpoint.format
  }, name="--out")
  if args.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
  mesh = _make_mesh(args.mesh_shape)  # before the model is read
  overrides = {"dtype": args.dtype} if args.dtype else {}
  # A model that cannot embed the requests' ids would answer with NaN scores: refused before its params are read.
  config = loading.load_config(checkpoint, overrides=overrides, missing_config_hint=MISSING_CONFIG_HINT)
  context = _context(args, config)
  # Earlier answers in --out made with another context or prompt sharing: refused, not listed under these settings.
  requests.check_answers_folder(args.requests_dir, args.out, name="--out", settings={
      "max_length": context,
      "share_prompts": not args.no_share_prompts
  })
  requests.check_vocab_covers(args.requests_dir, config.vocab_size, f"--checkpoint {checkpoint.path} (its config)")
  config, params = loading.load_checkpoint(checkpoint, overrides=overrides, missing_config_hint=MISSING_CONFIG_HINT)
  scorer = inference.Scorer(config, params, mesh=mesh, batch_size=args.batch_size, max_length=context,
                            progress=not args.no_progress, share_prompts=not args.no_share_prompts)
  del params
  model = {
      "checkpoint": checkpoint.path,
      "step": checkpoint.step,
      "format": checkpoint.format,
      "config": config.to_hf()
  }
  print(
      f"answering with {checkpoint.path} (step {checkpoint.step}, {config.num_params() / 1e6:.0f}M parameters, "
      f"{config.dtype}) on {jax.devices()[0].platform}", flush=True)
  state = requests.answer(args.requests_dir, scorer, args.out, model, log=lambda line: print(line, flush=True))
  print(f"{len(state['answers'])} answer(s) in {args.out}: evaluate them with `python -m optiml_jax.eval ... "
        f"--gin.CHECKPOINT_PATH={args.out}`; inference: {scorer.stats.as_dict()}")
  return state


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  with cli_logging.session("answer", args.log_file, args.debug) as log:
    try:
      run(args)
    except discovery.CheckpointError as e:
      log.report(e)
      return 1
    except ValueError as e:  # RequestsError, a setting (mesh, max_length) that cannot be used
      print(f"error: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  cli_logging.run_quietly(main)
