"""Tests for optiml_jax.data.leakage: the 13-gram audit between training and evaluation tasks."""

import numpy as np
import pytest

from optiml_jax.data import leakage


def _text(start, length, prefix="w"):
  return " ".join(f"{prefix}{i}" for i in range(start, start + length))


def test_ngrams_stay_inside_each_text():
  hashes, owner = leakage.ngram_hashes([_text(0, 15), "too short", _text(100, 13)], n=13)
  assert owner.tolist() == [0, 0, 0, 2]
  # Two adjacent 13-word texts give one gram each, never one spanning both ("w1 ... w13").
  pair, pair_owner = leakage.ngram_hashes([_text(0, 13), _text(13, 13)], n=13)
  spanning, _ = leakage.ngram_hashes([_text(1, 13)], n=13)
  assert pair_owner.tolist() == [0, 1]
  assert not np.isin(spanning, pair).any()
  assert np.isin(spanning, hashes).all()  # the same words inside text 0 do hash the same


def test_same_words_same_hash_case_and_punctuation_insensitive():
  a, _ = leakage.ngram_hashes(["The quick brown fox jumps over the lazy dog, again and again today."], n=5)
  b, _ = leakage.ngram_hashes(["the QUICK brown fox jumps over the lazy dog again and again today"], n=5)
  assert np.array_equal(a, b)


def test_overlap_is_fraction_of_eval_instances_hit():
  eval_texts = {"e": [_text(0, 20), _text(1000, 20), _text(2000, 20), "short one"]}
  train = [("t", ["noise " + _text(5, 13) + " noise", _text(2003, 14)])]
  (found,) = leakage.audit(eval_texts, train, threshold=0.0)
  assert (found.train_task, found.eval_task, found.hit_instances, found.eval_instances) == ("t", "e", 2, 4)
  assert found.fraction == pytest.approx(0.5)


def test_threshold_is_strict_and_no_hit_means_no_report():
  eval_texts = {"e": [_text(i * 100, 13) for i in range(100)]}
  one_hit = [("t", [_text(0, 13)])]
  assert leakage.audit(eval_texts, one_hit, threshold=0.01) == []  # exactly 1%: not over
  assert len(leakage.audit(eval_texts, one_hit, threshold=0.009)) == 1
  assert leakage.audit(eval_texts, [("t", [_text(50_000, 30)])], threshold=0.0) == []


def test_template_grams_of_the_eval_task_are_ignored():
  prompt = "please read the following passage carefully and answer the question that comes after it"
  eval_texts = {"e": [f"{prompt} {_text(i * 50, 3)}" for i in range(10)]}
  train = [("t", [f"{prompt} something else entirely"])]
  assert leakage.audit(eval_texts, train, threshold=0.0) == []
  kept = leakage.audit(eval_texts, train, threshold=0.0, template_fraction=1.0)
  assert kept and kept[0].hit_instances == 10


def test_train_stream_is_chunked_and_counts_distinct_instances(monkeypatch):
  monkeypatch.setattr(leakage, "CHUNK", 3)
  eval_texts = {"e": [_text(0, 13), _text(500, 13)], "f": [_text(900, 13)]}
  train = [("t", [_text(0, 13)] * 5 + ["x"] * 4 + [_text(500, 13), _text(900, 13)])]
  found = {o.eval_task: o for o in leakage.audit(eval_texts, train, threshold=0.0)}
  assert found["e"].hit_instances == 2 and found["f"].fraction == 1.0


@pytest.mark.parametrize("policy, expected", [
    ("drop_train", ({"t1", "t2"}, set())),
    ("drop_eval", (set(), {"e1"})),
    ("report", (set(), set())),
])
def test_resolve_policies(policy, expected):
  found = [leakage.Overlap("t1", "e1", 5, 100, 0.05), leakage.Overlap("t2", "e1", 2, 100, 0.02)]
  assert leakage.resolve(found, policy) == expected


def test_unknown_policy():
  with pytest.raises(ValueError, match="unknown leakage policy 'drop_both'"):
    leakage.resolve([], "drop_both")


def test_texts_hit_finds_lines_holding_another_tasks_instance_and_ignores_shared_text():
  # Index: the held-out instances of two templates of one dataset. A line of template "a" that renders
  # template "b"'s held-out example is a hit; its own held-out instances, text shared by two instances (a
  # passage several questions ask about, the template) and short texts are not.
  passage = _text(5000, 20, "p")
  held = {
      "a": [f"question one {passage} {_text(0, 15)}", f"question two {passage} {_text(100, 15)}"],
      "b": [f"is it true {_text(200, 15)}", f"is it true {_text(300, 15)}", f"is it true {_text(400, 15)}"],
  }
  index = leakage.EvalIndex(held, instance_specific=True)
  lines = [
      f"question three {_text(300, 15)}",  # b's held-out instance 1, in a's wording: a hit
      f"question four {passage} {_text(900, 15)}",  # a's passage with another question: shared text
      f"question five {_text(0, 15)}",  # a's own held-out instance: not another task's
      "question six short",
  ]
  assert index.texts_hit(lines, own_task="a").tolist() == [0]
  assert index.texts_hit(lines).tolist() == [0, 2]  # no own task: every indexed task counts
