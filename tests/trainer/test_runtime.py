"""Tests for optiml_jax.trainer.runtime: what the loop counts and checks of each batch."""

import numpy as np

from optiml_jax.trainer import runtime


def test_tokens_are_counted_by_segment_where_a_batch_has_segments():
  # A Llama-family vocabulary's id 0 is a real token (SmolLM2's <|endoftext|>): in a packed row it is counted,
  # and the padding after the last segment is not.
  packed = {
      "decoder_target_tokens": np.array([[5, 0, 7, 0, 0], [0, 3, 0, 0, 0]]),
      "decoder_segment_ids": np.array([[1, 1, 2, 0, 0], [1, 1, 1, 2, 0]]),
  }
  assert runtime.count_tokens(packed) == 7
  assert runtime.count_tokens({"decoder_target_tokens": packed["decoder_target_tokens"]}) == 3  # t5x: 0 pads
