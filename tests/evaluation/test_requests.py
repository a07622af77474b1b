"""Tests of optiml_jax.evaluation.requests: a request's digest, its files, and replaying answers.

The whole two-machine flow (record with seqio, answer without TensorFlow, replay) is tested end to end in
tests/test_answer_cli.py; here, the pieces it relies on.
"""

import json

import numpy as np
import pytest

from optiml_jax.evaluation import inference
from optiml_jax.evaluation import requests


def _rows():
  tokens = [np.array([5, 6, 7, 8], np.int32), np.array([5, 6, 9], np.int32), np.array([3, 4, 4], np.int32)]
  rows = []
  for group, t in zip(("a", "a", "b"), tokens):
    weights = np.zeros(len(t) - 1, np.float32)
    weights[1:] = 1.0
    rows.append(inference.ScoreRow(t[:-1], t[1:], weights, group))
  return rows


def test_a_score_request_gives_back_its_rows_with_groups_numbered_in_order():
  request = requests.score_request(_rows(), length_normalize=True)
  assert request.examples == 3
  back = requests.score_rows_of_request(request)
  for got, want in zip(back, _rows()):
    np.testing.assert_array_equal(got.inputs, want.inputs)
    np.testing.assert_array_equal(got.targets, want.targets)
    np.testing.assert_array_equal(got.weights, want.weights)
  assert [r.group for r in back] == [0, 0, 1]
  prompts = [np.array([1, 2, 3], np.int32), np.array([4], np.int32)]
  request = requests.predict_request(prompts, 8, [2, 0])
  assert [p.tolist() for p in requests.prompts_of_request(request)] == [[1, 2, 3], [4]]


def test_the_digest_covers_kind_settings_and_every_token_but_not_group_labels():
  base = requests.digest(requests.score_request(_rows(), False))
  relabelled = [r._replace(group={"a": 7, "b": 3}[r.group]) for r in _rows()]
  assert requests.digest(requests.score_request(relabelled, False)) == base
  assert requests.digest(requests.score_request(_rows(), True)) != base
  changed = _rows()
  changed[2] = changed[2]._replace(targets=np.array([4, 5], np.int32))
  assert requests.digest(requests.score_request(changed, False)) != base
  regrouped = [r._replace(group="a") for r in _rows()]
  assert requests.digest(requests.score_request(regrouped, False)) != base
  prompts = [np.array([1, 2, 3], np.int32)]
  one = requests.digest(requests.predict_request(prompts, 8, [2]))
  assert one != requests.digest(requests.predict_request(prompts, 9, [2]))
  assert one != requests.digest(requests.predict_request(prompts, 8, [2, 0]))
  assert one == requests.digest(requests.predict_request([np.array([1, 2, 3], np.int64)], 8, [2]))


def test_the_bos_kept_on_truncation_is_a_setting_of_the_request_and_answers_follow_it(tmp_path, random_hf_opt):
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import opt_config  # pylint: disable=g-import-not-at-top
  prompts = [np.array([2] + list(range(10, 40)), np.int32), np.array([2, 7, 8], np.int32)]
  plain = requests.predict_request(prompts, 4, [2])
  with_bos = requests.predict_request(prompts, 4, [2], bos_id=2)
  assert with_bos.settings["bos_id"] == 2 and "bos_id" not in plain.settings
  assert requests.digest(plain) != requests.digest(with_bos)
  assert requests.score_request(_rows(), False, bos_id=2).settings == {"length_normalize": False, "bos_id": 2}
  config = opt_config.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                                max_position_embeddings=24, init_std=0.3)
  random_hf_opt(config).save_pretrained(tmp_path / "hf")
  loaded, params = convert.load_hf(tmp_path / "hf")
  scorer = inference.Scorer(loaded, params, batch_size=2, progress=False)
  answered = requests.answer_request(with_bos, scorer)["tokens"]
  direct = scorer.greedy_decode(prompts, 4, bos_id=2)
  assert inference.fixed_length(direct, 4, 2).tolist() == answered.tolist()
  rows = inference.option_rows([prompts[0]], [[[5, 6, 2]]])
  request = requests.score_request(rows, False, bos_id=2)
  expected = inference.score_rows(scorer.model, scorer.params, rows, max_length=24, bos_id=2)
  assert requests.answer_request(request, scorer)["scores"].tolist() == pytest.approx(expected)
  assert expected != pytest.approx(inference.score_rows(scorer.model, scorer.params, rows, max_length=24))


def test_the_recorder_writes_each_request_once_and_placeholders_keep_seqio_s_shapes(tmp_path):
  recorder = requests.Recorder(tmp_path / "req", max_length=64, eos_ids=[2])
  rows = _rows()
  key = recorder.record(requests.score_request(rows, False))
  assert recorder.record(requests.score_request(rows, False)) == key
  assert list(requests.recorded(tmp_path / "req")) == [key]
  assert requests.recorded(tmp_path / "req")[key] == {
      "kind": "score",
      "examples": 3,
      "settings": {
          "length_normalize": False
      }
  }
  loaded = requests.load_request(tmp_path / "req", key, requests.recorded(tmp_path / "req")[key])
  assert requests.digest(loaded) == key
  features = {"decoder_input_tokens": np.array([2, 5, 6, 0]), "decoder_loss_weights": np.array([0, 1, 1, 0])}
  outputs = recorder.predict_fn(max_new_tokens=3)([(4, features)])
  assert outputs[0][0] == 4 and outputs[0][1].tolist() == [2, 2, 2]
  assert len(requests.recorded(tmp_path / "req")) == 2
  assert requests.Recorder(tmp_path / "req", 64, [2]).index == requests.recorded(tmp_path / "req")


def test_an_edited_request_file_and_a_missing_answer_are_named(tmp_path):
  recorder = requests.Recorder(tmp_path / "req", max_length=64, eos_ids=[2])
  key = recorder.record(requests.score_request(_rows(), False))
  other = requests.score_request(_rows()[:2], False)
  edited = requests.Recorder(tmp_path / "other", 64, [2])
  edited_key = edited.record(other)
  (tmp_path / "other" / f"{edited_key}.npz").replace(tmp_path / "req" / f"{key}.npz")
  with pytest.raises(requests.RequestsError, match="does not match its digest"):
    requests.load_request(tmp_path / "req", key, requests.recorded(tmp_path / "req")[key])
  with pytest.raises(requests.RequestsError, match="not a requests folder"):
    requests.answer(tmp_path / "nothing", None, tmp_path / "ans", {})
  with pytest.raises(requests.RequestsError, match="not an answers folder"):
    requests.Replayer(tmp_path / "nothing", [2])


def test_the_recorder_writes_its_context_and_refuses_a_folder_recorded_for_another(tmp_path):
  recorder = requests.Recorder(tmp_path / "req", max_length=64, eos_ids=[2])
  key = recorder.record(requests.score_request(_rows(), False))
  written = json.loads((tmp_path / "req" / requests.REQUESTS_FILE).read_text())
  assert written["format_version"] == requests.REQUESTS_FORMAT_VERSION and written["max_length"] == 64
  assert requests.recorded_max_length(tmp_path / "req") == 64
  assert list(requests.Recorder(tmp_path / "req", 64, [2]).index) == [key]  # the same context: extended
  with pytest.raises(requests.RequestsError, match="recorded for a context of 64 tokens, this run's is 32"):
    requests.Recorder(tmp_path / "req", 32, [2])


def test_requests_recorded_before_the_context_was_written_down_are_still_read(tmp_path):
  key = requests.Recorder(tmp_path / "req", 64, [2]).record(requests.score_request(_rows(), False))
  path = tmp_path / "req" / requests.REQUESTS_FILE
  old = json.loads(path.read_text())
  del old["max_length"]
  path.write_text(json.dumps(dict(old, format_version=1)))  # format 1: no context
  assert list(requests.recorded(tmp_path / "req")) == [key] and requests.recorded_max_length(tmp_path / "req") is None
  recorder = requests.Recorder(tmp_path / "req", 32, [2])  # extending it writes this run's context down
  recorder.record(requests.predict_request([np.array([1, 2, 3], np.int32)], 4, [2]))
  assert requests.recorded_max_length(tmp_path / "req") == 32 and len(requests.recorded(tmp_path / "req")) == 2


def test_answers_are_made_with_the_recorded_context_and_replayed_only_at_it(tmp_path, random_hf_opt):
  """Requests recorded at evaluate.max_length=16 were answered with the model's whole context, and the replay then
  reported those answers for an evaluation at 16."""
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import opt_config  # pylint: disable=g-import-not-at-top
  config = opt_config.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
                                max_position_embeddings=24, init_std=0.3)
  random_hf_opt(config).save_pretrained(tmp_path / "hf")
  loaded, params = convert.load_hf(tmp_path / "hf")
  recorder = requests.Recorder(tmp_path / "req", max_length=16, eos_ids=[2])
  recorder.record(requests.predict_request([np.arange(3, 23, dtype=np.int32)], 4, [2]))  # 20 tokens: cut to fit 16
  model = {"checkpoint": str(tmp_path / "hf"), "step": None, "format": "hf", "config": {}}
  quiet = lambda line: None  # pylint: disable=unnecessary-lambda-assignment
  whole = inference.Scorer(loaded, params, batch_size=2, progress=False)  # the model's context, 24
  with pytest.raises(requests.RequestsError, match="recorded for a context of 16 tokens, the scorer's is 24"):
    requests.answer(tmp_path / "req", whole, tmp_path / "ans", model, log=quiet)
  assert not (tmp_path / "ans" / requests.ANSWERS_FILE).exists()
  scorer = inference.Scorer(loaded, params, batch_size=2, max_length=16, progress=False)
  state = requests.answer(tmp_path / "req", scorer, tmp_path / "ans", model, log=quiet)
  assert state["settings"]["max_length"] == 16 and scorer.stats.truncated == 1

  replayer = requests.Replayer(tmp_path / "ans", [2])
  requests.check_replay_context(replayer, 16, "evaluate.max_length")
  with pytest.raises(
      requests.RequestsError, match=r"evaluate.max_length: unset, the model's whole context of 24 "
      r"tokens, but the answers in .* were made with a context of 16 tokens: set "
      r"evaluate.max_length=16"):
    requests.check_replay_context(replayer, 24, "evaluate.max_length", unset=True)
  # A resumed run with another setting would list the earlier answers under settings they were not made with.
  unshared = inference.Scorer(loaded, params, batch_size=2, max_length=16, progress=False, share_prompts=False)
  with pytest.raises(requests.RequestsError, match=r"answers made with other settings: share_prompts True \(this "
                     r"run: False\)"):
    requests.answer(tmp_path / "req", unshared, tmp_path / "ans", model, log=quiet)


def test_a_predict_request_the_context_cannot_hold_is_named(tmp_path):
  recorder = requests.Recorder(tmp_path / "req", max_length=64, eos_ids=[2])
  key = recorder.record(requests.predict_request([np.array([1, 2, 3], np.int32)], 8, [2]))
  requests.check_requests_fit(tmp_path / "req", 9, "--max_length")
  with pytest.raises(
      requests.RequestsError, match=f"--max_length 8: the predict request {key} in .* decodes 8 new "
      r"token\(s\), which needs a context of at least 9 tokens"):
    requests.check_requests_fit(tmp_path / "req", 8, "--max_length")
