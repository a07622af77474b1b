"""Checkpoint formats of the OPT parameter tree: Hugging Face folders and Orbax items.

Where it sits: beside the model (`models/opt.py`), before the trainer and evaluation, which import it directly;
`optiml_jax.convert` is the command line over it and re-exports its public API (`convert.load_hf`, ...).

  layout.py    the `params` tree of `OPT(config)`: names, shapes, validation, HF state dict <-> params
  hf.py        Hugging Face folders (safetensors / pytorch_model.bin, sharded or not) <-> (OPTConfig, params)
  orbax_io.py  Orbax `params` items (plus config.json) <-> (OPTConfig, params), optionally sharded on restore
  discovery.py what kind of checkpoint a path is (Hugging Face folder, save_orbax folder, MODEL_DIR, step,
               partial step), where its `params` item and config.json are, which steps a MODEL_DIR holds
  fileio.py    JSON reading with named errors and atomic (staged, then renamed) output folders
"""
