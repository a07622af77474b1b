"""Special token ids of a tokenizer, read once from its folder: the one place they are defined.

Where it sits: at the root of the data side, beside `vocab.py` (the seqio vocabulary). Every module that needs
a special id takes it from here: `vocab.py` (the vocabulary's ids and its BOS policy), `packing.py` (the BOS
before each example), `evaluation/decoding.py` and `inference.py` (the EOS that ends a generation),
`models/opt_config.py` (`to_hf()`: the ids written into config.json) and `interop/t5x_model.py`. models/ and
evaluation/ run on GPU images without TensorFlow or seqio, so this module imports the standard library only (a
test checks it).

A tokenizer folder is what Hugging Face writes, in one of two forms:
  tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)   the `tokenizers` library's own file, as
      transformers 5 writes every fast tokenizer (Llama 2/3, Mistral, Qwen2, SmolLM2); its vocabulary is the
      model's `vocab` plus the `added_tokens`. Used whenever the folder has it.
  vocab.json + merges.txt (+ the same two files)   GPT-2 style byte-level BPE, as OPT ships.

Roles. `bos`, `eos`, `pad`, `unk` are the tokens special_tokens_map.json (else tokenizer_config.json) names.
A tokenizer.json folder may name fewer (SmolLM2 has no pad in some copies; Qwen2 has no BOS): a missing role is
None, token and id. A vocab.json folder falls back to OPT's names (`DEFAULT_TOKENS`), as it always has.

The BOS policy (`add_bos`): whether a BOS is fed before each example, exactly where the tokenizer itself adds
one, i.e. where transformers 5's `tokenizer(text)["input_ids"]` starts with it (tests check that):
  tokenizer.json folder   its post-processor decides: a `TemplateProcessing` whose single-sequence template
      starts with a special token (Llama 2 `<s> $A`, Llama 3 `<|begin_of_text|> $A`), also inside a
      `Sequence`, or the cls token of a `RobertaProcessing` / `BertProcessing`. That leading token is the BOS.
      Otherwise none (SmolLM2, Qwen2: the first prompt token is the first input). tokenizer_config.json's
      `add_bos_token` is not read for such a folder: transformers 5 drops it when a tokenizer.json is present
      (transformers 4 wrote it into the post-processor before saving, so the two agree in folders it wrote).
  vocab.json folder   tokenizer_config.json (or special_tokens_map.json) `add_bos_token`; true when absent
      (OPT's convention, what this code always did). True with no BOS named adds none.
`added_bos_id` is the id fed (None when no BOS is added), `prefix_ids` the same as a tuple.

OPT (`OPT`, read from the tokenizer shipped in `tokenizer_opt/`; the ids follow fairseq's dictionary):
  `<s>`   = 0   never produced: OPT starts every sequence with `</s>` (seqio's pad_id 0: see vocab.py)
  `<pad>` = 1   pad_id        special_tokens_map.json "pad_token"
  `</s>`  = 2   bos_id, eos_id  "bos_token" and "eos_token"; add_bos_token is true
  `<unk>` = 3   unk_id        the dictionary's own unknown token. special_tokens_map.json (and so transformers'
                              tokenizer) names `</s>` as "unk_token"; we keep `<unk>` because seqio maps
                              out-of-range ids (the padded embedding rows 50265..50271) to unk_id before cutting
                              a decoding at its first EOS: an unk equal to the EOS would end it there. Any
                              folder whose vocabulary has `<unk>` gets it as its unk the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

OPT_TOKENIZER_DIR = pathlib.Path(__file__).resolve().parent / "tokenizer_opt"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
ROLES = ("bos", "eos", "pad", "unk")
DEDICATED_UNK_TOKEN = "<unk>"  # preferred as unk when the vocabulary has it (see the module docstring)
# Token names used when a vocab.json folder's files do not name them: OPT's (fairseq / GPT-2 BPE as Hugging Face
# ships it). A tokenizer.json folder has no defaults: an unnamed role is None.
DEFAULT_TOKENS = {"bos": "</s>", "eos": "</s>", "pad": "<pad>", "unk": DEDICATED_UNK_TOKEN}


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The special tokens of one tokenizer, as text and as ids (None: the tokenizer names no such token).

  Attributes:
    bos, eos, pad, unk: the token strings.
    bos_id: the tokenizer's BOS; it is fed before each example's first token only when `add_bos`.
    eos_id: ends every target, and a greedy decoding.
    pad_id: the tokenizer's own padding id (Hugging Face batches pad with it; config.json `pad_token_id`).
      Our packed features pad with 0 at loss weight 0 instead (seqio's convention).
    unk_id: the tokenizer's unknown token.
    add_bos: whether the tokenizer adds its BOS before a sequence (module docstring: the BOS policy).
  """

  bos: str | None
  eos: str | None
  pad: str | None
  unk: str | None
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  unk_id: int | None
  add_bos: bool

  @property
  def added_bos_id(self) -> int | None:
    """The id fed before each example (packing, scoring and decoding prompts), or None when none is."""
    return self.bos_id if self.add_bos else None

  @property
  def prefix_ids(self) -> tuple[int, ...]:
    """The ids before an example's first input token: (BOS,) or ()."""
    return () if self.added_bos_id is None else (self.added_bos_id,)

  def hf_config_ids(self) -> dict[str, int | None]:
    """The ids a Hugging Face config.json carries: bos_token_id, eos_token_id, pad_token_id (None: null)."""
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


def _config_files(folder: pathlib.Path) -> list[tuple[pathlib.Path, dict[str, Any]]]:
  """special_tokens_map.json then tokenizer_config.json, those present, parsed (each must be an object)."""
  found = []
  for name in (SPECIAL_TOKENS_FILE, TOKENIZER_CONFIG_FILE):
    path = folder / name
    if path.is_file():
      values = _read_json(path)
      if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object")
      found.append((path, values))
  return found


def _named_tokens(configs: list[tuple[pathlib.Path, dict[str, Any]]]) -> dict[str, str]:
  """Role -> token string, as named by the first file that names it (an explicit null names none)."""
  named: dict[str, str] = {}
  for _, values in configs:
    for role in ROLES:
      token = _token_name(values.get(f"{role}_token"))
      if token is not None:
        named.setdefault(role, token)
  return named


def _add_bos_setting(configs: list[tuple[pathlib.Path, dict[str, Any]]]) -> bool | None:
  """tokenizer_config.json's `add_bos_token` (or special_tokens_map.json's), when it is a bool."""
  for path, values in configs:
    value = values.get("add_bos_token")
    if value is not None:
      if not isinstance(value, bool):
        raise ValueError(f"{path}: add_bos_token must be true or false, got {value!r}")
      return value
  return None


def tokenizer_json_vocab(path: pathlib.Path, data: Any = None) -> dict[str, int]:
  """Token -> id of a tokenizer.json: its model's vocabulary (BPE/WordPiece/WordLevel: an object; Unigram: a
  list of [piece, score], ids by position) plus its added tokens."""
  data = _read_json(path) if data is None else data
  model = data.get("model") if isinstance(data, dict) else None
  raw = model.get("vocab") if isinstance(model, dict) else None
  if isinstance(raw, dict):
    vocab = {str(token): int(i) for token, i in raw.items()}
  elif isinstance(raw, list):
    vocab = {str(entry[0]): i for i, entry in enumerate(raw)}
  else:
    raise ValueError(f"{path}: expected a tokenizer with a 'model.vocab' object or list")
  for added in data.get("added_tokens") or ():
    if not isinstance(added, dict) or not isinstance(added.get("content"), str) or not isinstance(added.get("id"), int):
      raise ValueError(f"{path}: an entry of 'added_tokens' lacks 'content' or 'id': {added!r}")
    vocab[added["content"]] = added["id"]
  return vocab


def _leading_special(processor: Any) -> tuple[str, int | None] | None:
  """(token, id or None) that a tokenizer.json post-processor puts before a single sequence, if any."""
  if not isinstance(processor, dict):
    return None
  kind = processor.get("type")
  if kind == "Sequence":
    for inner in processor.get("processors") or ():
      found = _leading_special(inner)
      if found is not None:
        return found
    return None
  if kind == "TemplateProcessing":
    single = processor.get("single") or []
    first = single[0] if single else None
    if not isinstance(first, dict) or not isinstance(first.get("SpecialToken"), dict):
      return None
    token = first["SpecialToken"].get("id")
    entry = (processor.get("special_tokens") or {}).get(token) or {}
    ids = entry.get("ids") if isinstance(entry, dict) else None
    return str(token), (int(ids[0]) if isinstance(ids, list) and len(ids) == 1 else None)
  if kind in ("RobertaProcessing", "BertProcessing"):
    cls = processor.get("cls")
    if isinstance(cls, list) and len(cls) == 2:
      return str(cls[0]), int(cls[1])
  return None


def is_tokenizer_folder(path: str | os.PathLike) -> bool:
  """Whether `path` holds a Hugging Face tokenizer (tokenizer.json, or vocab.json and merges.txt): a converted
  checkpoint folder usually does, so it can serve as its own tokenizer folder."""
  folder = pathlib.Path(path)
  return (folder / TOKENIZER_FILE).is_file() or ((folder / VOCAB_FILE).is_file() and (folder / "merges.txt").is_file())


def read(tokenizer_dir: str | os.PathLike) -> SpecialTokens:
  """The special tokens and BOS policy of a Hugging Face tokenizer folder (see the module docstring).

  Raises:
    FileNotFoundError: the folder has neither tokenizer.json nor vocab.json.
    ValueError: a file cannot be parsed, or a special token is not in the vocabulary (naming the file and token).
  """
  folder = pathlib.Path(tokenizer_dir)
  leading = None
  if (folder / TOKENIZER_FILE).is_file():
    vocab_path = folder / TOKENIZER_FILE
    data = _read_json(vocab_path)
    vocab = tokenizer_json_vocab(vocab_path, data)
    leading = _leading_special(data.get("post_processor"))
    defaults: Mapping[str, str] = {}
  elif (folder / VOCAB_FILE).is_file():
    vocab_path = folder / VOCAB_FILE
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict):
      raise ValueError(f"{vocab_path}: expected a JSON object of token -> id")
    defaults = DEFAULT_TOKENS
  else:
    raise FileNotFoundError(f"tokenizer files not found in {folder}: expected a Hugging Face tokenizer folder with "
                            f"{TOKENIZER_FILE}, or {VOCAB_FILE} and merges.txt")
  configs = _config_files(folder)
  tokens: dict[str, str | None] = {role: _named_tokens(configs).get(role, defaults.get(role)) for role in ROLES}
  if DEDICATED_UNK_TOKEN in vocab:
    tokens["unk"] = DEDICATED_UNK_TOKEN
  ids: dict[str, int | None] = {}
  for role, token in tokens.items():
    if token is not None and token not in vocab:
      raise ValueError(f"{vocab_path}: special token {token!r} ({role}) is not in the vocabulary")
    ids[role] = None if token is None else int(vocab[token])
  if vocab_path.name == TOKENIZER_FILE:
    add_bos = leading is not None
    if leading is not None:
      token, token_id = leading
      if token_id is None:
        if token not in vocab:
          raise ValueError(f"{vocab_path}: the post-processor's leading token {token!r} is not in the vocabulary")
        token_id = int(vocab[token])
      tokens["bos"], ids["bos"] = token, token_id  # what the tokenizer adds is its BOS
  else:
    setting = _add_bos_setting(configs)
    add_bos = (True if setting is None else setting) and ids["bos"] is not None
  return SpecialTokens(bos=tokens["bos"], eos=tokens["eos"], pad=tokens["pad"], unk=tokens["unk"], bos_id=ids["bos"],
                       eos_id=ids["eos"], pad_id=ids["pad"], unk_id=ids["unk"], add_bos=add_bos)


def _required(value: int | None, role: str) -> int:
  if value is None:
    raise ValueError(f"{OPT_TOKENIZER_DIR}: the OPT tokenizer names no {role}")
  return value


OPT = read(OPT_TOKENIZER_DIR)  # read once, when the module is first imported
OPT_BOS_ID = _required(OPT.added_bos_id, "bos_token")  # </s> = 2, fed before every OPT example
OPT_EOS_ID = _required(OPT.eos_id, "eos_token")  # </s> = 2
