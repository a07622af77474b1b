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


# --- tokenizer.json folders (transformers 5's format for Llama-family tokenizers) ----------------------------


def test_a_smollm2_style_folder_names_its_roles_and_adds_no_bos(tiny_tokenizer):
  tokens = special_tokens.read(tiny_tokenizer("smollm2"))
  assert (tokens.bos, tokens.eos, tokens.unk, tokens.pad) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>", None)
  assert (tokens.bos_id, tokens.eos_id, tokens.unk_id, tokens.pad_id) == (1, 2, 0, None)
  assert not tokens.add_bos and tokens.added_bos_id is None and tokens.prefix_ids == ()
  assert tokens.hf_config_ids() == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}


def test_a_llama3_style_folder_adds_the_bos_its_post_processor_adds(tiny_tokenizer):
  folder = tiny_tokenizer("llama3")
  data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
  ids = {t["content"]: t["id"] for t in data["added_tokens"]}
  tokens = special_tokens.read(folder)
  assert tokens.add_bos and tokens.bos_id == ids["<|begin_of_text|>"] == tokens.added_bos_id
  assert tokens.prefix_ids == (ids["<|begin_of_text|>"],)
  assert tokens.eos_id == ids["<|end_of_text|>"] and tokens.unk is None and tokens.pad is None
  assert data["model"]["vocab"]["!"] == 0  # id 0 is an ordinary token here


@pytest.mark.parametrize("style", ["smollm2", "llama3", "llama2"])
def test_add_bos_token_beside_a_tokenizer_json_is_ignored_as_transformers_5_does(tiny_tokenizer, style):
  policy = special_tokens.read(tiny_tokenizer(style)).add_bos
  assert special_tokens.read(tiny_tokenizer(style, add_bos_token=not policy)).add_bos == policy
  transformers = pytest.importorskip("transformers")
  for add_bos_token in (None, True, False):
    folder = tiny_tokenizer(style, add_bos_token=add_bos_token)
    tokens = special_tokens.read(folder)
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    first = reference("cat")["input_ids"][0]
    assert (first == tokens.bos_id) == tokens.add_bos, (style, add_bos_token)


def test_add_bos_token_of_a_vocab_json_folder(tmp_path):
  folder = tmp_path / "copy"
  shutil.copytree(special_tokens.OPT_TOKENIZER_DIR, folder)
  config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
  for value, expected in ((False, False), (True, True), (None, True)):  # absent: OPT's convention, a BOS
    names = dict(config)
    names.pop("add_bos_token")
    if value is not None:
      names["add_bos_token"] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(names))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "</s>"}))
    tokens = special_tokens.read(folder)
    assert tokens.add_bos is expected and tokens.bos_id == 2
    assert tokens.added_bos_id == (2 if expected else None)
  (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": "yes"}))
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: add_bos_token must be true or false"):
    special_tokens.read(folder)


def test_post_processor_forms(tmp_path):
  vocab = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": 2, "content": "<s>"}]}
  forms = {
      "roberta": ({
          "type": "RobertaProcessing",
          "cls": ["<s>", 2],
          "sep": ["<s>", 2]
      }, 2),
      "bert": ({
          "type": "BertProcessing",
          "cls": ["<s>", 2],
          "sep": ["<s>", 2]
      }, 2),
      "template without ids": ({
          "type": "TemplateProcessing",
          "single": [{
              "SpecialToken": {
                  "id": "<s>"
              }
          }]
      }, 2),
      "bytelevel only": ({
          "type": "ByteLevel"
      }, None),
      "none": (None, None),
  }
  for name, (processor, bos) in forms.items():
    folder = tmp_path / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({**vocab, "post_processor": processor}))
    tokens = special_tokens.read(folder)
    assert tokens.added_bos_id == bos, name
    assert tokens.eos_id is None and tokens.unk_id is None  # nothing named, no OPT defaults for tokenizer.json


def test_unigram_vocabularies_and_bad_tokenizer_json_are_named(tmp_path):
  (tmp_path / "tokenizer.json").write_text(
      json.dumps({
          "model": {
              "type": "Unigram",
              "vocab": [["<unk>", 0.0], ["</s>", 0.0], ["▁a", -1.0]]
          },
          "added_tokens": []
      }))
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))
  with pytest.raises(ValueError, match=r"tokenizer\.json: special token '<pad>' \(pad\) is not in the vocabulary"):
    special_tokens.read(tmp_path)
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": None}))
  tokens = special_tokens.read(tmp_path)
  assert (tokens.eos_id, tokens.unk_id, tokens.pad_id, tokens.bos_id) == (1, 0, None, None)
  (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}))
  with pytest.raises(ValueError, match=r"tokenizer\.json: expected a tokenizer with a 'model\.vocab'"):
    special_tokens.read(tmp_path)
