"""The OPT vocabulary: a `seqio.Vocabulary` over OPT's byte-level BPE (GPT-2 merges, RoBERTa/fairseq ids).

Where it sits: used by `registry.py` (SeqIO tasks tokenize with it) and `formatting.py` (BOS/EOS ids). Its
special ids come from `special_tokens.py`, the light module that also gives them to packing, evaluation and
the model's config.json. It reads any Hugging Face tokenizer folder holding `vocab.json` and `merges.txt`; the
default is the copy shipped inside the package (`optiml_jax/data/tokenizer_opt/`, MIT / Apache-2.0), so no
download and no `../shared` is needed. Tokenization uses the `tokenizers` library directly (Rust, fast).

Ids and conventions (`special_tokens.OPT`, read from the folder's special_tokens_map.json and vocab.json):
  `</s>` = 2    EOS, and also OPT's BOS. `encode` returns ids WITHOUT a leading BOS (seqio convention);
                the formatting stage prepends `bos_id` (2) itself, as Hugging Face's OPT tokenizer does.
  `<pad>` = 1   OPT's padding token, exposed as `opt_pad_id` (Hugging Face batches pad with it).
  `<s>` = 0     never produced by the BPE. seqio's `pad_id` is 0 by convention, and the packed features
                (`decoder_*`) pad with 0 at loss weight 0, so 0 is this vocabulary's `pad_id`: padding
                positions are masked, never trained on and dropped by `decode`.
  `<unk>` = 3   `unk_id` (byte-level BPE never needs it; seqio maps out-of-range ids to it when decoding, so it
                must not be the EOS: see special_tokens.py).
`decode` stops at the first EOS (seqio) and drops these four special tokens, like Hugging Face's
`skip_special_tokens=True`. Text is never parsed for special tokens: the string "</s>" in data is BPE-encoded
as ordinary text (as metaseq's GPT-2 encoder does), so data cannot inject an EOS; Hugging Face's tokenizer
differs there (it maps a literal "</s>" to id 2).

`vocab_size` is 50,265, the number of tokenizer entries (every id `encode` can produce is below it). The OPT
model embedding is padded to 50,272 rows (a multiple of 8): that is `padded_vocab_size`, what the model config
uses; t5x users set the model's vocabulary size separately from the seqio vocabulary.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Iterable

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers

from optiml_jax.data import special_tokens

DEFAULT_TOKENIZER_DIR = special_tokens.OPT_TOKENIZER_DIR
VOCAB_FILE = special_tokens.VOCAB_FILE
MERGES_FILE = "merges.txt"
FAIRSEQ_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
EMBEDDING_MULTIPLE = 8  # OPT pads its embedding table to a multiple of 8 rows: 50265 -> 50272.


def _file_digest(paths: Iterable[pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.read_bytes())
  return digest.hexdigest()


def build_tokenizer(vocab_path: str, merges_path: str) -> tokenizers.Tokenizer:
  """GPT-2 style byte-level BPE (no prefix space, no special-token parsing) from vocab.json + merges.txt."""
  tokenizer = tokenizers.Tokenizer(models.BPE.from_file(vocab_path, merges_path))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


class OPTVocabulary(seqio.Vocabulary):
  """seqio vocabulary over OPT's byte-level BPE; see the module docstring for the ids.

  Example:
    >>> vocab = OPTVocabulary()
    >>> vocab.encode("Hello, my dog is cute")
    [31414, 6, 127, 2335, 16, 11962]
    >>> vocab.decode([31414, 6, 127, 2335, 16, 11962, 2, 50118])
    'Hello, my dog is cute'
  """

  def __init__(self, tokenizer_dir: str | os.PathLike | None = None):
    """Loads the tokenizer.

    Args:
      tokenizer_dir: a Hugging Face tokenizer folder with `vocab.json` and `merges.txt` (and optionally
        `special_tokens_map.json`, whose tokens are honoured: `special_tokens.read`); None = the copy shipped in
        the package.

    Raises:
      FileNotFoundError: a tokenizer file is missing.
      ValueError: a special token is not in `vocab.json`.
    """
    super().__init__(extra_ids=0)
    self._tokenizer_dir = pathlib.Path(tokenizer_dir) if tokenizer_dir is not None else DEFAULT_TOKENIZER_DIR
    self._load()

  def _load(self) -> None:
    folder = self._tokenizer_dir
    vocab_path, merges_path = folder / VOCAB_FILE, folder / MERGES_FILE
    for path in (vocab_path, merges_path):
      if not path.is_file():
        raise FileNotFoundError(f"OPT tokenizer file not found: {path} (expected a Hugging Face tokenizer folder "
                                f"with {VOCAB_FILE} and {MERGES_FILE})")
    self._digest = _file_digest((vocab_path, merges_path))
    self._tokenizer = build_tokenizer(str(vocab_path), str(merges_path))
    tokens = special_tokens.read(folder)
    self._eos_id = tokens.eos_id
    self._bos_id = tokens.bos_id
    self._opt_pad_id = tokens.pad_id
    self._unk_id = tokens.unk_id
    vocab = self._tokenizer.get_vocab()
    self._special_ids = frozenset(
        vocab[t] for t in FAIRSEQ_SPECIAL_TOKENS + (tokens.bos, tokens.eos, tokens.pad) if t in vocab)
    self._size = self._tokenizer.get_vocab_size()

  # --- Ids ---------------------------------------------------------------------------------------------

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def bos_id(self) -> int:
    return self._bos_id

  @property
  def unk_id(self) -> int:
    return self._unk_id

  @property
  def opt_pad_id(self) -> int:
    """OPT's own `<pad>` id (1); the seqio `pad_id` is 0 (see the module docstring)."""
    return self._opt_pad_id

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  @property
  def padded_vocab_size(self) -> int:
    """The model's embedding rows: `vocab_size` rounded up to a multiple of 8 (50,272 for OPT)."""
    return -(-self.vocab_size // EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE

  @property
  def tokenizer_dir(self) -> pathlib.Path:
    return self._tokenizer_dir

  # --- Python ------------------------------------------------------------------------------------------

  def _encode(self, s: str) -> list[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    kept = [int(i) for i in ids if 0 <= int(i) < self._size and int(i) not in self._special_ids]
    return self._tokenizer.decode(kept, skip_special_tokens=False)

  # --- TensorFlow (tf.py_function: works eagerly and inside `tf.data.Dataset.map`) ------------------------

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar tf.string -> 1-D int32 ids (no BOS, no EOS)."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank not in (None, 0):
      raise ValueError(f"OPTVocabulary.encode_tf: expected a scalar string, got shape {s.shape}")

    def encode_np(text: tf.Tensor) -> np.ndarray:
      return np.asarray(self._encode(text.numpy().decode("utf-8")), dtype=np.int32)

    ids = tf.py_function(encode_np, [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids of shape [..., length] -> tf.string of shape [...] (specials and padding dropped)."""
    ids = tf.convert_to_tensor(ids)
    if ids.shape.rank == 0:
      raise ValueError("OPTVocabulary.decode_tf: expected ids with a length axis, got a scalar")

    def decode_np(values: tf.Tensor) -> np.ndarray:
      array = values.numpy()
      rows = array.reshape(int(np.prod(array.shape[:-1])), array.shape[-1])
      texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
      return np.array(texts, dtype=object).reshape(array.shape[:-1])

    texts = tf.py_function(decode_np, [ids], tf.string)
    texts.set_shape(ids.shape[:-1])
    return texts

  # --- Identity ----------------------------------------------------------------------------------------

  def __eq__(self, other: object) -> bool:
    """Equal when built from the same vocab.json and merges.txt contents (and the same EOS)."""
    if not isinstance(other, OPTVocabulary):
      return NotImplemented
    return self._digest == other._digest and self._eos_id == other._eos_id

  def __hash__(self) -> int:
    return hash((self._digest, self._eos_id))

  def __str__(self) -> str:
    return f"OPTVocabulary(tokenizer_dir={str(self._tokenizer_dir)!r}, vocab_size={self.vocab_size})"

  __repr__ = __str__

  def __getstate__(self) -> dict[str, Any]:
    return {"tokenizer_dir": str(self._tokenizer_dir), "extra_ids": self._extra_ids}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._extra_ids = state["extra_ids"]
    self._tokenizer_dir = pathlib.Path(state["tokenizer_dir"])
    self._load()
