"""Special token ids of a tokenizer, read once from its folder: the one place they are defined.

Where it sits: at the root of the data side, beside `vocab.py` (the seqio vocabulary). Every module that needs
a special id takes it from here: `vocab.py` (the vocabulary's ids), `packing.py` (the BOS before each
example), `evaluation/decoding.py` and `inference.py` (the EOS that ends a generation), `models/opt_config.py`
(`to_hf()`: the ids written into config.json) and `interop/t5x_model.py`. models/ and evaluation/ run on GPU
images without TensorFlow or seqio, so this module imports the standard library only (a test checks it).

OPT (`OPT`, read from the tokenizer shipped in `tokenizer_opt/`; the ids follow fairseq's dictionary):
  `<s>`   = 0   never produced: OPT starts every sequence with `</s>` (seqio's pad_id 0: see vocab.py)
  `<pad>` = 1   pad_id        special_tokens_map.json "pad_token"
  `</s>`  = 2   bos_id, eos_id  "bos_token" and "eos_token"
  `<unk>` = 3   unk_id        the dictionary's own unknown token. special_tokens_map.json (and so transformers'
                              tokenizer) names `</s>` as "unk_token"; we keep `<unk>` because seqio maps
                              out-of-range ids (the padded embedding rows 50265..50271) to unk_id before cutting
                              a decoding at its first EOS: an unk equal to the EOS would end it there.

Another tokenizer: `read(folder)` takes the tokens named in its special_tokens_map.json (or
tokenizer_config.json) and their ids in its vocab.json. The model-family registry that comes with Llama-family
models keeps one `SpecialTokens` per family, read this way from the family's tokenizer; `OPT` is OPT's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

OPT_TOKENIZER_DIR = pathlib.Path(__file__).resolve().parent / "tokenizer_opt"
VOCAB_FILE = "vocab.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEDICATED_UNK_TOKEN = "<unk>"  # preferred as unk when the vocabulary has it (see the module docstring)
# Token names used when a folder's files do not name them: OPT's (fairseq / GPT-2 BPE as Hugging Face ships it).
DEFAULT_TOKENS = {"bos": "</s>", "eos": "</s>", "pad": "<pad>", "unk": DEDICATED_UNK_TOKEN}


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The special tokens of one tokenizer, as text and as ids.

  Attributes:
    bos, eos, pad, unk: the token strings.
    bos_id: fed before each example's first token (packing, scoring and decoding prompts).
    eos_id: ends every target, and a greedy decoding.
    pad_id: the tokenizer's own padding id (Hugging Face batches pad with it; config.json `pad_token_id`).
      Our packed features pad with 0 at loss weight 0 instead (seqio's convention).
    unk_id: what seqio maps out-of-range ids to when decoding.
  """

  bos: str
  eos: str
  pad: str
  unk: str
  bos_id: int
  eos_id: int
  pad_id: int
  unk_id: int

  def hf_config_ids(self) -> dict[str, int]:
    """The ids a Hugging Face config.json carries: bos_token_id, eos_token_id, pad_token_id."""
    return {"bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id}


def _read_json(path: pathlib.Path) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: cannot read JSON: {e}") from e


def _token_name(value: Any) -> str | None:
  """A token string as Hugging Face files write it: a string, or {"content": ...}."""
  if isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _named_tokens(folder: pathlib.Path) -> dict[str, str]:
  """bos/eos/pad/unk token strings named by special_tokens_map.json, else tokenizer_config.json, else OPT's."""
  named: dict[str, str] = {}
  for file in (SPECIAL_TOKENS_FILE, TOKENIZER_CONFIG_FILE):
    if (folder / file).is_file():
      values = _read_json(folder / file)
      for role in DEFAULT_TOKENS:
        token = _token_name(values.get(f"{role}_token")) if isinstance(values, dict) else None
        if token is not None:
          named.setdefault(role, token)
  return {role: named.get(role, default) for role, default in DEFAULT_TOKENS.items()}


def read(tokenizer_dir: str | os.PathLike) -> SpecialTokens:
  """The special tokens of a Hugging Face tokenizer folder (see the module docstring).

  Raises:
    FileNotFoundError: the folder has no vocab.json.
    ValueError: a file cannot be parsed, or a special token is not in vocab.json (naming the file and token).
  """
  folder = pathlib.Path(tokenizer_dir)
  vocab_path = folder / VOCAB_FILE
  if not vocab_path.is_file():
    raise FileNotFoundError(f"tokenizer file not found: {vocab_path} (expected a Hugging Face tokenizer folder "
                            f"with {VOCAB_FILE})")
  vocab = _read_json(vocab_path)
  if not isinstance(vocab, dict):
    raise ValueError(f"{vocab_path}: expected a JSON object of token -> id")
  tokens = _named_tokens(folder)
  if DEDICATED_UNK_TOKEN in vocab:
    tokens["unk"] = DEDICATED_UNK_TOKEN
  ids = {}
  for role, token in tokens.items():
    if token not in vocab:
      raise ValueError(f"{vocab_path}: special token {token!r} ({role}) is not in the vocabulary")
    ids[f"{role}_id"] = int(vocab[token])
  return SpecialTokens(bos=tokens["bos"], eos=tokens["eos"], pad=tokens["pad"], unk=tokens["unk"], bos_id=ids["bos_id"],
                       eos_id=ids["eos_id"], pad_id=ids["pad_id"], unk_id=ids["unk_id"])


OPT = read(OPT_TOKENIZER_DIR)  # read once, when the module is first imported
