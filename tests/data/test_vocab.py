"""Tests for the OPT vocabulary (package copy of the tokenizer; ../shared copy and HF tokenizer to compare)."""

import pathlib
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf

from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data import vocab_info

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


# --- Any Hugging Face tokenizer folder: tokenizer.json (transformers 5's format) ------------------------------

TOKENIZER_TEXTS = TEXTS + ["Answer: yes", "Q: what? A: that", "!!! 42 + 7 = 49!"]


@pytest.mark.parametrize("style", ["smollm2", "llama3", "llama2"])
def test_a_tokenizer_json_folder_encodes_as_transformers_does(tiny_tokenizer, style):
  transformers = pytest.importorskip("transformers")
  folder = tiny_tokenizer(style)
  vocab = vocab_lib.HFVocabulary(folder)
  reference = transformers.AutoTokenizer.from_pretrained(str(folder))
  assert vocab.prefix_ids == (() if style == "smollm2" else (vocab.bos_id,))
  assert vocab.add_bos == (style != "smollm2") and vocab.eos_id == reference.eos_token_id
  for text in TOKENIZER_TEXTS:
    assert list(vocab.prefix_ids) + vocab.encode(text) == reference(text)["input_ids"], text
    assert vocab.decode(vocab.encode(text)) == text
  assert vocab.vocab_size == max(reference.get_vocab().values()) + 1


def test_a_smollm2_style_vocabulary(tiny_tokenizer):
  vocab = vocab_lib.HFVocabulary(tiny_tokenizer("smollm2"))
  assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.tokenizer_pad_id, vocab.pad_id) == (None, 2, 0, None, 0)
  assert vocab.special_tokens.bos_id == 1  # named, but not added
  # Special-token text in data is ordinary text; decoding drops the special ids and stops at the EOS.
  ids = vocab.encode("a <|im_end|> b")
  assert not set(ids) & {0, 1, 2} and vocab.decode(ids) == "a <|im_end|> b"
  hello = vocab.encode("Hello, world")
  assert vocab.decode([0, 1] + hello + [2] + vocab.encode(" more")) == "Hello, world"


def test_id_0_is_a_real_token_of_a_llama3_style_vocabulary(tiny_tokenizer):
  vocab = vocab_lib.HFVocabulary(tiny_tokenizer("llama3"))
  assert vocab.encode("!") == [0]
  answer = vocab.encode(" yes")
  assert vocab.decode([0] + answer + [0]) == "! yes!"
  # After the EOS comes padding (0 here too): cut at the EOS, not read as "!".
  row = [0] + answer + [vocab.eos_id, 0, 0, 0]
  assert vocab.decode(row) == "! yes"
  assert vocab.decode(row + [vocab.vocab_size + 5]) == "! yes"
  decoded = vocab.decode_tf(tf.constant([row, [0, 0, vocab.eos_id, 0, 0, 0, 0][:len(row)]]))
  assert [t.decode("utf-8") for t in decoded.numpy()] == ["! yes", "!!"]
  assert vocab.decode_tf(tf.constant(row)).numpy().decode("utf-8") == "! yes"
  dataset = tf.data.Dataset.from_tensor_slices(["! yes", "!"]).map(vocab.encode_tf)
  assert [ids.tolist() for ids in dataset.as_numpy_iterator()] == [[0] + answer, [0]]


def test_transformers_5_copy_of_opt_reads_like_the_vocab_json_folder(tmp_path):
  transformers = pytest.importorskip("transformers")
  transformers.AutoTokenizer.from_pretrained(str(vocab_lib.DEFAULT_TOKENIZER_DIR)).save_pretrained(str(tmp_path))
  assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
  saved, shipped = vocab_lib.HFVocabulary(tmp_path), vocab_lib.OPTVocabulary()
  assert saved.special_tokens == shipped.special_tokens  # </s> BOS added (its post-processor), <unk> kept
  for text in TEXTS:
    assert saved.encode(text) == shipped.encode(text)
    assert saved.decode(saved.encode(text) + [2, 5]) == text
  assert saved.vocab_size == shipped.vocab_size
  assert saved != shipped  # other files: equality follows the file contents


def test_tokenizer_json_equality_hash_and_pickle(tiny_tokenizer, tmp_path):
  folder = tiny_tokenizer("smollm2")
  vocab = vocab_lib.HFVocabulary(folder)
  copy = tmp_path / "copy"
  shutil.copytree(folder, copy)
  same = vocab_lib.HFVocabulary(copy)
  assert same == vocab and hash(same) == hash(vocab) and vocab != vocab_lib.OPTVocabulary()
  assert vocab != vocab_lib.HFVocabulary(tiny_tokenizer("llama3"))
  again = pickle.loads(pickle.dumps(vocab))
  assert again == vocab and type(again) is vocab_lib.HFVocabulary and again.encode(HELLO) == vocab.encode(HELLO)
  (copy / "special_tokens_map.json").write_text('{"eos_token": "<|endoftext|>"}')  # same files, another EOS
  assert vocab_lib.HFVocabulary(copy) != vocab and vocab_lib.HFVocabulary(copy).eos_id == 0
  assert vocab_lib.load(copy) == vocab_lib.HFVocabulary(copy) and vocab_lib.load() == vocab_lib.OPTVocabulary()
  assert vocab_lib.is_tokenizer_folder(copy) and vocab_lib.is_tokenizer_folder(vocab_lib.DEFAULT_TOKENIZER_DIR)
  (copy / "tokenizer.json").unlink()
  assert not vocab_lib.is_tokenizer_folder(copy)


def test_a_folder_without_eos_or_files_is_named(tiny_tokenizer, tmp_path):
  folder = tmp_path / "no_eos"
  shutil.copytree(tiny_tokenizer("smollm2"), folder)
  (folder / "tokenizer_config.json").write_text('{"bos_token": "<|im_start|>"}')
  with pytest.raises(ValueError, match=f"{folder}: the tokenizer names no eos_token"):
    vocab_lib.HFVocabulary(folder)
  (folder / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer\.json: cannot"):
    vocab_lib.HFVocabulary(folder)
  with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json"):
    vocab_lib.HFVocabulary(tmp_path / "nothing")


def test_check_vocab_covers_names_the_folder_and_both_sizes(tiny_tokenizer):
  vocab_lib.check_vocab_covers(50272, vocab_lib.OPTVocabulary())
  vocab_lib.check_vocab_covers(50265, vocab_lib.OPTVocabulary())
  with pytest.raises(
      ValueError, match=r"config\.json: vocab_size 50264 does not cover the tokenizer in .*tokenizer_opt"
      r", whose ids go up to 50264 \(vocab_size >= 50265 needed\)"):
    vocab_lib.check_vocab_covers(50264, vocab_lib.OPTVocabulary(), "config.json")
  llama3 = vocab_lib.HFVocabulary(tiny_tokenizer("llama3"))
  top = max(llama3.prefix_ids[0], llama3.eos_id)  # the special tokens sit above the BPE ids
  vocab_lib.check_vocab_covers(top + 1, llama3)
  with pytest.raises(ValueError, match=f"vocab_size {top} does not cover the tokenizer in {llama3.tokenizer_dir}"):
    vocab_lib.check_vocab_covers(top, llama3, "gin binding LlamaConfig.vocab_size")


@pytest.mark.parametrize("style", [None, "smollm2", "llama3"])
def test_a_folder_is_fingerprinted_without_loading_its_tokenizer_as_the_vocabulary_is(style, tiny_tokenizer, tmp_path):
  """What training from the cache compares against the cache's record, without seqio (`vocab_info`)."""
  folder = vocab_lib.DEFAULT_TOKENIZER_DIR if style is None else tiny_tokenizer(style)
  assert vocab_info.folder_fingerprint(folder) == vocab_lib.HFVocabulary(folder).fingerprint
  copy = tmp_path / "copy"
  shutil.copytree(folder, copy)
  assert vocab_info.folder_fingerprint(copy) == vocab_info.folder_fingerprint(folder)
  if style is None:  # another tokenizer file: one merge fewer, or one more byte of JSON
    merges = copy / "merges.txt"
    merges.write_text("".join(merges.read_text(encoding="utf-8").splitlines(True)[:-1]), encoding="utf-8")
  else:
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text(encoding="utf-8") + "\n", encoding="utf-8")
  assert vocab_info.folder_fingerprint(copy) == vocab_lib.HFVocabulary(copy).fingerprint
  assert vocab_info.folder_fingerprint(copy) != vocab_info.folder_fingerprint(folder)
  with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json"):
    vocab_info.folder_fingerprint(tmp_path / "nothing")


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2_tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  vocab = vocab_lib.HFVocabulary(smollm2_tokenizer_dir)
  reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
  tokens = vocab.special_tokens
  assert (tokens.eos, tokens.eos_id, tokens.bos_id, vocab.bos_id, vocab.prefix_ids) == ("<|im_end|>", 2, 1, None, ())
  assert reference.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  assert vocab.vocab_size == 49152 and vocab.eos_id == reference.eos_token_id
  assert vocab.continuations_encode_alone  # byte-level BPE
  for text in TOKENIZER_TEXTS:
    assert vocab.encode(text) == reference(text)["input_ids"], text
    assert vocab.decode(vocab.encode(text) + [2, 0]) == text
  vocab_lib.check_vocab_covers(49152, vocab, "SmolLM2-135M config.json")
