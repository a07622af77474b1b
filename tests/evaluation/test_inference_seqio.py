"""Tests of inference.make_score_fn / make_predict_fn through a real `seqio.Evaluator`: the scores and
predictions seqio hands to a Task's metric functions equal transformers' PyTorch OPT on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from optiml_jax import convert
from optiml_jax.evaluation import inference
from optiml_jax.models import opt
from optiml_jax.models import opt_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
seqio = pytest.importorskip("seqio")
tf = pytest.importorskip("tensorflow")

SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
             max_position_embeddings=40, init_std=0.3)
TASK = "test_inference_seqio:rank_and_generate"
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def hf_and_flax(tmp_path_factory, random_hf_opt):
  """A random transformers OPT saved with save_pretrained and read back with convert.load_hf."""
  config = opt_config.OPTConfig(**SMALL)
  hf_model = random_hf_opt(config, seed=1)
  path = tmp_path_factory.mktemp("hf_opt")
  hf_model.save_pretrained(path)
  loaded_config, params = convert.load_hf(path)
  return hf_model, opt.OPT(loaded_config), params


def _examples():
  """Rank-classification rows (one per option; rows of one example share `inputs`), one over-long."""
  rng = np.random.default_rng(0)

  def tokens(n):
    return rng.integers(3, SMALL["vocab_size"], size=n).astype(np.int32)

  rows = []
  for prompt_length, option_lengths in ((5, (1, 3, 2)), (11, (2, 2)), (44, (1, 2)), (7, (4,))):
    inputs = tokens(prompt_length)
    rows += [{"inputs": inputs, "targets": np.append(tokens(k - 1), 2).astype(np.int32)} for k in option_lengths]
  return rows


@pytest.fixture(scope="module")
def registered_task():
  vocabulary = seqio.PassThroughVocabulary(size=SMALL["vocab_size"], eos_id=2)
  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_generator(_examples, output_signature=spec)

  def mean_score(targets, scores):
    del targets
    return {"mean_score": float(np.mean(scores))}

  def count(targets, predictions):
    del targets
    return {"count": len(predictions)}

  features = {name: seqio.Feature(vocabulary, add_eos=False) for name in ("inputs", "targets")}
  seqio.TaskRegistry.add(TASK, source=seqio.FunctionDataSource(dataset_fn, splits=["validation"]),
                         output_features=features, preprocessors=[], metric_fns=[mean_score, count])
  yield TASK
  seqio.TaskRegistry.remove(TASK)


def _hf_log_likelihood(hf_model, tokens, num_scored):
  ids = torch.tensor([list(tokens)[:-1]])
  with torch.no_grad():
    log_probs = torch.log_softmax(hf_model(ids).logits[0].double(), dim=-1)
  return float(sum(log_probs[t - 1, tokens[t]] for t in range(len(tokens) - num_scored, len(tokens))))


def _hf_greedy(hf_model, prompt, max_new_tokens):
  ids = torch.tensor([list(prompt)])
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                            eos_token_id=2, pad_token_id=1)
  new = out[0, len(prompt):].tolist()
  return new[:new.index(2)] if 2 in new else new


def test_seqio_evaluator_scores_and_predictions_equal_transformers(hf_and_flax, registered_task):
  hf_model, model, params = hf_and_flax
  evaluator = seqio.Evaluator(registered_task, feature_converter=inference.feature_converter(), eval_split="validation",
                              sequence_length={})
  score_stats, predict_stats = inference.InferenceStats(), inference.InferenceStats()
  score_fn = inference.make_score_fn(model, params, batch_size=4, stats=score_stats, progress=False)
  predict_fn = inference.make_predict_fn(model, params, max_new_tokens=MAX_NEW_TOKENS, batch_size=4,
                                         stats=predict_stats, progress=False)
  metrics, outputs = evaluator.evaluate(compute_metrics=True, score_fn=score_fn, predict_fn=predict_fn)
  scores = outputs[registered_task][seqio.metrics.ModelOutputType.SCORE]
  predictions = outputs[registered_task][seqio.metrics.ModelOutputType.PREDICTION]

  context = SMALL["max_position_embeddings"]
  examples = _examples()
  assert len(scores) == len(predictions) == len(examples)
  for example, score, prediction in zip(examples, scores, predictions):
    prompt = [2] + example["inputs"].tolist()
    # The options of one prompt read it once, cut (when too long) to what the longest option leaves room for.
    longest = max(len(e["targets"]) for e in examples if np.array_equal(e["inputs"], example["inputs"]))
    expected = _hf_log_likelihood(hf_model, prompt[-(context - longest + 1):] + example["targets"].tolist(),
                                  len(example["targets"]))
    assert score == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert len(prediction) == MAX_NEW_TOKENS  # fixed length, </s>-padded, as t5x returns decodes
    generated = list(prediction)[:list(prediction).index(2)] if 2 in list(prediction) else list(prediction)
    assert generated == _hf_greedy(hf_model, prompt[-(context - MAX_NEW_TOKENS):], MAX_NEW_TOKENS)
  assert metrics.result()[registered_task]["mean_score"] == pytest.approx(np.mean(scores), rel=1e-6)
  # Consecutive rows with one prompt are one example when scoring; the 44-token prompt does not fit: its
  # 2 rows count once when scoring (one example), twice when decoding (every row is an example there).
  assert (score_stats.examples, score_stats.truncated, score_stats.rows) == (4, 1, 8)
  assert (predict_stats.examples, predict_stats.truncated) == (8, 2)


def test_prompt_length_reads_both_seqio_conventions():
  ours = {
      "decoder_input_tokens": np.array([2, 7, 8, 3, 0]),
      "decoder_target_tokens": np.array([7, 8, 3, 2, 0]),
      "decoder_loss_weights": np.array([0, 0, 1, 1, 0])
  }
  assert inference.prompt_length(0, ours) == 3
  row = inference.row_from_features(0, ours, group=0)
  assert row.inputs.tolist() == [2, 7, 8, 3] and row.weights.tolist() == [0, 0, 1, 1]
  prefix_lm = {
      "decoder_input_tokens": np.array([0, 9, 4, 6, 1, 3, 9, 1, 0]),
      "decoder_target_tokens": np.array([9, 4, 6, 1, 3, 9, 1, 0, 0]),
      "decoder_loss_weights": np.array([0, 0, 0, 0, 1, 1, 1, 0, 0]),
      "decoder_causal_attention": np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
  }
  assert inference.prompt_length(0, prefix_lm) == 5
  with pytest.raises(ValueError, match="example 7: decoder_loss_weights are all 0"):
    inference.prompt_length(7, dict(ours, decoder_loss_weights=np.zeros(5, np.int32)))
  with pytest.raises(ValueError, match="example 3: decoder_target_tokens are all padding"):
    inference.row_from_features(3, {k: np.zeros(5, np.int32) for k in ours}, group=0)


def test_predictions_of_different_lengths_stack_for_seqio_metrics(monkeypatch):
  # seqio turns the predictions into one numpy array before its metrics; ragged lists fail there.
  monkeypatch.setattr(inference, "greedy_decode", lambda *args, **kwargs: [[5], [6, 7, 8], []])
  monkeypatch.setattr(inference, "place_params", lambda model, params, mesh=None: params)
  features = {
      "decoder_input_tokens": np.array([2, 9, 9]),
      "decoder_target_tokens": np.array([9, 9, 4]),
      "decoder_loss_weights": np.array([0, 1, 1])
  }
  predict_fn = inference.make_predict_fn(None, {}, max_new_tokens=4, progress=False)
  outputs = predict_fn(list(enumerate([features] * 3)))
  stacked = np.array([prediction for _, prediction in outputs])
  assert stacked.shape == (3, 4)
  np.testing.assert_array_equal(stacked, [[5, 2, 2, 2], [6, 7, 8, 2], [2, 2, 2, 2]])
