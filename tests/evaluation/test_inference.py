"""Tests of evaluation/inference.py, decoding.py and batching.py: scores and greedy decoding against
transformers' PyTorch OPT on the same random weights, length normalisation, left truncation, batch plans,
bad input, and a sharded run on a mesh."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from optiml_jax import convert
from optiml_jax.evaluation import batching
from optiml_jax.evaluation import inference
from optiml_jax.models import opt
from optiml_jax.models import opt_config
from optiml_jax.models import partitioning

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Tiny, but with every code path: several heads, two layers, a context short enough to overflow.
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
             max_position_embeddings=40, init_std=0.3)


@pytest.fixture(scope="module")
def hf_and_flax(tmp_path_factory, random_hf_opt):
  """A random transformers OPTForCausalLM saved with save_pretrained, and (OPT module, params) read back
  with convert.load_hf; biases and norms are random too, so a mix-up cannot go unseen."""
  config = opt_config.OPTConfig(**SMALL)
  hf_model = random_hf_opt(config)
  path = tmp_path_factory.mktemp("hf_opt")
  hf_model.save_pretrained(path)
  loaded_config, params = convert.load_hf(path)
  model = opt.OPT(loaded_config)
  return hf_model, model, inference.place_params(model, params)


def _hf_log_likelihood(hf_model, tokens, num_scored):
  """transformers: sum of log p(token) over the last `num_scored` tokens of `tokens` (the last token is
  only predicted, never read, so the model reads len(tokens) - 1 positions, as ours does)."""
  ids = torch.tensor([list(tokens)[:-1]])
  with torch.no_grad():
    log_probs = torch.log_softmax(hf_model(ids).logits[0].double(), dim=-1)
  n = len(tokens)
  return float(sum(log_probs[t - 1, tokens[t]] for t in range(n - num_scored, n)))


def _hf_greedy(hf_model, prompt, max_new_tokens, eos_id):
  """transformers' greedy `generate`: the new tokens before the first eos_id."""
  ids = torch.tensor([list(prompt)])
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                            eos_token_id=eos_id, pad_token_id=1)
  new = out[0, len(prompt):].tolist()
  return new[:new.index(eos_id)] if eos_id in new else new


def _random_examples(seed, prompt_lengths, option_lengths):
  rng = np.random.default_rng(seed)
  prompts = [[2] + rng.integers(3, SMALL["vocab_size"], size=n - 1).tolist() for n in prompt_lengths]
  options = [[rng.integers(3, SMALL["vocab_size"], size=k).tolist() for k in lengths] for lengths in option_lengths]
  return prompts, options


def test_scores_equal_transformers_log_likelihoods(hf_and_flax):
  hf_model, model, params = hf_and_flax
  # Example 1 has more options (5) than a batch holds (4): its rows fill consecutive batches.
  prompts, options = _random_examples(1, [4, 9, 15], [[1, 3], [2, 2, 4, 1, 6], [3]])
  stats = inference.InferenceStats()
  scores = inference.score_options(model, params, prompts, options, batch_size=4, stats=stats)
  normalized = inference.score_options(model, params, prompts, options, length_normalize=True, batch_size=4)
  assert [len(s) for s in scores] == [2, 5, 1]
  for i, prompt in enumerate(prompts):
    for j, option in enumerate(options[i]):
      expected = _hf_log_likelihood(hf_model, prompt + option, len(option))
      assert scores[i][j] == pytest.approx(expected, rel=1e-5, abs=1e-4)
      assert normalized[i][j] == pytest.approx(expected / len(option), rel=1e-5, abs=1e-4)
  assert max(abs(s) for row in scores for s in row) > 1.0  # Not trivially 0: the comparison can fail.
  assert (stats.examples, stats.truncated, stats.rows) == (3, 0, 8)
  # Examples 0 and 2 read their prompt once; example 1 (more options than a batch) row by row.
  shared = sum(len(prompts[i]) - 1 + sum(map(len, options[i])) for i in (0, 2))
  assert stats.tokens == shared + sum(len(prompts[1]) + len(o) - 1 for o in options[1])


def test_shared_prompt_scores_equal_row_by_row_scores(hf_and_flax):
  _, model, params = hf_and_flax
  prompts, options = _random_examples(5, [1, 2, 7, 16, 31, 9, 3],
                                      [[2, 1, 4], [1], [5, 5], [1, 2, 3, 4], [2, 2], [7], [1, 1, 1]])
  shared_stats, row_stats = inference.InferenceStats(), inference.InferenceStats()
  shared = inference.score_options(model, params, prompts, options, batch_size=8, stats=shared_stats)
  rows = inference.score_options(model, params, prompts, options, batch_size=8, stats=row_stats, share_prompts=False)
  for a, b in zip(shared, rows):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  assert shared_stats.rows == row_stats.rows == 16
  assert shared_stats.tokens < row_stats.tokens / 1.5  # each prompt read once, not once per option


def test_length_normalization_can_change_the_ranking(hf_and_flax):
  _, model, params = hf_and_flax
  prompts, options = _random_examples(2, [5] * 6, [[1, 6]] * 6)
  total = inference.score_options(model, params, prompts, options)
  mean = inference.score_options(model, params, prompts, options, length_normalize=True)
  for t, m in zip(total, mean):
    assert m == pytest.approx([t[0] / 1, t[1] / 6], rel=1e-6)
  # Summed log-likelihoods favour the one-token option far more often than per-token means.
  assert sum(t[0] > t[1] for t in total) > sum(m[0] > m[1] for m in mean)


def test_greedy_decode_equals_transformers_generate(hf_and_flax):
  hf_model, model, params = hf_and_flax
  prompts, _ = _random_examples(3, [3, 11, 6, 8, 2], [[]] * 5)
  free = inference.greedy_decode(model, params, prompts, max_new_tokens=7, batch_size=2)
  for prompt, tokens in zip(prompts, free):
    assert tokens == _hf_greedy(hf_model, prompt, 7, eos_id=2)
  # Stopping: make a token that example 1 emits mid-way the end token; both stop right before it.
  stop = next(t for t in free[1][1:] if t != free[1][0])
  stats = inference.InferenceStats()
  stopped = inference.greedy_decode(model, params, prompts, max_new_tokens=7, eos_id=stop, batch_size=4, stats=stats)
  assert len(stopped[1]) < 7 and stop not in stopped[1]
  for prompt, tokens in zip(prompts, stopped):
    assert tokens == _hf_greedy(hf_model, prompt, 7, eos_id=stop)
  assert stats.generated_tokens == sum(map(len, stopped))
  assert (stats.examples, stats.truncated) == (5, 0)


class _CountingDecodeSteps:
  """The model, counting the decode steps (calls with decode=True) that a jitted greedy decoding runs."""

  def __init__(self, model):
    self.model, self.config, self.steps = model, model.config, []

  def apply(self, *args, **kwargs):
    if kwargs.get("decode"):
      jax.debug.callback(lambda: self.steps.append(1))
    return self.model.apply(*args, **kwargs)


def test_padding_rows_of_a_partial_batch_do_not_keep_decoding_running(hf_and_flax):
  """5 prompts in a batch of 8 rows: the 3 padding rows start done, so a batch whose prompts all stop at their
  first token runs no decode step (it ran until a padding row emitted an EOS, up to max_new_tokens)."""
  _, model, params = hf_and_flax
  prompts, _ = _random_examples(5, [3, 11, 6, 8, 2, 5, 7, 4], [[]] * 8)
  firsts = [t[0] for t in inference.greedy_decode(model, params, prompts, max_new_tokens=1, eos_id=-1)]
  # What a padding row (token 0, run as a 1-token prompt) would emit first: never an EOS here.
  padding_first = int(
      np.argmax(model.apply({"params": params}, np.zeros((1, 1), np.int32), enable_dropout=False)[0, -1]))
  eos = tuple(sorted(set(firsts) - {padding_first}))
  assert eos, "the random prompts all start like a padding row; pick another seed"
  stopping = [p for p, first in zip(prompts, firsts) if first in eos]
  counting = _CountingDecodeSteps(model)
  batch = (stopping * 5)[:5]
  assert batching.padded_batch_rows(len(batch), 8) == 8
  outputs = inference.greedy_decode(counting, params, batch, max_new_tokens=30, eos_id=eos, batch_size=8)
  jax.effects_barrier()
  assert outputs == [[]] * 5
  assert len(counting.steps) == 0
  # Real rows' outputs do not depend on the padding rows beside them.
  alone = [inference.greedy_decode(model, params, [p], max_new_tokens=7, batch_size=1)[0] for p in prompts[:5]]
  assert inference.greedy_decode(model, params, prompts[:5], max_new_tokens=7, batch_size=8) == alone


class _RecordingCalls:
  """The model, recording the keyword arguments of each call (once per traced program)."""

  def __init__(self, model):
    self.model, self.config, self.calls = model, model.config, []

  def apply(self, *args, **kwargs):
    self.calls.append(kwargs)
    return self.model.apply(*args, **kwargs)


def test_scoring_and_greedy_decoding_ask_the_model_for_float32_sums_of_the_lm_head(hf_and_flax):
  # In bfloat16 the head's logits were rounded to bfloat16 before the float32 cast: exact ties at the top made
  # SmolLM2's greedy decodes depend on the batch (models/test_registry.py checks the float32 sums themselves).
  _, model, params = hf_and_flax
  recording = _RecordingCalls(model)
  prompts, options = _random_examples(6, [4, 9], [[1, 3], [2]])
  inference.score_options(recording, params, prompts, options, batch_size=4)
  inference.score_options(recording, params, prompts, options, batch_size=4, share_prompts=False)
  inference.greedy_decode(recording, params, prompts, max_new_tokens=3, batch_size=2)
  calls = {"prefill" if c.get("prefill") else "decode" if c.get("decode") else "whole" for c in recording.calls}
  assert calls == {"prefill", "decode", "whole"}  # shared prompts, their continuations, rows; and decoding
  assert all(c.get("float32_logits") is True for c in recording.calls), recording.calls


@pytest.mark.parametrize("share_prompts", [True, False])
def test_long_prompts_are_left_truncated_and_counted(hf_and_flax, share_prompts):
  hf_model, model, params = hf_and_flax
  prompts, options = _random_examples(4, [30, 8, 24], [[3, 2], [2], [1]])
  stats = inference.InferenceStats()
  scores = inference.score_options(model, params, prompts, options, max_length=20, stats=stats,
                                   share_prompts=share_prompts)
  for i, prompt in enumerate(prompts):
    for j, option in enumerate(options[i]):
      # Shared: every option reads the same prompt, as much as the longest option leaves room for. Not shared:
      # each row keeps its last 20 positions (21 tokens: the first one is context only).
      shared = prompt[-(20 - max(map(len, options[i])) + 1):] + option
      kept = shared if share_prompts else (prompt + option)[-21:]
      assert scores[i][j] == pytest.approx(_hf_log_likelihood(hf_model, kept, len(option)), rel=1e-5, abs=1e-4)
  assert (stats.examples, stats.truncated) == (3, 2)

  stats = inference.InferenceStats()
  outputs = inference.greedy_decode(model, params, prompts, max_new_tokens=6, max_length=20, stats=stats)
  for prompt, tokens in zip(prompts, outputs):
    assert tokens == _hf_greedy(hf_model, prompt[-14:], 6, eos_id=2)  # 20 - 6 prompt tokens kept.
  assert (stats.examples, stats.truncated) == (3, 2)


@pytest.mark.parametrize("share_prompts", [True, False])
def test_a_cut_prompt_keeps_its_bos_in_front_as_training_rows_do(hf_and_flax, share_prompts):
  hf_model, model, params = hf_and_flax
  prompts, options = _random_examples(8, [30, 8, 24], [[3, 2], [2], [1]])
  scores = inference.score_options(model, params, prompts, options, max_length=20, share_prompts=share_prompts,
                                   bos_id=2)
  for i, prompt in enumerate(prompts):
    for j, option in enumerate(options[i]):
      if share_prompts:  # </s>, then the prompt's last tokens: as many as the longest option leaves room for
        room = 20 - max(map(len, options[i])) + 1
        kept = (prompt if len(prompt) <= room else [2] + prompt[len(prompt) - room + 1:]) + option
      else:  # </s>, then the row's last 20 tokens (the first of them read, not scored)
        row = prompt + option
        kept = row if len(row) <= 21 else [2] + row[len(row) - 20:]
      assert scores[i][j] == pytest.approx(_hf_log_likelihood(hf_model, kept, len(option)), rel=1e-5, abs=1e-4)
  outputs = inference.greedy_decode(model, params, prompts, max_new_tokens=6, max_length=20, bos_id=2)
  for prompt, tokens in zip(prompts, outputs):
    assert tokens == _hf_greedy(hf_model, prompt if len(prompt) <= 14 else [2] + prompt[len(prompt) - 13:], 6, 2)
  # A prompt that does not start with the BOS is cut as before.
  unmarked = [p[1:] for p in prompts]
  assert inference.score_options(model, params, unmarked, options, max_length=20, share_prompts=share_prompts,
                                 bos_id=2) == inference.score_options(model, params, unmarked, options, max_length=20,
                                                                      share_prompts=share_prompts)


def test_the_whole_context_is_usable(hf_and_flax):
  hf_model, model, params = hf_and_flax
  context = SMALL["max_position_embeddings"]
  prompts, options = _random_examples(5, [context - 2], [[3]])
  scores = inference.score_options(model, params, prompts, options)
  assert scores[0][0] == pytest.approx(_hf_log_likelihood(hf_model, prompts[0] + options[0][0], 3), rel=1e-5)
  outputs = inference.greedy_decode(model, params, [prompts[0][:context - 5]], max_new_tokens=5)
  assert outputs[0] == _hf_greedy(hf_model, prompts[0][:context - 5], 5, eos_id=2)


def test_scorer_and_a_one_device_mesh_give_the_same_results(hf_and_flax):
  _, model, params = hf_and_flax
  prompts, options = _random_examples(6, [5, 12], [[2, 1], [4]])
  expected = inference.score_options(model, params, prompts, options)
  mesh = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  scorer = inference.Scorer(model.config, params, mesh=mesh, batch_size=4, progress=False)
  np.testing.assert_allclose(scorer.score_options(prompts, options)[0], expected[0], rtol=1e-6)
  assert scorer.greedy_decode(prompts, max_new_tokens=3) == inference.greedy_decode(model, params, prompts, 3)
  assert scorer.stats.examples == 4


def test_bad_input_is_named(hf_and_flax):
  _, model, params = hf_and_flax
  with pytest.raises(ValueError, match="prompt of example 1 is empty"):
    inference.score_options(model, params, [[2, 5], []], [[[3]], [[4]]])
  with pytest.raises(ValueError, match="option 1 of example 0 is empty"):
    inference.score_options(model, params, [[2, 5]], [[[3], []]])
  with pytest.raises(ValueError, match="2 prompts but 1 option lists"):
    inference.score_options(model, params, [[2], [2]], [[[3]]])
  with pytest.raises(ValueError, match="prompt of example 0 is empty"):
    inference.greedy_decode(model, params, [[]], max_new_tokens=3)
  with pytest.raises(ValueError, match="max_new_tokens must be in"):
    inference.greedy_decode(model, params, [[2]], max_new_tokens=SMALL["max_position_embeddings"])
  with pytest.raises(ValueError, match="max_length must be in"):
    inference.score_options(model, params, [[2]], [[[3]]], max_length=1000)


def test_length_buckets_and_batch_rows():
  assert batching.length_buckets(40) == (16, 32, 40)
  assert batching.length_buckets(2048)[-3:] == (512, 1024, 2048)
  assert batching.length_buckets(8) == (8,)
  assert batching.bucket_for(17, (16, 32, 40)) == 32
  assert batching.bucket_for(16, (16, 32, 40)) == 16
  with pytest.raises(ValueError, match="exceed"):
    batching.bucket_for(41, (16, 32, 40))
  assert [batching.padded_batch_rows(n, 32) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
  assert batching.padded_batch_rows(3, 32, multiple=8) == 8
  assert batching.padded_batch_rows(5, 6, multiple=1) == 6
  assert batching.round_batch_size(6, 4) == 8


def test_plan_batches_keeps_groups_together_longest_first():
  lengths = [5, 5, 9, 9, 9, 2, 30, 30]
  groups = [0, 0, 1, 1, 1, 2, 3, 3]
  plan = batching.plan_batches(lengths, groups, batch_size=4)
  assert sorted(i for batch in plan for i in batch) == list(range(8))
  assert all(len(batch) <= 4 for batch in plan)
  assert plan[0][:2] == [6, 7]  # The longest group first.
  for group in set(groups):
    rows = [i for i, g in enumerate(groups) if g == group]
    assert sum(any(i in batch for i in rows) for batch in plan) == 1  # Never split: each fits.
  big = batching.plan_batches([3] * 7, [0] * 7, batch_size=3)  # One group larger than a batch.
  assert big == [[0, 1, 2], [3, 4, 5], [6]]


def test_data_parallel_size_follows_the_rule_table():
  mesh = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  assert batching.data_parallel_size(None) == 1
  assert batching.data_parallel_size(mesh) == 1
  assert batching.data_parallel_size(mesh, rules=(("batch", None),)) == 1


_SHARDED_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from optiml_jax.evaluation import inference
from optiml_jax.models import opt, opt_config, partitioning
config = opt_config.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              ffn_dim=64, max_position_embeddings=40, init_std=0.3)
model = opt.OPT(config)
params = jax.jit(lambda r: model.init(r, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
    jax.random.PRNGKey(0))["params"]
rng = np.random.default_rng(0)
prompts = [[2] + rng.integers(3, 96, size=n).tolist() for n in (3, 9, 14, 5)]
options = [[rng.integers(3, 96, size=k).tolist() for k in (1, 3)] for _ in prompts]
mesh = partitioning.make_mesh(data=2, fsdp=1, tensor=2)
sharded = inference.place_params(model, params, mesh)
assert len(sharded["embed_tokens"]["embedding"].sharding.device_set) == 4
stats = inference.InferenceStats()
got = inference.score_options(model, sharded, prompts, options, batch_size=8, mesh=mesh, stats=stats)
want = inference.score_options(model, params, prompts, options, batch_size=8)
np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
assert inference.greedy_decode(model, sharded, prompts, 5, mesh=mesh, batch_size=3) == \
    inference.greedy_decode(model, params, prompts, 5, batch_size=4)  # 3 rounds up to 4 (2-way data).
print("OK", stats.examples)
"""


def test_sharded_on_a_data_and_tensor_mesh_equals_one_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK 4" in proc.stdout


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_bfloat16_inference_keeps_matmul_weights_in_bfloat16_with_the_same_outputs(family):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  config = registry.preset("tiny" if family == "opt" else "llama-tiny", dtype="bfloat16", dropout=0.0)
  model = registry.make_model(config)
  params = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
      jax.random.PRNGKey(0))["params"]
  placed = inference.place_params(model, jax.tree.map(np.asarray, params))  # float32 host arrays, as loaded
  names = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(placed)}
  assert all(dtype == jnp.bfloat16 for name, dtype in names.items() if name.endswith(("['kernel']", "['embedding']")))
  assert {dtype for name, dtype in names.items() if not name.endswith(("['kernel']", "['embedding']"))
         } == {jnp.dtype(jnp.float32)}  # biases and norms as they were
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, config.vocab_size, size=(2, 12)))
  run = jax.jit(lambda p: model.apply({"params": p}, tokens, enable_dropout=False))
  np.testing.assert_array_equal(np.asarray(run(placed)), np.asarray(run(params)))  # the model casts them anyway
  again = inference.place_params(model, placed)  # placing again: nothing to cast or copy
  assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(placed)))
  float32 = registry.make_model(registry.preset("tiny", dropout=0.0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(inference.place_params(float32, params)))
