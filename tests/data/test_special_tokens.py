"""Tests of optiml_jax.data.special_tokens: OPT's ids come from its tokenizer files, and agree with transformers."""

import json
import shutil

import pytest

from optiml_jax.data import special_tokens
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.models import opt_config


def _file_ids(folder):
  """The ids the tokenizer files give the tokens special_tokens_map.json names, read here independently."""
  names = json.loads((folder / "special_tokens_map.json").read_text(encoding="utf-8"))
  vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
  return {role: vocab[names[f"{role}_token"]] for role in ("bos", "eos", "pad", "unk")}, vocab


def test_opt_ids_are_the_shipped_tokenizer_files():
  opt = special_tokens.OPT
  assert (opt.pad_id, opt.bos_id, opt.eos_id, opt.unk_id) == (1, 2, 2, 3)
  assert (opt.pad, opt.bos, opt.eos, opt.unk) == ("<pad>", "</s>", "</s>", "<unk>")
  ids, vocab = _file_ids(special_tokens.OPT_TOKENIZER_DIR)
  assert (opt.bos_id, opt.eos_id, opt.pad_id) == (ids["bos"], ids["eos"], ids["pad"])
  # The files name </s> as unk_token; the dictionary's own <unk> is kept (see the module docstring).
  assert ids["unk"] == opt.eos_id and opt.unk_id == vocab["<unk>"] != opt.eos_id


def test_opt_ids_agree_with_the_transformers_tokenizer_and_the_shared_copy(opt_tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  assert special_tokens.read(opt_tokenizer_dir) == special_tokens.OPT
  reference = transformers.AutoTokenizer.from_pretrained(str(special_tokens.OPT_TOKENIZER_DIR))
  opt = special_tokens.OPT
  assert (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id) == (opt.bos_id, opt.eos_id,
                                                                                      opt.pad_id)
  assert reference.convert_tokens_to_ids(opt.unk) == opt.unk_id
  assert reference("a")["input_ids"][0] == opt.bos_id  # transformers' OPT tokenizer starts with this BOS


def test_every_user_of_the_ids_agrees():
  opt = special_tokens.OPT
  vocab = vocab_lib.OPTVocabulary()
  assert (vocab.bos_id, vocab.eos_id, vocab.opt_pad_id, vocab.unk_id) == (opt.bos_id, opt.eos_id, opt.pad_id,
                                                                          opt.unk_id)
  hf = opt_config.OPTConfig.preset("tiny").to_hf()
  assert (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (opt.bos_id, opt.eos_id, opt.pad_id)


def test_another_tokenizer_folder_gives_its_own_ids(tmp_path):
  folder = tmp_path / "tok"
  folder.mkdir()
  (folder / "vocab.json").write_text(json.dumps({"<unk>": 0, "<s>": 1, "</s>": 2, "[PAD]": 7, "a": 3}))
  # tokenizer_config.json only (newer Hugging Face folders), tokens as {"content": ...} objects.
  (folder / "tokenizer_config.json").write_text(
      json.dumps({
          "bos_token": {
              "content": "<s>"
          },
          "eos_token": "</s>",
          "pad_token": "[PAD]",
          "unk_token": "<unk>"
      }))
  tokens = special_tokens.read(folder)
  assert (tokens.bos_id, tokens.eos_id, tokens.pad_id, tokens.unk_id) == (1, 2, 7, 0)
  assert tokens.hf_config_ids() == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 7}
  # special_tokens_map.json wins over tokenizer_config.json.
  (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "a"}))
  assert special_tokens.read(folder).eos_id == 3 and special_tokens.read(folder).bos_id == 1


def test_bad_folders_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    special_tokens.read(tmp_path)
  folder = tmp_path / "copy"
  shutil.copytree(special_tokens.OPT_TOKENIZER_DIR, folder)
  (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<nothing>"}))
  with pytest.raises(ValueError, match=r"vocab\.json: special token '<nothing>' \(pad\) is not in the vocabulary"):
    special_tokens.read(folder)
  (folder / "special_tokens_map.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"special_tokens_map\.json: cannot read JSON"):
    special_tokens.read(folder)
