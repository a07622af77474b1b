"""Tests of optiml_jax.data.metrics: SNI's ROUGE-L and exact match, accuracy, rank classification.

Expected values are worked out by hand in the comments (rouge_score tokenizes into lower-cased [a-z0-9]
words and Porter-stems words longer than three characters).
"""

import pytest

from optiml_jax.data import metrics


def test_rouge_l_hand_computed_cases():
  targets = [
      "the cat is on the mat",  # LCS "the cat on the mat" = 5 of 6 and 6 tokens: F = 5/6
      ["red car", "the blue sky today"],  # best reference: LCS 2, P = 2/2, R = 2/4: F = 2/3
      "anything at all",  # empty prediction: 0
      "hello world",  # punctuation and case are not tokens: F = 1
      "run dog",  # stems: running -> run, dogs -> dog: F = 1
  ]
  predictions = ["the cat sat on the mat", "blue sky", "", "Hello, world!", "running dogs"]
  expected = 100 * (5 / 6 + 2 / 3 + 0 + 1 + 1) / 5
  assert metrics.rouge_l(targets, predictions)["rougeL"] == pytest.approx(expected)
  assert metrics.rouge_l_f1("run dog", "running dogs") == pytest.approx(1.0)
  assert metrics.rouge_l_f1("", "") == 0.0  # rouge_score scores an empty pair 0, as SNI does


def test_rouge_l_takes_the_best_reference_not_the_first():
  assert metrics.rouge_l([["wrong words", "a b c d"]], ["a b c d"])["rougeL"] == pytest.approx(100.0)
  assert metrics.rouge_l([["a b c d", "wrong words"]], ["a b"])["rougeL"] == pytest.approx(100 * 2 / 3)


def test_exact_match_hand_computed_cases():
  targets = [
      ["the answer"],  # "The Answer." -> "the answer": match
      ["No", "Yes!"],  # second reference matches " yes "
      ["something"],  # empty prediction: no match
      "a b",  # white space collapsed: match
      "answer",  # articles are NOT removed (SNI, unlike SQuAD): no match
      "cafés",  # "\u2019" (a curly apostrophe) is not ASCII punctuation, so it stays: no match
  ]
  predictions = ["The Answer.", " yes ", "", "a   b", "the answer", "caf\u00e9\u2019s"]
  assert metrics.exact_match(targets, predictions)["exact_match"] == pytest.approx(100 * 3 / 6)
  assert metrics.normalize_answer("  Hello,\tWorld!! ") == "hello world"


def test_accuracy_and_length_checks():
  assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="3 targets but 2 predictions"):
    metrics.rouge_l(["a", "b", "c"], ["a", "b"])
  with pytest.raises(ValueError, match="target 0 has no reference"):
    metrics.exact_match([[]], ["a"])


def _row(instance, option, correct, length, weight=1.0):
  return ((instance, option), correct, weight, length)


def test_rank_classification_argmax_ties_multiple_answers_weights_and_normalization():
  # Instance 0: option 0 (wrong, 1 token, -1.0) beats option 1 (right, 4 tokens, -3.0) unless normalised
  #   (-1.0 vs -0.75). Instance 1: a tie goes to the first option (right). Instance 2: two right options,
  #   the better one (-4) wins. Rows arrive out of order.
  targets = [
      _row(2, 2, False, 1),
      _row(0, 1, True, 4),
      _row(1, 0, True, 2),
      _row(1, 1, False, 2),
      _row(0, 0, False, 1),
      _row(2, 0, True, 1),
      _row(2, 1, True, 1)
  ]
  scores = [-6.0, -3.0, -2.0, -2.0, -1.0, -5.0, -4.0]
  # Chance: 1/2, 1/2 and 2/3 of the options are right.
  chance = pytest.approx(100 * (1 / 2 + 1 / 2 + 2 / 3) / 3)
  assert metrics.rank_classification(targets, scores) == {"accuracy": pytest.approx(100 * 2 / 3), "chance": chance}
  # Only once: seqio refuses a metric key that two metric functions of one Task both return.
  assert metrics.rank_classification_length_normalized(targets, scores) == {"accuracy_norm": pytest.approx(100.0)}
  weighted = [_row(i, j, c, n, 2.0 if i == 2 else 1.0) for (i, j), c, _, n in targets]
  assert metrics.rank_classification(weighted, scores) == {
      "accuracy": pytest.approx(100 * 3 / 4),
      "chance": pytest.approx(100 * (1 / 2 + 1 / 2 + 2 * 2 / 3) / 4)
  }
  with pytest.raises(ValueError, match=r"\(idx, is_correct, weight, length, option score\)"):
    metrics.rank_classification([((0, 0), True, 1.0)], [0.0])
  # The postprocessor's 5-tuples with the ungraded option scores (1.0 / 0.0 by is_correct) score exactly as before.
  ungraded = [(*t, float(t[1])) for t in targets]
  assert metrics.rank_classification(ungraded, scores) == metrics.rank_classification(targets, scores)
  assert metrics.rank_classification_length_normalized(ungraded, scores) == {"accuracy_norm": pytest.approx(100.0)}


def test_rank_classification_refuses_nan_scores_and_ranks_minus_inf_last():
  """A diverged model's NaN log-likelihoods must not read as a score (argmax would pick the first NaN)."""
  targets = [((0, 0), True, 1.0, 2), ((0, 1), False, 1.0, 2), ((1, 0), False, 1.0, 2), ((1, 1), True, 1.0, 2)]
  for scores in ([float("nan")] * 4, [-1.0, -2.0, float("nan"), -1.0]):
    with pytest.raises(ValueError, match=r"row \(\d, \d\) has a NaN log-likelihood"):
      metrics.rank_classification(targets, scores)
  inf = float("inf")
  assert metrics.rank_classification(targets, [-1.0, -inf, -inf, -5.0])["accuracy"] == pytest.approx(100.0)


def test_rank_classification_credits_the_picked_option_s_graded_score():
  # BIG-bench's multiple_choice_grade: the picked choice's target score. emojis_emotion_prediction's rainbow:
  # "joy" 0.69 (the top choice), "anticipation" 0.28, "anger" 0. Instance 1 (swedish_to_german_proverbs-like):
  # 0.9 and 0.5 for near-right choices, 1 for the right one, in the rows' option order.
  def row(instance, option, score, length, correct=False):
    return ((instance, option), correct, 1.0, length, score)

  targets = [
      row(0, 0, 0.28, 1),
      row(0, 1, 0.69, 1, True),
      row(0, 2, 0.0, 4),
      row(1, 0, 0.5, 2),
      row(1, 1, 1.0, 8, True),
      row(1, 2, 0.9, 2)
  ]
  # Instance 0: "anticipation" (-1.0) beats "joy" (-2.0): 0.28, not 0. Instance 1: option 2 (-3.0) wins: 0.9; per
  # token, option 1 (-8 / 8 = -1.0 vs -1.5) wins: 1.0, and instance 0's "anger" (-2.0 / 4 = -0.5): 0.
  scores = [-1.0, -2.0, -2.0, -4.0, -8.0, -3.0]
  assert metrics.rank_classification(targets, scores) == {
      "accuracy": pytest.approx(100 * (0.28 + 0.9) / 2),
      "chance": pytest.approx(100 * ((0.28 + 0.69) / 3 + (0.5 + 1.0 + 0.9) / 3) / 2)
  }
  assert metrics.rank_classification_length_normalized(targets, scores) == {
      "accuracy_norm": pytest.approx(100 * (0.0 + 1.0) / 2)
  }
  # A tie goes to the first option in the instance's order, and earns that option's score.
  assert metrics.rank_classification(targets[:3], [-1.0, -1.0, -1.0])["accuracy"] == pytest.approx(28.0)
  # Instance weights weigh the credit.
  weighted = [((i, j), c, 3.0 if i == 1 else 1.0, n, s) for (i, j), c, _, n, s in targets]
  assert metrics.rank_classification(weighted, scores)["accuracy"] == pytest.approx(100 * (0.28 + 3 * 0.9) / 4)
