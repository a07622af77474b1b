"""Tests of optiml_jax.data.packing: the greedy numpy packer and the seqio feature converter."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from optiml_jax.data import formatting
from optiml_jax.data import packing

BOS = 2


def _assert_same_rows(rows, reference):
  """The rows a packer emitted equal `reference`'s, feature by feature."""
  assert len(rows) == len(reference)
  for a, b in zip(rows, reference):
    for name in b:
      np.testing.assert_array_equal(a[name], b[name])


def _random_examples(rng: np.random.Generator, count: int, max_inputs: int, max_targets: int):
  examples = []
  for _ in range(count):
    n_in = int(rng.integers(0, max_inputs + 1))
    n_tg = int(rng.integers(1, max_targets + 1))
    # Ids >= 3 so that BOS/EOS (2) and padding (0) are recognisable; targets end with </s>.
    inputs = rng.integers(3, 1000, size=n_in).astype(np.int32)
    targets = np.concatenate([rng.integers(3, 1000, size=n_tg - 1), [BOS]]).astype(np.int32)
    examples.append((inputs, targets))
  return examples


def _unpack(rows):
  """Examples recovered from packed rows, checking every per-row invariant on the way."""
  recovered = []
  for row in rows:
    seg = row["decoder_segment_ids"]
    length = seg.size
    for name, value in row.items():
      assert value.shape == (length,) and value.dtype == np.int32, name
    used = int(np.count_nonzero(seg))
    # Segments are contiguous from the start: 1..m, then padding 0 only at the end.
    assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)
    assert np.all(np.diff(seg[:used]) >= 0) and np.all(np.diff(seg[:used]) <= 1)
    assert seg[0] == 1 if used else True
    for name in packing.MODEL_FEATURE_NAMES + ("decoder_positions",):
      assert np.all(row[name][used:] == 0), f"{name} not zero-padded"
    for s in range(1, int(seg.max(initial=0)) + 1):
      idx = np.nonzero(seg == s)[0]
      n = idx.size
      assert n > 0
      np.testing.assert_array_equal(row["decoder_positions"][idx], np.arange(n))  # positions restart at 0
      inp = row["decoder_input_tokens"][idx]
      tgt = row["decoder_target_tokens"][idx]
      w = row["decoder_loss_weights"][idx]
      # No leakage: each segment starts from BOS and its inputs are its own targets shifted right.
      assert inp[0] == BOS
      np.testing.assert_array_equal(inp[1:], tgt[:-1])
      # Loss weights: a run of zeros (the inputs) then ones (the target and its </s>) to the segment end.
      n_inputs = int(np.argmax(w)) if w.any() else n
      np.testing.assert_array_equal(w, np.r_[np.zeros(n_inputs), np.ones(n - n_inputs)])
      assert tgt[-1] == BOS
      recovered.append((tuple(tgt[:n_inputs]), tuple(tgt[n_inputs:])))
  return recovered


def _key(example):
  return tuple(int(x) for x in example[0]), tuple(int(x) for x in example[1])


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("max_open_rows", [1, 3, 8])
def test_pack_examples_keeps_every_example_whole(seed, max_open_rows):
  rng = np.random.default_rng(seed)
  length = int(rng.integers(8, 40))
  examples = _random_examples(rng, int(rng.integers(0, 40)), max_inputs=length // 2, max_targets=length // 2)
  rows = list(packing.pack_examples(examples, length, BOS, max_open_rows))
  recovered = _unpack(rows)
  assert sorted(recovered) == sorted(_key(e) for e in examples)
  total = sum(len(i) + len(t) for i, t in examples)
  assert len(rows) >= -(-total // length)
  if max_open_rows == 1:
    # Next fit keeps the order, and a row is closed only when the next example does not fit in it.
    assert recovered == [_key(e) for e in examples]
    ends = np.cumsum([len(r) for r in _row_sizes(rows)])
    sizes = [len(i) + len(t) for i, t in examples]
    for row_index, row_sizes in enumerate(_row_sizes(rows)[:-1]):
      next_example = int(ends[row_index])
      assert sum(row_sizes) + sizes[next_example] > length


def _row_sizes(rows):
  out = []
  for row in rows:
    seg = row["decoder_segment_ids"]
    out.append([int(np.sum(seg == s)) for s in range(1, int(seg.max(initial=0)) + 1)])
  return out


def test_pack_examples_is_deterministic_and_fills_rows():
  rng = np.random.default_rng(0)
  examples = _random_examples(rng, 200, max_inputs=20, max_targets=12)
  first = list(packing.pack_examples(examples, 64, BOS, 8))
  second = list(packing.pack_examples(examples, 64, BOS, 8))
  assert len(first) == len(second)
  for a, b in zip(first, second):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  fill = np.mean([np.count_nonzero(r["decoder_segment_ids"]) / 64 for r in first])
  next_fit = list(packing.pack_examples(examples, 64, BOS, 1))
  assert len(first) <= len(next_fit)
  assert fill > 0.9


def test_worked_example_from_the_docstring():
  rows = list(packing.pack_examples([([7, 8], [3, 2]), ([], [5, 6, 2])], 8))
  assert len(rows) == 1
  row = rows[0]
  np.testing.assert_array_equal(row["decoder_input_tokens"], [2, 7, 8, 3, 2, 5, 6, 0])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [7, 8, 3, 2, 5, 6, 2, 0])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 0, 1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 3, 0, 1, 2, 0])


def test_exactly_full_row_is_emitted_and_first_fit_uses_older_rows():
  # Sizes 5, 4, 3, 1 into length 5 with 2 open rows: [5] closes at once; 4 opens a row; 3 opens another;
  # 1 goes back into the 4-row (first fit), which closes it.
  examples = [([1, 1, 1, 1], [2]), ([1, 1, 1], [2]), ([1, 1], [2]), ([], [2])]
  rows = list(packing.pack_examples(examples, 5, BOS, max_open_rows=2))
  assert _row_sizes(rows) == [[5], [4, 1], [3]]


def test_pack_examples_rejects_too_long_and_bad_arguments():
  with pytest.raises(ValueError, match="needs 6 positions"):
    list(packing.pack_examples([([1, 1, 1], [4, 5, 2])], 5))
  with pytest.raises(ValueError, match="empty 'targets'"):
    list(packing.pack_examples([([1, 1], [])], 5))
  with pytest.raises(ValueError, match="max_open_rows"):
    list(packing.pack_examples([], 5, max_open_rows=0))


def test_pad_examples_one_example_per_row():
  rng = np.random.default_rng(1)
  examples = _random_examples(rng, 10, max_inputs=6, max_targets=6)
  rows = list(packing.pad_examples(examples, 12))
  assert len(rows) == len(examples)
  for row, (inputs, targets) in zip(rows, examples):
    assert set(row) == set(packing.MODEL_FEATURE_NAMES)
    n = len(inputs) + len(targets)
    np.testing.assert_array_equal(row["decoder_target_tokens"][:n], np.r_[inputs, targets])
    np.testing.assert_array_equal(row["decoder_input_tokens"][:n], np.r_[[BOS], inputs, targets[:-1]])
    np.testing.assert_array_equal(row["decoder_loss_weights"][:n], np.r_[np.zeros(len(inputs)), np.ones(len(targets))])
    assert not row["decoder_target_tokens"][n:].any() and not row["decoder_loss_weights"][n:].any()


def _dataset(examples):

  def gen():
    for inputs, targets in examples:
      yield {
          "inputs": np.asarray(inputs, np.int32),
          "targets": np.asarray(targets, np.int32),
          "inputs_pretokenized": "x"
      }

  return tf.data.Dataset.from_generator(
      gen, output_signature={
          "inputs": tf.TensorSpec([None], tf.int32),
          "targets": tf.TensorSpec([None], tf.int32),
          "inputs_pretokenized": tf.TensorSpec([], tf.string)
      })


@pytest.mark.parametrize("pack,window_size", [(True, 1), (True, 7), (True, 256), (False, 256)])
def test_feature_converter_matches_numpy_packer(pack, window_size):
  rng = np.random.default_rng(2)
  examples = _random_examples(rng, 25, max_inputs=10, max_targets=6)
  converter = packing.OptimlFeatureConverter(pack=pack, max_open_rows=4, window_size=window_size)
  lengths = {"inputs": 10, "targets": 6}
  assert converter.get_model_feature_lengths(lengths)["decoder_target_tokens"] == 16
  got = list(converter(_dataset(examples), lengths).as_numpy_iterator())
  expected = list(packing.pack_examples(examples, 16, BOS, 4) if pack else packing.pad_examples(examples, 16))
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert set(a) == set(b)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("lengths", [{"inputs": 13, "targets": 3}, {"inputs": 1, "targets": 15}])
def test_only_the_sum_of_the_task_lengths_counts(lengths):
  """Rows of Li + Lt = 16 positions take examples whose inputs or targets exceed Li or Lt, whatever the split."""
  rng = np.random.default_rng(5)
  examples = _random_examples(rng, 25, max_inputs=12, max_targets=12)
  examples = [formatting.fit_to_row(i, t, 16, BOS) for i, t in examples]
  assert any(len(i) > 13 for i, _ in examples) or any(len(t) > 3 for _, t in examples)
  converter = packing.OptimlFeatureConverter(pack=True, max_open_rows=4, window_size=5)
  got = list(converter(_dataset(examples), lengths).as_numpy_iterator())
  expected = list(packing.pack_examples(examples, 16, BOS, 4))
  assert len(got) == len(expected) and sorted(_unpack(got)) == sorted(_key(e) for e in examples)
  for a, b in zip(got, expected):
    for name in b:
      np.testing.assert_array_equal(a[name], b[name])


def test_row_length_is_the_sum_of_the_task_lengths():
  assert packing.row_length({"inputs": 1536, "targets": 512}) == packing.row_length({"inputs": 48, "targets": 2000})
  assert packing.row_length({"inputs": 1536, "targets": 512}) == 2048
  assert packing.row_length({"targets": 2048}) == packing.row_length({"inputs": None, "targets": 2048}) == 2048
  assert packing.row_length(None) is None and packing.row_length({}) is None
  assert packing.row_length({"inputs": None, "targets": None}) is None


def test_feature_converter_rejects_examples_over_the_row():
  converter = packing.OptimlFeatureConverter()
  # 7 inputs + 1 target take 8 positions: they fit rows of 4 + 4 although the inputs are over 4.
  (row,) = converter(_dataset([([5] * 7, [2])]), {"inputs": 4, "targets": 4}).as_numpy_iterator()
  np.testing.assert_array_equal(row["decoder_target_tokens"], [5] * 7 + [2])
  # 8 + 1 do not: the converter's length check is on the whole example (in the packer's graph, so TF wraps it).
  with pytest.raises(tf.errors.OpError, match="more tokens .inputs . targets. than a row of 8 positions holds .8."):
    list(converter(_dataset([([5] * 8, [2])]), {"inputs": 4, "targets": 4}).as_numpy_iterator())
  # Without a BOS the first input token takes its place: 9 tokens fill 8 positions.
  no_bos = packing.OptimlFeatureConverter(bos_id=None)
  (row,) = no_bos(_dataset([([5] * 8, [2])]), {"inputs": 4, "targets": 4}).as_numpy_iterator()
  np.testing.assert_array_equal(row["decoder_target_tokens"], [5] * 7 + [2])


def test_packer_state_round_trip_continues_identically():
  rng = np.random.default_rng(3)
  examples = _random_examples(rng, 60, max_inputs=12, max_targets=6)
  reference = list(packing.pack_examples(examples, 24, BOS, 5))
  packer = packing.Packer(24, BOS, 5)
  rows = []
  for index, (inputs, targets) in enumerate(examples):
    if index % 7 == 3:  # export and rebuild the state now and then, as the converter's scan does
      packer = packing.Packer.from_state(*packer.state(), bos_id=BOS)
    rows += packer.add(inputs, targets)
  rows += packer.flush()
  _assert_same_rows(rows, reference)


# --- A tokenizer that adds no BOS (SmolLM2, Qwen2), and id 0 as a real token ----------------------------------

EOS = 7  # an EOS other than OPT's, as a Llama-family tokenizer has


def _examples_with_zeros(rng, count, max_inputs, max_targets):
  """Random examples whose tokens include 0 (a real token, e.g. Llama 3's "!"); targets end with EOS."""
  examples = []
  for _ in range(count):
    inputs = rng.integers(0, 5, size=int(rng.integers(0, max_inputs + 1))).astype(np.int32)
    body = rng.integers(0, 5, size=int(rng.integers(0, max_targets)))
    examples.append((inputs, np.concatenate([body, [EOS]]).astype(np.int32)))
  return examples


def _unpack_without_bos(rows):
  """Examples recovered from rows packed with bos_id=None, padding told by segment ids only."""
  recovered = []
  for row in rows:
    seg = row["decoder_segment_ids"]
    used = int(np.count_nonzero(seg))
    assert np.all(seg[used:] == 0) and not row["decoder_loss_weights"][used:].any()
    for s in range(1, int(seg.max(initial=0)) + 1):
      idx = np.nonzero(seg == s)[0]
      inp, tgt, w = (
          row[name][idx] for name in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"))
      np.testing.assert_array_equal(row["decoder_positions"][idx], np.arange(idx.size))
      np.testing.assert_array_equal(inp[1:], tgt[:-1])
      tokens = np.r_[inp[:1], tgt]  # the whole example: no BOS in front
      first_target = int(np.argmax(w)) + 1  # position t predicts tokens[t + 1]
      np.testing.assert_array_equal(w, np.r_[np.zeros(first_target - 1), np.ones(idx.size - first_target + 1)])
      assert tgt[-1] == EOS
      recovered.append((tuple(tokens[:first_target].tolist()), tuple(tokens[first_target:].tolist())))
  return recovered


def test_without_a_bos_the_example_starts_with_its_first_input_token():
  rows = list(packing.pack_examples([([7, 8], [3, 2]), ([], [5, 6, 2]), ([], [2])], 8, bos_id=None))
  assert len(rows) == 1  # the one-token example has nothing to predict and is dropped
  row = rows[0]
  np.testing.assert_array_equal(row["decoder_input_tokens"], [7, 8, 3, 5, 6, 0, 0, 0])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [8, 3, 2, 6, 2, 0, 0, 0])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 0, 1, 0, 0, 0])
  (padded,) = packing.pad_examples([([7, 8], [3, 2])], 4, bos_id=None)
  np.testing.assert_array_equal(padded["decoder_input_tokens"], [7, 8, 3, 0])
  np.testing.assert_array_equal(padded["decoder_loss_weights"], [0, 1, 1, 0])
  # Llama 3's BOS is its own id, not the EOS.
  (row,) = packing.pack_examples([([7, 8], [3, EOS])], 4, bos_id=128000)
  np.testing.assert_array_equal(row["decoder_input_tokens"], [128000, 7, 8, 3])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [7, 8, 3, EOS])


@pytest.mark.parametrize("seed", range(10))
def test_packing_without_bos_keeps_every_example_and_id_0_is_data(seed):
  rng = np.random.default_rng(seed)
  length = int(rng.integers(6, 30))
  examples = _examples_with_zeros(rng, 30, length // 2, length // 2)
  rows = list(packing.pack_examples(examples, length, bos_id=None, max_open_rows=3))
  expected = [(tuple(i.tolist()), tuple(t.tolist())) for i, t in examples if len(i) + len(t) > 1]
  got = _unpack_without_bos(rows)
  # An example without inputs reads its first target token and is scored from the second one on.
  normalized = [(i, t) if i else (t[:1], t[1:]) for i, t in expected]
  assert sorted(got) == sorted(normalized)
  assert any(0 in row["decoder_target_tokens"][row["decoder_segment_ids"] > 0] for row in rows)


@pytest.mark.parametrize("pack,window_size", [(True, 3), (False, 256)])
def test_feature_converter_without_bos_matches_the_numpy_packer(pack, window_size):
  rng = np.random.default_rng(4)
  examples = [e for e in _examples_with_zeros(rng, 25, 10, 6) if len(e[0]) + len(e[1]) > 1]
  converter = packing.OptimlFeatureConverter(pack=pack, bos_id=None, eos_id=EOS, max_open_rows=4,
                                             window_size=window_size)
  assert converter.bos_id is None and converter.eos_id == EOS
  got = list(converter(_dataset(examples), {"inputs": 10, "targets": 6}).as_numpy_iterator())
  expected = list(
      packing.pack_examples(examples, 16, None, 4) if pack else packing.pad_examples(examples, 16, bos_id=None))
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert set(a) == set(b)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_the_converter_fits_examples_to_the_row_cutting_the_prompt_from_the_left():
  converter = packing.OptimlFeatureConverter(pack=False, bos_id=None, eos_id=EOS, apply_length_check=False)
  lengths = {"inputs": 2, "targets": 3}  # rows of 5 positions: 6 tokens without a BOS
  # The target (5 tokens, over its "targets" length of 3) stays whole; the prompt keeps its last token.
  (row,) = converter(_dataset([([1, 2], [3, 4, 5, 6, EOS])]), lengths).as_numpy_iterator()
  np.testing.assert_array_equal(row["decoder_input_tokens"], [2, 3, 4, 5, 6])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [3, 4, 5, 6, EOS])
  np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 1, 1, 1])
  # A target longer than the row alone is cut from the end, keeping its EOS, and the prompt is gone.
  (row,) = converter(_dataset([([1, 2], [3, 4, 5, 6, 8, 9, EOS])]), lengths).as_numpy_iterator()
  np.testing.assert_array_equal(row["decoder_input_tokens"], [3, 4, 5, 6, 8])
  np.testing.assert_array_equal(row["decoder_target_tokens"], [4, 5, 6, 8, EOS])


@pytest.mark.parametrize("with_bos", [True, False])
def test_tf_row_examples_match_the_numpy_ones(with_bos):
  """`row_examples_tf` (the Task preprocessor's flat_map) against `formatting.row_examples`: prompts cut from the
  left, targets kept whole, text split into chunks; then every example fits a row and packs."""
  rng = np.random.default_rng(6)
  length = 12
  examples = _random_examples(rng, 60, max_inputs=20, max_targets=30)
  examples += [(np.zeros(0, np.int32), t) for _, t in _random_examples(rng, 20, 0, 40)]  # pre-training text
  ds = _dataset(examples).flat_map(lambda ex: packing.row_examples_tf(ex, length, BOS, with_bos))
  got = [(ex["inputs"].tolist(), ex["targets"].tolist()) for ex in ds.as_numpy_iterator()]
  expected = [(i.tolist(), t.tolist())
              for inputs, targets in examples
              for i, t in formatting.row_examples(inputs, targets, length, BOS, with_bos)]
  assert got == expected
  assert len(got) > len(examples)  # some text was split
  fitted = [formatting.fit_to_row(i, t, length, BOS, with_bos) for i, t in examples]
  assert [(i.tolist(), t.tolist()) for i, t in fitted
         ] == [(i.tolist(), t.tolist()) for i, t in [(ex["inputs"], ex["targets"]) for ex in _dataset(examples).map(
             lambda ex: packing.fit_to_row_tf(ex, length, BOS, with_bos)).as_numpy_iterator()]]
  rows = list(packing.pack_examples(got, length, BOS if with_bos else None))
  assert sum(int(r["decoder_loss_weights"].sum()) for r in rows) > 0


def _assert_metaseq_context(examples, sequences, length):
  """Packs `examples` (inputs, targets) and checks, for each, that the tokens read up to the position that
  predicts its first target token are the ones metaseq's concatenated stream of `sequences` (each example's
  whole token sequence, ending with </s>) gives it: the </s> ending the example before, then its prompt."""
  stream = np.concatenate(sequences).astype(np.int32)
  starts = np.cumsum([0] + [len(s) for s in sequences])
  rows = list(packing.pack_examples(examples, length, BOS, max_open_rows=1))  # next fit: the order is kept
  index = 0
  for row in rows:
    seg = row["decoder_segment_ids"]
    for s in range(1, int(seg.max()) + 1):
      idx = np.nonzero(seg == s)[0]
      inputs, targets = examples[index]
      first = int(np.argmax(row["decoder_loss_weights"][idx]))  # the position that predicts the first target token
      assert row["decoder_target_tokens"][idx][first] == targets[0]
      ours = row["decoder_input_tokens"][idx][:first + 1]  # what that position and the ones before it read
      start = starts[index]
      # metaseq: the example follows the </s> of the one before (the stream's first example follows nothing).
      theirs = np.r_[stream[start - 1:start] if index else [BOS], stream[start:start + len(inputs)]]
      np.testing.assert_array_equal(ours, theirs)
      index += 1
  assert index == len(examples) > 1


def test_first_target_token_sees_what_metaseq_s_stream_gives_it():
  """metaseq concatenates examples, each BPE(src + " " + tgt) + </s>, and the first token of an example is
  predicted from the </s> that ends the one before. We feed </s> as BOS instead: the tokens before every
  example's first target token are the same, [</s>] + its inputs, and the first example of a row (which in
  metaseq's stream follows nothing or a cut-off block) gets the same context as the others."""
  rng = np.random.default_rng(7)
  examples = _random_examples(rng, 40, max_inputs=10, max_targets=6)
  examples = [(i, t) for i, t in examples if i.size]  # an instruction example always has a prompt
  _assert_metaseq_context(examples, [np.r_[i, t] for i, t in examples], 32)


def test_first_target_token_sees_what_metaseq_s_stream_gives_it_on_real_sni_examples(shared_dir):
  """The same on real SNI examples: metaseq's sequence is BPE(source + " " + target) + </s> in one piece, its
  prompt the first len(BPE(source)) tokens; ours is the registry's inputs / targets split of it."""
  from optiml_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import sni  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.OPTVocabulary()
  tasks_dir = shared_dir / "data" / "natural-instructions" / "tasks"
  examples, sequences = [], []
  for path in sorted(tasks_dir.glob("*.json"))[:6]:
    task = sni.read_task(path)
    for instance in itertools.islice(task.instances(), 3):
      source, target = formatting.format_example(task, instance, (),
                                                 formatting.choose_delimiter(0, task.name, instance.id))
      inputs, targets = formatting.tokenize_example(vocabulary, source, target)
      examples.append(formatting.fit_to_row(inputs, targets, 1024, vocabulary.eos_id))
      whole = vocabulary.encode(source.rstrip(" ") + " " + target.rstrip()) + [vocabulary.eos_id]
      sequences.append(np.asarray(whole[-len(examples[-1][0]) - len(examples[-1][1]):]))  # as fitted, left-cut
  assert vocabulary.bos_id == vocabulary.eos_id == BOS
  _assert_metaseq_context(examples, sequences, 1024)


def test_for_vocabulary_follows_the_tokenizer(tiny_tokenizer):
  from optiml_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  opt = packing.OptimlFeatureConverter.for_vocabulary(vocab_lib.OPTVocabulary(), pack=False)
  assert (opt.bos_id, opt.eos_id, opt.pack) == (BOS, BOS, False)
  smollm2 = packing.OptimlFeatureConverter.for_vocabulary(vocab_lib.HFVocabulary(tiny_tokenizer("smollm2")))
  assert (smollm2.bos_id, smollm2.eos_id, smollm2.pack) == (None, 2, True)
  llama3 = vocab_lib.HFVocabulary(tiny_tokenizer("llama3"))
  converter = packing.OptimlFeatureConverter.for_vocabulary(llama3)
  assert (converter.bos_id, converter.eos_id) == (llama3.prefix_ids[0], llama3.eos_id)
  with pytest.raises(ValueError, match="bos_id must be a token id >= 0 or None"):
    packing.OptimlFeatureConverter(bos_id=-1)


# --- A cap on segments per row (the packed-layout attention kernel's static bound) ---------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_segments", [1, 2, 3])
def test_the_cap_bounds_the_segments_of_every_row_and_keeps_every_example(seed, max_segments):
  rng = np.random.default_rng(seed)
  length = int(rng.integers(12, 40))
  examples = _random_examples(rng, 40, max_inputs=length // 4, max_targets=length // 4)
  rows = list(packing.pack_examples(examples, length, BOS, max_open_rows=3, max_segments=max_segments))
  segments = packing.count_segments(np.stack([r["decoder_segment_ids"] for r in rows]))
  assert segments.max() <= max_segments and segments.min() >= 1
  assert sorted(_unpack(rows)) == sorted(_key(e) for e in examples)
  uncapped = list(packing.pack_examples(examples, length, BOS, max_open_rows=3))
  assert packing.count_segments(np.stack([r["decoder_segment_ids"] for r in uncapped])).max() > max_segments
  assert len(rows) >= len(uncapped)  # the cap costs fill, never an example


def test_a_row_at_the_cap_is_emitted_at_once_with_room_left():
  # Four examples of 2 positions each fill one row of 8 without a cap; with a cap of 2 each row holds two and
  # ends in padding, and the first row is emitted as soon as it holds its second example.
  examples = [([5], [2]), ([6], [2]), ([7], [2]), ([8], [2])]
  (full,) = packing.pack_examples(examples, 8, BOS)
  np.testing.assert_array_equal(full["decoder_segment_ids"], [1, 1, 2, 2, 3, 3, 4, 4])
  packer = packing.Packer(8, BOS, max_open_rows=4, max_segments=2)
  assert packer.add(*examples[0]) == []
  (first,) = packer.add(*examples[1])
  np.testing.assert_array_equal(first["decoder_segment_ids"], [1, 1, 2, 2, 0, 0, 0, 0])
  np.testing.assert_array_equal(first["decoder_input_tokens"], [BOS, 5, BOS, 6, 0, 0, 0, 0])
  np.testing.assert_array_equal(first["decoder_loss_weights"], [0, 1, 0, 1, 0, 0, 0, 0])
  assert packer.add(*examples[2]) == []  # a new row: the emitted one takes nothing more
  (second,) = packer.add(*examples[3])
  np.testing.assert_array_equal(second["decoder_target_tokens"], [7, 2, 8, 2, 0, 0, 0, 0])
  assert packer.flush() == []


def test_no_cap_keeps_today_s_rows_byte_for_byte():
  rng = np.random.default_rng(8)
  examples = _random_examples(rng, 80, max_inputs=6, max_targets=4)
  default = list(packing.pack_examples(examples, 32, BOS, 4))
  assert packing.count_segments(np.stack([r["decoder_segment_ids"] for r in default])).max() > 3
  for rows in (list(packing.pack_examples(examples, 32, BOS, 4, max_segments=None)),
               list(packing.pack_examples(examples, 32, BOS, 4, max_segments=32))):  # a cap no row reaches
    assert len(rows) == len(default)
    for a, b in zip(rows, default):
      assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_packer_state_round_trip_with_the_cap_continues_identically():
  rng = np.random.default_rng(9)
  examples = _random_examples(rng, 60, max_inputs=5, max_targets=4)
  reference = list(packing.pack_examples(examples, 24, BOS, 5, max_segments=3))
  packer = packing.Packer(24, BOS, 5, max_segments=3)
  rows = []
  for index, (inputs, targets) in enumerate(examples):
    if index % 4 == 1:
      rows_state, meta = packer.state()
      assert meta[:, 2].max() < 3  # an open row is always under the cap
      packer = packing.Packer.from_state(rows_state, meta, bos_id=BOS, max_segments=3)
    rows += packer.add(inputs, targets)
  rows += packer.flush()
  _assert_same_rows(rows, reference)
  # A state whose open row is already at the cap (written without it) is refused, not silently overfilled.
  uncapped = packing.Packer(24, BOS, 5)
  for inputs, targets in [([5], [2]), ([6], [2]), ([7], [2])]:
    uncapped.add(inputs, targets)
  with pytest.raises(ValueError, match="holds 3 segments, not fewer than max_segments=3"):
    packing.Packer.from_state(*uncapped.state(), bos_id=BOS, max_segments=3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_bad_cap_is_refused_naming_it(bad):
  with pytest.raises(ValueError, match="max_segments must be an integer >= 1 or None"):
    packing.Packer(8, BOS, max_segments=bad)
  with pytest.raises(ValueError, match="max_segments must be an integer >= 1 or None"):
    list(packing.pack_examples([], 8, max_segments=bad))
  with pytest.raises(ValueError, match="max_segments_per_row must be an integer >= 1 or None"):
    packing.OptimlFeatureConverter(max_segments_per_row=bad)


@pytest.mark.parametrize("window_size", [1, 4])
def test_feature_converter_output_respects_the_cap(window_size):
  rng = np.random.default_rng(10)
  examples = _random_examples(rng, 30, max_inputs=4, max_targets=3)
  converter = packing.OptimlFeatureConverter(pack=True, max_open_rows=3, window_size=window_size,
                                             max_segments_per_row=2)
  assert converter.max_segments_per_row == 2 and packing.OptimlFeatureConverter().max_segments_per_row is None
  got = list(converter(_dataset(examples), {"inputs": 10, "targets": 6}).as_numpy_iterator())
  assert packing.count_segments(np.stack([r["decoder_segment_ids"] for r in got])).max() == 2
  expected = list(packing.pack_examples(examples, 16, BOS, 3, max_segments=2))
  assert len(got) == len(expected) and sorted(_unpack(got)) == sorted(_key(e) for e in examples)
  for a, b in zip(got, expected):
    for name in b:
      np.testing.assert_array_equal(a[name], b[name])


def test_count_segments_counts_runs_of_nonzero_ids_per_row():
  ids = np.array(
      [
          [1, 1, 2, 2, 2, 0, 0],  # two segments, then padding
          [1, 2, 3, 4, 5, 6, 7],  # one position each
          [0, 0, 0, 0, 0, 0, 0],  # padding only: no segment
          [3, 3, 1, 1, 3, 0, 0],  # runs, not distinct ids: an id may come back
          [1, 1, 0, 1, 1, 1, 1],  # padding between two runs of the same id splits them
          [5, 5, 5, 5, 5, 5, 5],  # one full-row segment
      ],
      np.int32)
  counts = packing.count_segments(ids)
  np.testing.assert_array_equal(counts, [2, 7, 0, 3, 2, 1])
  assert counts.shape == (6,) and counts.dtype == np.int64
  np.testing.assert_array_equal(packing.count_segments(ids[None]), counts[None])  # leading axes are kept
  assert packing.count_segments(np.zeros((2, 0), np.int32)).tolist() == [0, 0]
  with pytest.raises(ValueError, match="scalar"):
    packing.count_segments(np.int32(1))
