"""Tests of optiml_jax.data.records: the plain records every reader yields."""

import pytest

from optiml_jax.data import records


def test_option_scores_are_one_per_option_or_none():
  graded = records.Instance(id="a", input="q", targets=("x",), options=("x", "y"), option_scores=(1.0, 0.5))
  assert graded.option_scores == (1.0, 0.5)
  assert records.Instance(id="b", input="q", targets=("x",), options=("x", "y")).option_scores == ()
  with pytest.raises(ValueError, match="instance 'c': 1 option scores for 2 options"):
    records.Instance(id="c", input="q", targets=("x",), options=("x", "y"), option_scores=(1.0,))
