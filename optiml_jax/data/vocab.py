"""The seqio vocabulary of any Hugging Face tokenizer folder (`HFVocabulary`; `OPTVocabulary` is OPT's).

Where it sits: used by `registry.py` (SeqIO tasks tokenize with it), `formatting.py` (the EOS after each target)
and `packing.py` / `evaluation/inference.py` (the BOS policy: `bos_id`, None when the tokenizer adds none). Its
special ids and BOS policy come from `special_tokens.py`, the light module that also gives them to packing,
evaluation and the model's config.json. Tokenization uses the `tokenizers` library directly (Rust, fast).

Folders (`special_tokens.py` says which file wins and how roles and the BOS policy are read):
  tokenizer.json (+ tokenizer_config.json / special_tokens_map.json)   `tokenizers.Tokenizer.from_file`: Llama 2/3,
      Mistral, Qwen2, SmolLM2, whatever transformers 5 saves;
  vocab.json + merges.txt   GPT-2 style byte-level BPE without prefix space: OPT. The default is the copy shipped
      inside the package (`optiml_jax/data/tokenizer_opt/`, MIT / Apache-2.0), so no download and no `../shared`.

Ids and conventions:
  encode      ids WITHOUT a BOS or EOS (seqio convention; the post-processor is not applied). The formatting
              stage adds the EOS after each target and the packer the BOS before each example, when the
              tokenizer adds one (`bos_id`; OPT: `</s>` = 2, Llama 3: `<|begin_of_text|>`, SmolLM2 and Qwen2:
              None, so the first input token is the first token read).
  eos_id      the tokenizer's EOS, required (every target ends with it). OPT: `</s>` = 2.
  pad_id      0, seqio's convention: the packed features (`decoder_*`) pad with 0 at loss weight 0 and segment
              id 0. Id 0 is a real token in some vocabularies (Llama 3: "!"; SmolLM2: `<|endoftext|>`), so
              nothing here or in packing and evaluation tells padding from `token == 0`: padding is known from
              lengths, segment ids or loss weights, and `decode` / `decode_tf` drop only special tokens and ids
              out of range, never a real id 0. OPT's `<s>` = 0 is never produced by its BPE.
  tokenizer_pad_id   the tokenizer's own padding token (OPT `<pad>` = 1, also `opt_pad_id`), or None.
  unk_id      the tokenizer's unknown token (OPT: `<unk>` = 3; see special_tokens.py), or None.
`decode` stops at the first EOS (seqio) and drops special tokens (added tokens marked special, the named roles,
OPT's four fairseq tokens) and ids out of range (padded embedding rows), like Hugging Face's
`skip_special_tokens=True`. Text is never parsed for special tokens: the string "</s>" or "<|im_end|>" in data
is encoded as ordinary text (as metaseq's GPT-2 encoder does), so data cannot inject an EOS; Hugging Face's
tokenizer differs there (by default it maps a literal "</s>" to its id).

`vocab_size` is one past the largest id the tokenizer can produce (OPT: 50,265, SmolLM2: 49,152, Llama 3:
128,256). A model's embedding must cover it: `check_vocab_covers` says so before anything compiles. The OPT
model embedding is padded to 50,272 rows (a multiple of 8): that is `padded_vocab_size`; t5x users set the
model's vocabulary size separately from the seqio vocabulary. That check and the fingerprint below are computed
by `vocab_info.py` (standard library only), which training from the bench cache uses without this module.

Equality and hash follow the tokenizer file contents (tokenizer.json, or vocab.json + merges.txt) and the special
tokens and BOS policy read from the folder, so a copy elsewhere is the same vocabulary.
"""

from __future__ import annotations

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
from optiml_jax.data import vocab_info

DEFAULT_TOKENIZER_DIR = special_tokens.OPT_TOKENIZER_DIR
TOKENIZER_FILE = special_tokens.TOKENIZER_FILE
VOCAB_FILE = special_tokens.VOCAB_FILE
MERGES_FILE = vocab_info.MERGES_FILE
FAIRSEQ_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
EMBEDDING_MULTIPLE = 8  # OPT pads its embedding table to a multiple of 8 rows: 50265 -> 50272.
# (source, continuation) pairs at the boundaries formatting makes (a source ends without whitespace, a target
# starts with a space): a tokenizer that encodes each continuation alone as the joined text's tail is trusted to
# do so always (byte-level BPE: its pre-tokenizer cuts before the space), so `formatting.continuation_tokens`
# need not encode the joined text. Sentencepiece-style tokenizers ("▁" prepended to any text) fail the probe.
CONTINUATION_PROBES = (("Answer:", " yes"), ("Q: 12", " 34"), ("Output:", " Paris, France."), ("a", " b"),
                       ("x\n", " y"), ("end.", " \"Start\""))


def build_tokenizer(vocab_path: str, merges_path: str) -> tokenizers.Tokenizer:
  """GPT-2 style byte-level BPE (no prefix space, no special-token parsing) from vocab.json + merges.txt."""
  tokenizer = tokenizers.Tokenizer(models.BPE.from_file(vocab_path, merges_path))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def load_tokenizer_json(path: pathlib.Path) -> tokenizers.Tokenizer:
  """A tokenizer.json as encoding needs it: no truncation, no padding, special tokens in text read as text."""
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
  except Exception as e:  # tokenizers raises a bare Exception on a malformed file
    raise ValueError(f"{path}: cannot load the tokenizer: {e}") from e
  tokenizer.no_truncation()
  tokenizer.no_padding()
  tokenizer.encode_special_tokens = True
  return tokenizer


class HFVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a Hugging Face tokenizer folder; see the module docstring for the ids.

  Example (a tokenizer.json folder, SmolLM2's):
    >>> vocab = HFVocabulary("smollm2/")
    >>> vocab.bos_id is None, vocab.eos_id   # SmolLM2 adds no BOS; <|im_end|> ends a target
    (True, 2)
  """

  def __init__(self, tokenizer_dir: str | os.PathLike):
    """Loads the tokenizer.

    Args:
      tokenizer_dir: a Hugging Face tokenizer folder with `tokenizer.json`, or `vocab.json` and `merges.txt`
        (optionally `special_tokens_map.json` / `tokenizer_config.json`, whose tokens and `add_bos_token` are
        honoured: `special_tokens.read`).

    Raises:
      FileNotFoundError: a tokenizer file is missing.
      ValueError: a file cannot be read, a special token is not in the vocabulary, or the folder names no EOS.
    """
    super().__init__(extra_ids=0)
    self._tokenizer_dir = pathlib.Path(tokenizer_dir)
    self._load()

  def _load(self) -> None:
    folder = self._tokenizer_dir
    files = vocab_info.tokenizer_files(folder)
    if files[0].name == TOKENIZER_FILE:
      self._tokenizer = load_tokenizer_json(files[0])
      special = {i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special}
    else:
      self._tokenizer = build_tokenizer(str(files[0]), str(files[1]))
      special = set()
    tokens = special_tokens.read(folder)
    if tokens.eos_id is None:
      raise ValueError(f"{folder}: the tokenizer names no eos_token ({special_tokens.SPECIAL_TOKENS_FILE} or "
                       f"{special_tokens.TOKENIZER_CONFIG_FILE}); every target ends with it")
    self._tokens = tokens
    self._eos_id: int = tokens.eos_id
    self._digest = vocab_info.files_digest(files)
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    roles = (tokens.bos_id, tokens.eos_id, tokens.pad_id, tokens.unk_id)
    special |= {vocab[t] for t in FAIRSEQ_SPECIAL_TOKENS if t in vocab and files[0].name == VOCAB_FILE}
    self._special_ids = frozenset(special | {i for i in roles if i is not None})
    self._size = max(vocab.values()) + 1 if vocab else 0
    self._continuations_alone = all(
        self._encode(a) + self._encode(b) == self._encode(a + b) for a, b in CONTINUATION_PROBES)

  # --- Ids ---------------------------------------------------------------------------------------------

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def bos_id(self) -> int | None:
    """The token fed before each example (packing, scoring, decoding), or None when the tokenizer adds none.

    A tokenizer may name a BOS it does not add (SmolLM2's `<|im_start|>`): that one is `special_tokens.bos_id`.
    """
    return self._tokens.added_bos_id

  @property
  def add_bos(self) -> bool:
    """Whether a BOS is fed before each example (`bos_id` is then not None)."""
    return self._tokens.add_bos

  @property
  def prefix_ids(self) -> tuple[int, ...]:
    """The ids before an example's first input token: (bos_id,) or ()."""
    return self._tokens.prefix_ids

  @property
  def unk_id(self) -> int | None:
    return self._tokens.unk_id

  @property
  def tokenizer_pad_id(self) -> int | None:
    """The tokenizer's own padding id (OPT: 1), or None; the seqio `pad_id` is 0 (see the module docstring)."""
    return self._tokens.pad_id

  @property
  def special_tokens(self) -> special_tokens.SpecialTokens:
    """Every role's token and id as the folder names them, and the BOS policy."""
    return self._tokens

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  @property
  def padded_vocab_size(self) -> int:
    """`vocab_size` rounded up to a multiple of 8 (OPT's embedding rows: 50,272)."""
    return -(-self.vocab_size // EMBEDDING_MULTIPLE) * EMBEDDING_MULTIPLE

  @property
  def tokenizer_dir(self) -> pathlib.Path:
    return self._tokenizer_dir

  @property
  def continuations_encode_alone(self) -> bool:
    """Whether a target encoded alone (" " + target) gives the tokens it has after its source (see
    `CONTINUATION_PROBES`): true for byte-level BPE (OPT, SmolLM2, Llama 3, Qwen2), false for sentencepiece-style
    tokenizers (Llama 2, Mistral), whose targets `formatting.continuation_tokens` then cuts from the joined text."""
    return self._continuations_alone

  # --- Python ------------------------------------------------------------------------------------------

  def _encode(self, s: str) -> list[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Iterable[int]) -> str:
    kept = [int(i) for i in ids if 0 <= int(i) < self._size and int(i) not in self._special_ids]
    return self._tokenizer.decode(kept, skip_special_tokens=False)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS, special tokens and ids out of range dropped (id 0 kept when real)."""
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy()
    values = [int(i) for i in np.asarray(ids).reshape(-1)] if isinstance(ids, np.ndarray) else [int(i) for i in ids]
    if self._eos_id in values:
      values = values[:values.index(self._eos_id)]
    return self._decode(values)

  # --- TensorFlow (tf.py_function: works eagerly and inside `tf.data.Dataset.map`) ------------------------

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar tf.string -> 1-D int32 ids (no BOS, no EOS)."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank not in (None, 0):
      raise ValueError(f"{type(self).__name__}.encode_tf: expected a scalar string, got shape {s.shape}")

    def encode_np(text: tf.Tensor) -> np.ndarray:
      return np.asarray(self._encode(text.numpy().decode("utf-8")), dtype=np.int32)

    ids = tf.py_function(encode_np, [s], tf.int32)
    ids.set_shape([None])
    return ids

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids of shape [..., length] -> tf.string of shape [...], each row as `decode` reads it.

    seqio's own decode_tf replaces what follows the EOS with pad_id 0, a real token in some vocabularies; this
    one cuts at the EOS instead.
    """
    return self._decode_tf(tf.convert_to_tensor(ids))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    if ids.shape.rank == 0:
      raise ValueError(f"{type(self).__name__}.decode_tf: expected ids with a length axis, got a scalar")

    def decode_np(values: tf.Tensor) -> np.ndarray:
      array = values.numpy()
      rows = array.reshape(int(np.prod(array.shape[:-1])), array.shape[-1])
      texts = [self.decode(row.tolist()).encode("utf-8") for row in rows]
      return np.array(texts, dtype=object).reshape(array.shape[:-1])

    texts = tf.py_function(decode_np, [ids], tf.string)
    texts.set_shape(ids.shape[:-1])
    return texts

  # --- Identity ----------------------------------------------------------------------------------------

  @property
  def fingerprint(self) -> str:
    """A hex digest of what equality compares (tokenizer file contents, special tokens, BOS policy): stable across
    processes and copies of the folder, so a cache built with this vocabulary can be recognised (`data.cache`)."""
    return vocab_info.fingerprint(self._digest, self._tokens)

  def __eq__(self, other: object) -> bool:
    """Equal when built from the same tokenizer file contents with the same special tokens and BOS policy."""
    if not isinstance(other, HFVocabulary):
      return NotImplemented
    return self._digest == other._digest and self._tokens == other._tokens

  def __hash__(self) -> int:
    return hash((self._digest, self._tokens))

  def __str__(self) -> str:
    return f"{type(self).__name__}(tokenizer_dir={str(self._tokenizer_dir)!r}, vocab_size={self.vocab_size})"

  __repr__ = __str__

  def __getstate__(self) -> dict[str, Any]:
    return {"tokenizer_dir": str(self._tokenizer_dir), "extra_ids": self._extra_ids}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._extra_ids = state["extra_ids"]
    self._tokenizer_dir = pathlib.Path(state["tokenizer_dir"])
    self._load()


class OPTVocabulary(HFVocabulary):
  """`HFVocabulary` whose folder defaults to the OPT tokenizer shipped in the package.

  Example:
    >>> vocab = OPTVocabulary()
    >>> vocab.encode("Hello, my dog is cute")
    [31414, 6, 127, 2335, 16, 11962]
    >>> vocab.decode([31414, 6, 127, 2335, 16, 11962, 2, 50118])
    'Hello, my dog is cute'
  """

  def __init__(self, tokenizer_dir: str | os.PathLike | None = None):
    """Loads the tokenizer of `tokenizer_dir` (None: the copy shipped in the package); see `HFVocabulary`."""
    super().__init__(tokenizer_dir if tokenizer_dir is not None else DEFAULT_TOKENIZER_DIR)

  @property
  def opt_pad_id(self) -> int | None:
    """OPT's own `<pad>` id (1); the seqio `pad_id` is 0 (see the module docstring)."""
    return self.tokenizer_pad_id


is_tokenizer_folder = special_tokens.is_tokenizer_folder


def load(tokenizer_dir: str | os.PathLike | None = None) -> HFVocabulary:
  """The vocabulary of a Hugging Face tokenizer folder; None: OPT's (the copy shipped in the package)."""
  return OPTVocabulary() if tokenizer_dir is None else HFVocabulary(tokenizer_dir)


def check_vocab_covers(model_vocab_size: int, vocabulary: Any, source: str = "the model config") -> None:
  """Raises ValueError when a model's vocabulary size does not cover every id the tokenizer can produce.

  Args:
    model_vocab_size: the model's embedding rows (`config.vocab_size`).
    vocabulary: the seqio vocabulary the data is tokenized with (its `vocab_size` is one past its largest id).
    source: where `model_vocab_size` comes from, for the message (a checkpoint's config.json, a gin binding).

  Raises:
    ValueError: naming the tokenizer folder, both sizes and `source`.
  """
  folder = getattr(vocabulary, "tokenizer_dir", None)
  where = f"the tokenizer in {folder}" if folder is not None else f"the vocabulary {vocabulary}"
  vocab_info.check_covers(model_vocab_size, int(vocabulary.vocab_size), where, source)
