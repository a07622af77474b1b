"""Tests for the OPT vocabulary (package copy of the tokenizer; ../shared copy and HF tokenizer to compare)."""

import pathlib
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf

from optiml_jax.data import vocab as vocab_lib

HELLO = "Hello, my dog is cute"
HELLO_IDS = [31414, 6, 127, 2335, 16, 11962]  # facebook/opt-* ids after the leading </s>.
TEXTS = [
    HELLO,
    "  leading spaces, trailing spaces   ",
    "Line one.\nLine two.\n\n\tTabbed: x=1; y='2' (ok?)",
    "Unicode: café naïve — “quotes” 中文 😀 ﬁ",
    "Numbers 1234567 and 3.14159, URLs http://example.com/a?b=c",
    "",
]


@pytest.fixture(scope="module")
def vocab() -> vocab_lib.OPTVocabulary:
  return vocab_lib.OPTVocabulary()


def test_known_ids_and_sizes(vocab):
  assert isinstance(vocab, seqio.Vocabulary)
  assert vocab.encode(HELLO) == HELLO_IDS
  assert (vocab.eos_id, vocab.bos_id, vocab.pad_id, vocab.unk_id, vocab.opt_pad_id) == (2, 2, 0, 3, 1)
  assert vocab.vocab_size == 50265 and vocab.padded_vocab_size == 50272
  assert vocab.tokenizer_dir == vocab_lib.DEFAULT_TOKENIZER_DIR


def test_matches_the_hugging_face_tokenizer(vocab, opt_tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  reference = transformers.AutoTokenizer.from_pretrained(str(opt_tokenizer_dir))
  for text in TEXTS:
    expected = reference(text)["input_ids"]
    assert expected[0] == vocab.bos_id
    assert vocab.encode(text) == expected[1:], text
    assert vocab.decode(vocab.encode(text)) == text


def test_special_token_text_is_not_a_control_token(vocab):
  ids = vocab.encode("a </s> b <pad>")
  assert not set(ids) & {0, 1, 2, 3}
  assert vocab.decode(ids) == "a </s> b <pad>"


def test_decode_stops_at_eos_and_drops_padding(vocab):
  assert vocab.decode(HELLO_IDS + [2] + vocab.encode(" more")) == HELLO
  assert vocab.decode([2] + HELLO_IDS + [2]) == ""  # seqio: decoding stops at the first EOS.
  assert vocab.decode([0, 1, 3] + HELLO_IDS + [0, 0]) == HELLO
  assert vocab.decode(HELLO_IDS + [vocab.padded_vocab_size - 1]) == HELLO  # Padded embedding rows.
  assert vocab.decode(np.array(HELLO_IDS, np.int32)) == HELLO


def test_tf_encode_decode_inside_dataset_map(vocab):
  dataset = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
  encoded = [ids.tolist() for ids in dataset.as_numpy_iterator()]
  assert encoded == [vocab.encode(t) for t in TEXTS]
  assert dataset.element_spec == tf.TensorSpec([None], tf.int32)
  decoded = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf).map(vocab.decode_tf)
  assert [t.decode("utf-8") for t in decoded.as_numpy_iterator()] == TEXTS
  assert vocab.encode_tf(tf.constant(HELLO)).numpy().tolist() == HELLO_IDS


def test_seqio_tokenize_preprocessor(vocab):
  dataset = tf.data.Dataset.from_tensors({"targets": HELLO})
  features = {"targets": seqio.Feature(vocabulary=vocab, add_eos=True)}
  tokenized = seqio.preprocessors.tokenize(dataset, output_features=features)
  (example,) = list(tokenized.as_numpy_iterator())
  assert example["targets"].tolist() == HELLO_IDS and example["targets_pretokenized"] == HELLO.encode()


def test_tf_decode_batched(vocab):
  world = vocab.encode(" world")
  batch = tf.constant([HELLO_IDS + [2] + world, world + [0] * (len(HELLO_IDS) + 1 - len(world)) + [2] * len(world)])
  decoded = vocab.decode_tf(batch)
  assert decoded.shape == (2,)
  assert [t.decode("utf-8") for t in decoded.numpy()] == [HELLO, " world"]


def test_equality_follows_the_tokenizer_files(vocab, opt_tokenizer_dir, tmp_path):
  from_shared = vocab_lib.OPTVocabulary(opt_tokenizer_dir)
  assert from_shared == vocab and hash(from_shared) == hash(vocab)
  assert from_shared.encode(HELLO) == HELLO_IDS
  for name in ("vocab.json", "merges.txt"):
    assert (vocab_lib.DEFAULT_TOKENIZER_DIR / name).read_bytes() == (opt_tokenizer_dir / name).read_bytes()
  changed = tmp_path / "changed"
  shutil.copytree(vocab_lib.DEFAULT_TOKENIZER_DIR, changed)
  merges = (changed / "merges.txt").read_text(encoding="utf-8").splitlines()
  (changed / "merges.txt").write_text("\n".join(merges[:-1000]) + "\n", encoding="utf-8")
  assert vocab_lib.OPTVocabulary(changed) != vocab
  assert vocab != "not a vocabulary"


def test_pickles(vocab):
  again = pickle.loads(pickle.dumps(vocab))
  assert again == vocab and again.encode(HELLO) == HELLO_IDS


def test_missing_files_are_named(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="merges.txt"):
    vocab_lib.OPTVocabulary(tmp_path)


def test_package_ships_the_tokenizer_files():
  names = {p.name for p in pathlib.Path(vocab_lib.DEFAULT_TOKENIZER_DIR).iterdir()}
  assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
