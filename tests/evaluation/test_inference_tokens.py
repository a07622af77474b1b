"""Tests of the evaluation's token conventions for any tokenizer: prompts without a BOS (SmolLM2, Qwen2), id 0 as
a real token, several EOS ids ending a greedy decoding; checked against transformers on the same random weights,
through the seqio adapters (`feature_converter(vocabulary)`, `make_score_fn`, `make_predict_fn`) and `Scorer`."""

from __future__ import annotations

import numpy as np
import pytest

from optiml_jax import convert
from optiml_jax.data import packing
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.evaluation import inference
from optiml_jax.models import opt_config
from optiml_jax.models import registry

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tf = pytest.importorskip("tensorflow")

OPT_SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                 max_position_embeddings=40, init_std=0.3)
EOS = 5  # a target's EOS in the rows built here (not OPT's 2: nothing may assume it)


@pytest.fixture(scope="module")
def opt_pair(tmp_path_factory, random_hf_opt):
  """A random transformers OPT and (module, params) read back with convert.load_hf."""
  config = opt_config.OPTConfig(**OPT_SMALL)
  hf_model = random_hf_opt(config, seed=3)
  path = tmp_path_factory.mktemp("hf_opt")
  hf_model.save_pretrained(path)
  loaded, params = convert.load_hf(path)
  model = registry.make_model(loaded)
  return hf_model, model, inference.place_params(model, params)


def _hf_log_likelihood(hf_model, tokens, num_scored):
  ids = torch.tensor([list(tokens)[:-1]])
  with torch.no_grad():
    log_probs = torch.log_softmax(hf_model(ids).logits[0].double(), dim=-1)
  return float(sum(log_probs[t - 1, tokens[t]] for t in range(len(tokens) - num_scored, len(tokens))))


def _hf_greedy(hf_model, prompt, max_new_tokens, eos_ids):
  ids = torch.tensor([list(prompt)])
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                            eos_token_id=list(eos_ids), pad_token_id=eos_ids[0])
  new = out[0, len(prompt):].tolist()
  stops = [i for i, t in enumerate(new) if t in eos_ids]
  return new[:stops[0]] if stops else new


def _rank_rows(vocab_size, seed=0):
  """Rank-classification examples (inputs, one target per option ending with EOS) whose tokens include 0."""
  rng = np.random.default_rng(seed)
  rows = []
  for prompt_length, option_lengths in ((1, (2, 3)), (6, (1, 2, 4)), (9, (3,)), (4, (2, 2))):
    inputs = rng.integers(0, vocab_size, size=prompt_length).astype(np.int32)
    inputs[rng.integers(prompt_length)] = 0
    for k in option_lengths:
      body = rng.integers(0, vocab_size, size=k - 1)
      rows.append((inputs, np.append(np.where(body == EOS, 0, body), EOS).astype(np.int32)))
  return rows


def _converted(rows, bos_id, eos_id=EOS, inputs_length=16):
  """The rows through the evaluation's feature converter, unpacked, enumerated as seqio hands them over."""
  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  ds = tf.data.Dataset.from_generator(lambda: ({"inputs": i, "targets": t} for i, t in rows), output_signature=spec)
  converter = packing.OptimlFeatureConverter(pack=False, bos_id=bos_id, eos_id=eos_id)
  return list(enumerate(converter(ds, {"inputs": inputs_length, "targets": 8}).as_numpy_iterator()))


@pytest.mark.parametrize("bos_id", [None, 2])
def test_seqio_scores_read_the_prompt_each_tokenizer_feeds(opt_pair, bos_id):
  hf_model, model, params = opt_pair
  rows = _rank_rows(OPT_SMALL["vocab_size"])
  features = _converted(rows, bos_id)
  prefix = [] if bos_id is None else [bos_id]
  for index, feature in features:  # the prompt is [BOS] + inputs, or the inputs alone
    inputs = rows[index][0]
    assert inference.prompt_length(index, feature) == len(prefix) + len(inputs)
    row = inference.row_from_features(index, feature, group=0)
    assert len(row.inputs) == len(prefix) + len(inputs) + len(rows[index][1]) - 1
  stats = inference.InferenceStats()
  scores = dict(inference.make_score_fn(model, params, batch_size=4, stats=stats, progress=False)(features))
  for index, (inputs, target) in enumerate(rows):
    expected = _hf_log_likelihood(hf_model, prefix + inputs.tolist() + target.tolist(), len(target))
    assert scores[index] == pytest.approx(expected, rel=1e-5, abs=1e-4)
  assert stats.examples == 4  # rows of one example share their prompt, 0s included
  direct = inference.score_options(model, params, [prefix + rows[0][0].tolist()], [[rows[0][1], rows[1][1]]])
  np.testing.assert_allclose(direct[0], [scores[0], scores[1]], rtol=1e-6)


def test_two_examples_with_the_same_prompt_next_to_each_other_count_as_two(opt_pair):
  # BIG-bench's winowhy, causal_judgment, ... list some inputs twice in a row: at 0-shot their prompts are the same,
  # and their option rows were one group (one example, one cut prompt) in the report's counts.
  _, model, params = opt_pair
  prompt = np.arange(3, 15, dtype=np.int32)
  options = [np.asarray([20, 21, EOS], np.int32), np.asarray([22, EOS], np.int32)]
  rows = [(prompt, o) for o in options] * 2 + [(prompt[:4], options[0])]
  features = _converted(rows, bos_id=2)
  indices, score_rows = inference.score_rows_of(features)
  assert indices == [0, 1, 2, 3, 4] and [r.group for r in score_rows] == [0, 0, 1, 1, 2]
  stats = inference.InferenceStats()
  scores = dict(
      inference.make_score_fn(model, params, batch_size=4, max_length=10, stats=stats, progress=False)(features))
  assert (stats.examples, stats.truncated) == (3, 2)  # the two long prompts are cut, each once
  assert scores[0] == pytest.approx(scores[2], rel=1e-6) and scores[1] == pytest.approx(scores[3], rel=1e-6)


def test_an_eos_of_id_0_ends_a_row_and_padding_is_not_read_from_tokens(opt_pair):
  _, model, params = opt_pair
  rows = [(np.asarray([7, 0, 9], np.int32), np.asarray([0, 3, 0], np.int32)),
          (np.asarray([0], np.int32), np.asarray([0], np.int32))]
  features = _converted(rows, bos_id=None, eos_id=0)  # SmolLM2 base's EOS <|endoftext|> is id 0
  lengths = [len(inference.row_from_features(i, f, group=i).inputs) for i, f in features]
  assert lengths == [5, 1]
  scores = dict(inference.make_score_fn(model, params, progress=False)(features))
  expected = inference.score_options(model, params, [[7, 0, 9], [0]], [[[0, 3, 0]], [[0]]])
  np.testing.assert_allclose([scores[0], scores[1]], [expected[0][0], expected[1][0]], rtol=1e-6)


def test_several_eos_ids_end_a_decoding_as_transformers_does(opt_pair):
  hf_model, model, params = opt_pair
  rng = np.random.default_rng(7)
  prompts = [rng.integers(0, OPT_SMALL["vocab_size"], size=n).tolist() for n in (1, 4, 9, 3)]
  free = inference.greedy_decode(model, params, prompts, max_new_tokens=8, eos_id=-1)
  assert all(len(tokens) == 8 for tokens in free)
  # Two ids that examples emit mid-way, the second one earlier in some example than the first.
  first = free[0][3]
  second = next(t for tokens in free[1:] for t in tokens[1:4] if t != first)
  eos_ids = (first, second)
  stats = inference.InferenceStats()
  stopped = inference.greedy_decode(model, params, prompts, max_new_tokens=8, eos_id=eos_ids, batch_size=2, stats=stats)
  for prompt, tokens, full in zip(prompts, stopped, free):
    assert tokens == _hf_greedy(hf_model, prompt, 8, eos_ids)
    assert not set(tokens) & set(eos_ids) and full[:len(tokens)] == tokens
  assert len(stopped[0]) <= 3 and any(len(t) < 4 for t in stopped[1:])
  assert stats.generated_tokens == sum(map(len, stopped))
  with pytest.raises(ValueError, match="at least one EOS id"):
    inference.greedy_decode(model, params, prompts, max_new_tokens=3, eos_id=())


def test_predictions_stop_at_any_eos_and_pad_with_the_first(opt_pair, tiny_tokenizer):
  hf_model, model, params = opt_pair
  rows = [(np.asarray(p, np.int32), np.asarray([1, EOS], np.int32)) for p in ([4, 0, 8], [0], [9, 9, 1, 0, 3])]
  features = _converted(rows, bos_id=None)
  free = inference.greedy_decode(model, params, [r[0] for r in rows], max_new_tokens=6, eos_id=-1)
  eos_ids = (EOS, free[2][2])
  predictions = dict(
      inference.make_predict_fn(model, params, max_new_tokens=6, eos_id=eos_ids, progress=False)(features))
  for index, (inputs, _) in enumerate(rows):  # prompt = the inputs alone: no BOS
    new = _hf_greedy(hf_model, inputs.tolist(), 6, eos_ids)
    assert predictions[index].tolist() == new + [EOS] * (6 - len(new))
  assert len(_hf_greedy(hf_model, rows[2][0].tolist(), 6, eos_ids)) == 2
  # The padding is the vocabulary's EOS, which its decode stops at.
  vocabulary = vocab_lib.HFVocabulary(tiny_tokenizer("smollm2"))
  assert vocabulary.decode(np.asarray([40, 41, vocabulary.eos_id, 7, vocabulary.eos_id])) == vocabulary.decode([40, 41])


def test_scorer_ends_decodings_at_its_config_eos_ids_unless_told(opt_pair):
  _, model, params = opt_pair
  scorer = inference.Scorer(model.config, params, batch_size=4, progress=False)
  assert scorer.eos_ids == model.config.eos_ids == (2,)
  prompts = [[3, 0, 7], [0]]
  assert scorer.greedy_decode(prompts, 5) == inference.greedy_decode(model, params, prompts, 5, eos_id=2)
  free = inference.greedy_decode(model, params, prompts, 5, eos_id=-1)
  stop = next(t for t in free[0][1:] if t != free[0][0])

  def before(tokens, ends):
    return tokens[:min([tokens.index(e) for e in ends if e in tokens] + [len(tokens)])]

  told = inference.Scorer(model.config, params, progress=False, eos_ids=[stop, 2])
  assert told.eos_ids == (stop, 2) and told.greedy_decode(prompts, 5) == [before(t, (stop, 2)) for t in free]
  assert len(told.greedy_decode(prompts, 5)[0]) < 5
  assert scorer.greedy_decode(prompts, 5, eos_id=stop) == [before(t, (stop,)) for t in free]


def test_feature_converter_follows_the_vocabulary(tiny_tokenizer):
  opt = inference.feature_converter()
  assert (opt.bos_id, opt.eos_id, opt.pack) == (2, 2, False)
  smollm2 = inference.feature_converter(vocab_lib.HFVocabulary(tiny_tokenizer("smollm2")))
  assert (smollm2.bos_id, smollm2.eos_id, smollm2.pack) == (None, 2, False)
  llama3 = vocab_lib.HFVocabulary(tiny_tokenizer("llama3"))
  converter = inference.feature_converter(llama3)
  assert (converter.bos_id, converter.eos_id) == (llama3.bos_id, llama3.eos_id) and llama3.bos_id is not None


# --- A Llama-family model through the registry (GQA, untied head), no BOS, id 0 in prompts ---------------------

LLAMA_SMALL = dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=48, rms_norm_eps=1e-6, rope_theta=10000.0,
                   tie_word_embeddings=False, bos_token_id=1, eos_token_id=[2, 7])


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
  """A random transformers LlamaForCausalLM (norm scales random too) and what convert.load_hf reads back."""
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(**LLAMA_SMALL)
  hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
  hf_model = transformers.LlamaForCausalLM(hf_config).eval()
  with torch.no_grad():
    for name, param in hf_model.named_parameters():
      if "norm" in name:
        param.normal_(1.0, 0.1)
  path = tmp_path_factory.mktemp("hf_llama")
  hf_model.save_pretrained(path)
  config, params = convert.load_hf(path)
  assert config.family == "llama" and config.eos_ids == (2, 7)
  model = registry.make_model(config)
  return hf_model, model, inference.place_params(model, params)


def test_llama_scores_without_a_bos_equal_transformers(llama_pair):
  hf_model, model, params = llama_pair
  rng = np.random.default_rng(11)
  prompts = [rng.integers(0, 80, size=n).tolist() for n in (1, 5, 12, 7)]
  prompts[1][2] = prompts[2][0] = 0  # id 0 is data, also first
  options = [[rng.integers(0, 80, size=k).tolist() + [7] for k in ks] for ks in ((0, 2), (1, 3, 0), (4,), (2, 2))]
  shared = inference.score_options(model, params, prompts, options, batch_size=4)
  rows = inference.score_options(model, params, prompts, options, batch_size=4, share_prompts=False)
  for i, prompt in enumerate(prompts):
    for j, option in enumerate(options[i]):
      expected = _hf_log_likelihood(hf_model, prompt + option, len(option))
      assert shared[i][j] == pytest.approx(expected, rel=1e-5, abs=1e-4)
      assert rows[i][j] == pytest.approx(expected, rel=1e-5, abs=1e-4)
  rows_ = [(np.asarray(p, np.int32), np.asarray(o, np.int32)) for p, opts in zip(prompts, options) for o in opts]
  features = _converted(rows_, bos_id=None, eos_id=7)
  scores = dict(inference.make_score_fn(model, params, batch_size=4, progress=False)(features))
  np.testing.assert_allclose([scores[k] for k in range(len(rows_))], [s for row in shared for s in row], rtol=1e-5)


def test_llama_greedy_decoding_stops_at_its_eos_ids_as_transformers_does(llama_pair):
  hf_model, model, params = llama_pair
  rng = np.random.default_rng(12)
  prompts = [rng.integers(0, 80, size=n).tolist() for n in (2, 6, 3)]
  prompts[0][0] = 0
  scorer = inference.Scorer(model.config, params, batch_size=2, progress=False)
  assert scorer.eos_ids == (2, 7)
  free = inference.greedy_decode(model, params, prompts, max_new_tokens=10, eos_id=-1)
  stop = next(t for t in free[1][1:] if t != free[1][0])
  eos_ids = (stop, *model.config.eos_ids)
  decoded = scorer.greedy_decode(prompts, 10, eos_id=eos_ids)
  for prompt, tokens in zip(prompts, decoded):
    assert tokens == _hf_greedy(hf_model, prompt, 10, eos_ids)
  assert len(decoded[1]) < 10
  for prompt, tokens in zip(prompts, scorer.greedy_decode(prompts, 10)):
    assert tokens == _hf_greedy(hf_model, prompt, 10, (2, 7))


# --- The real SmolLM2-135M-Instruct (slow): its tokenizer adds no BOS, <|im_end|> ends a target --------------

REAL_EXAMPLES = [("Question: What is the capital of France?\nAnswer:", ["Paris", "London", "Berlin"]),
                 ("Review: I loved this movie, it was wonderful.\nIs the review positive or negative?\nAnswer:",
                  ["positive", "negative"]), ("Translate to French: cat\nOutput:", ["chat", "chien"]),
                 ("2 + 2 =", ["4", "5"])]


@pytest.mark.slow
def test_real_smollm2_scores_and_decodes_like_transformers(smollm2_hf_dir):
  from optiml_jax.data import formatting  # pylint: disable=g-import-not-at-top
  config, params = convert.load_hf(smollm2_hf_dir)
  vocabulary = vocab_lib.HFVocabulary(smollm2_hf_dir)
  vocab_lib.check_vocab_covers(config.vocab_size, vocabulary, f"{smollm2_hf_dir}/config.json")
  assert vocabulary.prefix_ids == () and vocabulary.eos_id == 2 and config.family == "llama"
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()
  reference = transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir))
  rows = []
  for source, options in REAL_EXAMPLES:
    for option in options:
      inputs, targets = formatting.tokenize_example(vocabulary, source, option)
      assert inputs.tolist() + targets.tolist() == reference(source + " " + option)["input_ids"] + [2]
      rows.append((inputs, targets))
  scorer = inference.Scorer(config, params, batch_size=4, progress=False, eos_ids=(vocabulary.eos_id, *config.eos_ids))
  features = _converted(rows, bos_id=vocabulary.bos_id, eos_id=vocabulary.eos_id, inputs_length=64)
  scores = dict(scorer.score_fn()(features))
  for index, (inputs, targets) in enumerate(rows):
    expected = _hf_log_likelihood(hf_model, inputs.tolist() + targets.tolist(), len(targets))
    assert scores[index] == pytest.approx(expected, abs=2e-3), index
  assert scorer.stats.examples == len(REAL_EXAMPLES)
  prompts = [formatting.tokenize_example(vocabulary, source, "")[0].tolist() for source, _ in REAL_EXAMPLES]
  decoded = scorer.greedy_decode(prompts, 16)
  for prompt, tokens in zip(prompts, decoded):
    assert tokens == _hf_greedy(hf_model, prompt, 16, scorer.eos_ids)
  assert any(len(tokens) > 3 for tokens in decoded)
