"""Checkpoint formats of the OPT parameter tree: Hugging Face folders and Orbax items.

Where it sits: beside the model (`models/opt.py`), before the trainer and evaluation; `optiml_jax.convert` is
the command line and public entry point over it.

  layout.py    the `params` tree of `OPT(config)`: names, shapes, validation, HF state dict <-> params
  hf.py        Hugging Face folders (safetensors / pytorch_model.bin, sharded or not) <-> (OPTConfig, params)
  orbax_io.py  Orbax `params` items (plus config.json) <-> (OPTConfig, params), optionally sharded on restore
  fileio.py    JSON reading with named errors and atomic (staged, then renamed) output folders
"""
