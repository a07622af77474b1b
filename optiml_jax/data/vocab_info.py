"""A tokenizer folder's identity, and the check that a model's embedding covers its ids: standard library only.

Where it sits: beside `special_tokens.py`, at the root of the data side. `vocab.HFVocabulary` (the seqio
vocabulary, which needs TensorFlow) takes its `fingerprint` and `check_vocab_covers` from here, and `train.run`
uses the same two when it trains from the bench cache without TensorFlow or seqio: TOKENIZER_DIR's fingerprint
against the one the cache recorded (`cache.check_vocabulary`), the model's vocab_size against the vocabulary size
the cache recorded (`cache.TokenizerInfo`). A test imports this module in a fresh interpreter without either.

Fingerprint: sha256 of the files that define the tokenizer (tokenizer.json; else vocab.json then merges.txt),
hashed again with the folder's special tokens and BOS policy (`special_tokens.read`). A copy of the folder
elsewhere has the same fingerprint; another file content or special token, another one.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Iterable

from optiml_jax.data import special_tokens

MERGES_FILE = "merges.txt"


def tokenizer_files(tokenizer_dir: str | os.PathLike) -> tuple[pathlib.Path, ...]:
  """The files that define a tokenizer folder's tokens: (tokenizer.json,) when it has one, else (vocab.json,
  merges.txt).

  Raises:
    FileNotFoundError: naming the missing file and what a tokenizer folder holds.
  """
  folder = pathlib.Path(tokenizer_dir)
  if (folder / special_tokens.TOKENIZER_FILE).is_file():
    return (folder / special_tokens.TOKENIZER_FILE,)
  files = (folder / special_tokens.VOCAB_FILE, folder / MERGES_FILE)
  for path in files:
    if not path.is_file():
      raise FileNotFoundError(f"tokenizer file not found: {path} (expected a Hugging Face tokenizer folder with "
                              f"{special_tokens.TOKENIZER_FILE}, or {special_tokens.VOCAB_FILE} and {MERGES_FILE})")
  return files


def files_digest(paths: Iterable[pathlib.Path]) -> str:
  """sha256 of the files' bytes, in order."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.read_bytes())
  return digest.hexdigest()


def fingerprint(digest: str, tokens: special_tokens.SpecialTokens) -> str:
  """The fingerprint of a tokenizer whose files have `files_digest` `digest` and whose folder names `tokens`."""
  return hashlib.sha256(f"{digest}\x1f{tokens!r}".encode()).hexdigest()


def folder_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
  """The fingerprint of a tokenizer folder, read without loading the tokenizer (`vocab.HFVocabulary(tokenizer_dir)
  .fingerprint`, which a bench cache records).

  Raises:
    FileNotFoundError: a tokenizer file is missing.
    ValueError: a file cannot be parsed, or a special token is not in the vocabulary.
  """
  return fingerprint(files_digest(tokenizer_files(tokenizer_dir)), special_tokens.read(tokenizer_dir))


def check_covers(model_vocab_size: int, vocab_size: int, tokenizer: str, source: str = "the model config") -> None:
  """Raises ValueError when a model's embedding rows do not cover every id a tokenizer can produce.

  Args:
    model_vocab_size: the model's embedding rows (`config.vocab_size`).
    vocab_size: one past the tokenizer's largest id.
    tokenizer: the tokenizer, for the message ("the tokenizer in /path").
    source: where `model_vocab_size` comes from, for the message (a checkpoint's config.json, a gin binding).
  """
  if int(model_vocab_size) >= int(vocab_size):
    return
  raise ValueError(f"{source}: vocab_size {model_vocab_size} does not cover {tokenizer}, whose ids go up to "
                   f"{int(vocab_size) - 1} (vocab_size >= {int(vocab_size)} needed); use the tokenizer the model was "
                   "trained with, or a model config whose vocab_size covers it")
