"""Hugging Face OPT <-> Flax params and Orbax checkpoints, with a command line.

Where it sits: beside the model (`models/opt.py`), before the trainer and evaluation. It is the entry point
over `optiml_jax.checkpoints`, which turns a Hugging Face OPT folder into the Flax `params` tree of
`OPT(config)` and back, and writes/reads the Orbax checkpoints that training and evaluation start from:

  HF folder (config.json + model.safetensors | sharded safetensors | pytorch_model.bin [+ index])
    --load_hf--> (OPTConfig, params) --save_orbax--> OUT_DIR/{config.json, params/}
  OUT_DIR, or a CheckpointManager step folder or root
    --restore_orbax--> (OPTConfig, params) --save_hf--> HF folder that `OPTForCausalLM.from_pretrained` loads

Public API (re-exported here): `load_hf`, `save_hf` (checkpoints/hf.py), `save_orbax`, `restore_orbax`
(checkpoints/orbax_io.py), `params_from_hf_state_dict`, `hf_state_dict_from_params` and `ConversionError`
(checkpoints/layout.py, which also documents the parameter naming). The Orbax layout is described in
checkpoints/orbax_io.py. Arrays keep the dtype of the file, so HF -> Orbax -> HF is bitwise identical.

Command line:
  python -m optiml_jax.convert hf-to-orbax HF_DIR OUT_DIR [--scan_layers | --no-scan_layers] [--overwrite]
  python -m optiml_jax.convert orbax-to-hf CKPT_DIR OUT_DIR [--tokenizer_dir DIR] [--max_shard_size 5GB]
      [--overwrite]
Both write into a temporary sibling of OUT_DIR and rename it into place only when complete.
"""

from __future__ import annotations

import argparse
import sys

from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io

__all__ = [
    "ConversionError", "hf_state_dict_from_params", "load_hf", "main", "params_from_hf_state_dict", "restore_orbax",
    "save_hf", "save_orbax"
]

ConversionError = layout.ConversionError
params_from_hf_state_dict = layout.params_from_hf_state_dict
hf_state_dict_from_params = layout.hf_state_dict_from_params
load_hf = hf.load_hf
save_hf = hf.save_hf
save_orbax = orbax_io.save_orbax
restore_orbax = orbax_io.restore_orbax


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m optiml_jax.convert", description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  to_orbax = commands.add_parser("hf-to-orbax", help="Hugging Face OPT folder -> OUT_DIR/{config.json,params}")
  to_orbax.add_argument("hf_dir", help="folder with config.json and safetensors or pytorch_model.bin weights")
  to_orbax.add_argument("out_dir", help="Orbax checkpoint folder to create")
  to_orbax.add_argument("--scan_layers", action=argparse.BooleanOptionalAction, default=None,
                        help="stack layers on a leading axis (default: OPTConfig's default)")
  to_hf = commands.add_parser("orbax-to-hf", help="Orbax checkpoint -> Hugging Face OPT folder")
  to_hf.add_argument("ckpt_dir", help="save_orbax folder, CheckpointManager step folder or root")
  to_hf.add_argument("out_dir", help="Hugging Face folder to create")
  to_hf.add_argument("--tokenizer_dir", default=None, help="copy tokenizer files from this folder")
  to_hf.add_argument("--max_shard_size", default=hf.DEFAULT_MAX_SHARD_SIZE, help="e.g. 5GB, 500MB")
  for sub in (to_orbax, to_hf):
    sub.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    fileio.check_out_dir(args.out_dir, args.overwrite)  # Before the (possibly long) read.
    if args.command == "hf-to-orbax":
      overrides = {} if args.scan_layers is None else {"scan_layers": args.scan_layers}
      config, params = hf.load_hf(args.hf_dir, overrides)
      out = orbax_io.save_orbax(params, args.out_dir, config, overwrite=args.overwrite)
    else:
      config, params = orbax_io.restore_orbax(args.ckpt_dir)
      out = hf.save_hf(config, params, args.out_dir, args.tokenizer_dir, args.max_shard_size, args.overwrite)
  except ConversionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
