"""Packed rows through cuDNN's packed layout: the segment layout, when it is used, and the model around it.

cuDNN runs on GPUs only, so off a GPU the kernel is replaced by a reference that reads the layout as jax's API
documents it (lengths [batch, M], offsets [batch, M + 1] of each segment's first index, -1 past a row's last) and
writes NaN wherever it leaves a position undefined; the `gpu` test compares the real kernel with the dense mask.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax.models import llama
from optiml_jax.models import opt
from optiml_jax.models import packed_attention


def _layout(ids, max_segments):
  return jax.tree.map(np.asarray, packed_attention.segment_layout(jnp.asarray(ids, jnp.int32), max_segments))


def test_layout_lists_each_rows_segments_with_their_lengths_and_first_index():
  layout = _layout([[1, 1, 1, 2, 2, 0], [3, 3, 3, 3, 3, 3], [0, 0, 0, 0, 0, 0], [1, 1, 2, 2, 1, 0]], 3)
  np.testing.assert_array_equal(layout.lengths, [[3, 2, -1], [6, -1, -1], [-1, -1, -1], [2, 2, 1]])
  np.testing.assert_array_equal(layout.offsets, [[0, 3, -1, -1], [0, -1, -1, -1], [-1, -1, -1, -1], [0, 2, 4, -1]])
  np.testing.assert_array_equal(layout.valid, [[1, 1, 1, 1, 1, 0], [1] * 6, [0] * 6, [1, 1, 1, 1, 1, 0]])


def test_segments_past_the_bound_are_left_out_like_padding():
  layout = _layout([[1, 2, 3, 4, 5, 0]], 3)
  np.testing.assert_array_equal(layout.lengths, [[1, 1, 1]])
  np.testing.assert_array_equal(layout.offsets, [[0, 1, 2, -1]])
  np.testing.assert_array_equal(layout.valid, [[1, 1, 1, 0, 0, 0]])
  with pytest.raises(ValueError, match="max_segments"):
    packed_attention.segment_layout(jnp.ones((1, 4), jnp.int32), 0)


def test_the_layout_is_used_only_where_cudnns_packed_kernel_runs(monkeypatch):
  ids = jnp.ones((2, 8), jnp.int32)
  assert packed_attention.training_layout(ids, 4, "cudnn", None, False) is None  # this CPU: no Hopper GPU
  monkeypatch.setattr(packed_attention, "supported", lambda: True)
  assert isinstance(packed_attention.training_layout(ids, 4, "cudnn", None, False), packed_attention.SegmentLayout)
  for args in [(None, 4, "cudnn", None, False), (ids, 0, "cudnn", None, False), (ids, 4, "xla", None, False),
               (ids, 4, "cudnn", 16, False), (ids, 4, "cudnn", None, True)]:
    assert packed_attention.training_layout(*args) is None, args


class FakeDevice:

  def __init__(self, platform, compute_capability=None):
    self.platform, self.compute_capability = platform, compute_capability


def test_hopper_or_newer_runs_the_packed_layout(monkeypatch):
  for device, expected in [(FakeDevice("gpu", "9.0"), True), (FakeDevice("gpu", "10.0"), True),
                           (FakeDevice("gpu", "8.0"), False), (FakeDevice("cpu"), False)]:
    monkeypatch.setattr(jax, "devices", lambda d=device: [d])
    assert packed_attention.supported() is expected, device.compute_capability


def _reference_packed_kernel(query, key, value, lengths, offsets, scale):
  """cuDNN's packed attention as jax documents its arguments, NaN where it leaves a position undefined (forward
  and backward), so a caller that lets those through fails."""
  length = query.shape[1]
  index = jnp.arange(length)
  starts, ends = offsets[:, :-1], offsets[:, :-1] + lengths
  member = (starts[:, :, None] <= index[None, None, :]) & (index[None, None, :] < ends[:, :, None])
  member = member & (lengths[:, :, None] > 0)  # [batch, segment, position]
  segment = jnp.where(member.any(1), jnp.argmax(member, axis=1), -1)
  inside = segment >= 0
  same = (segment[:, :, None] == segment[:, None, :]) & inside[:, :, None]

  return _nan_outside(query, key, value, same[:, None], inside[:, :, None, None], scale)


@jax.custom_vjp
def _nan_outside(query, key, value, same, inside, scale):
  out = jax.nn.dot_product_attention(query, key, value, mask=same, is_causal=True, scale=scale)
  return jnp.where(inside, out, jnp.nan)


def _nan_outside_forward(query, key, value, same, inside, scale):
  return _nan_outside(query, key, value, same, inside, scale), (query, key, value, same, inside, scale)


def _nan_outside_backward(residuals, g):
  query, key, value, same, inside, scale = residuals
  _, vjp = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=same, is_causal=True, scale=scale), query,
                   key, value)
  grads = vjp(jnp.where(inside, g, 0))
  return (*(jnp.where(inside, d, jnp.nan) for d in grads), None, None, None)


_nan_outside.defvjp(_nan_outside_forward, _nan_outside_backward)


@pytest.fixture
def reference_kernel(monkeypatch):
  """The packed layout in use on this CPU: a Hopper GPU, cuDNN chosen, the reference kernel."""
  layout = packed_attention.training_layout
  monkeypatch.setattr(packed_attention, "supported", lambda: True)
  monkeypatch.setattr(packed_attention, "training_layout",
                      lambda ids, bound, implementation, window, dropout: layout(ids, bound, "cudnn", window, dropout))
  monkeypatch.setattr(packed_attention, "_cudnn_packed", _reference_packed_kernel)


def _packed_batch(vocab, rng):
  tokens = rng.integers(3, vocab, size=(3, 32))
  segments = np.array([[1] * 10 + [2] * 14 + [3] * 5 + [0] * 3, [1] * 32, [1] * 3 + [2] * 20 + [0] * 9])
  positions = np.concatenate([np.arange(n) for n in (10, 14, 5, 3, 32, 3, 20, 9)]).reshape(3, 32)
  targets = np.where(segments > 0, np.roll(tokens, -1, axis=1), 0)
  return tokens, targets, segments, positions


def _loss_logits_grads(model, params, batch):
  tokens, targets, segments, positions = map(jnp.asarray, batch)

  def loss(p):
    logits = model.apply({"params": p}, tokens, targets, segments, positions, enable_dropout=False)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return (ce * (segments > 0)).sum() / (segments > 0).sum(), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return value, np.asarray(logits)[np.asarray(segments) > 0], grads


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_the_packed_layout_gives_the_dense_masks_loss_logits_and_gradients(reference_kernel, family):
  del reference_kernel
  if family == "opt":
    config = opt.OPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                           max_position_embeddings=64, dropout=0.0)
    model_class = opt.OPT
  else:
    config = llama.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model_class = llama.Llama
  params = jax.jit(lambda rng: model_class(config).init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
      jax.random.PRNGKey(0))["params"]
  batch = _packed_batch(config.vocab_size, np.random.default_rng(3))
  dense = _loss_logits_grads(model_class(config), params, batch)
  packed = _loss_logits_grads(model_class(dataclasses.replace(config, packed_attention_segments=4)), params, batch)
  # The reference kernel's NaN outside the segments (forward and backward) must not reach the loss or the grads.
  assert np.isfinite(float(packed[0])) and all(np.isfinite(g).all() for g in jax.tree.leaves(packed[2]))
  np.testing.assert_allclose(float(packed[0]), float(dense[0]), rtol=1e-5)
  np.testing.assert_allclose(packed[1], dense[1], atol=2e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(packed[2]), jax.tree.leaves(dense[2])):
    np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)


def test_too_few_segments_in_the_bound_change_the_result(reference_kernel):
  # The first row has three segments: a bound of 2 leaves the third out, which the test above would notice.
  del reference_kernel
  config = opt.OPTConfig(vocab_size=256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, ffn_dim=128,
                         max_position_embeddings=64, dropout=0.0)
  params = jax.jit(lambda rng: opt.OPT(config).init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
      jax.random.PRNGKey(0))["params"]
  batch = _packed_batch(config.vocab_size, np.random.default_rng(3))
  dense = _loss_logits_grads(opt.OPT(config), params, batch)
  short = _loss_logits_grads(opt.OPT(dataclasses.replace(config, packed_attention_segments=2)), params, batch)
  assert np.abs(short[1] - dense[1]).max() > 1e-3


@pytest.mark.gpu  # cuDNN's packed layout: a Hopper GPU or newer.
@pytest.mark.parametrize("family", ["opt", "llama"])  # Llama: grouped-query attention through the kernel
def test_cudnns_packed_layout_matches_its_dense_mask_on_a_gpu(family):
  if not packed_attention.supported():
    pytest.skip("cuDNN's packed layout needs compute capability 9.0 (Hopper) or newer")
  if family == "opt":
    config = opt.OPTConfig(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                           max_position_embeddings=256, dropout=0.0, dtype="bfloat16", attention_impl="cudnn")
    model_class = opt.OPT
  else:
    config = llama.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               dtype="bfloat16", attention_impl="cudnn")
    model_class = llama.Llama
  params = jax.jit(lambda rng: model_class(config).init(rng, jnp.ones((1, 4), jnp.int32), enable_dropout=False))(
      jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(5)
  tokens = rng.integers(3, config.vocab_size, size=(4, 128))
  segments = np.array([[1] * 40 + [2] * 50 + [3] * 30 + [0] * 8, [1] * 128, [1] * 64 + [2] * 64,
                       [1] * 7 + [2] * 100 + [0] * 21])
  positions = np.concatenate([np.arange(n) for row in ([40, 50, 30, 8], [128], [64, 64], [7, 100, 21]) for n in row
                             ]).reshape(4, 128)
  targets = np.where(segments > 0, np.roll(tokens, -1, axis=1), 0)
  batch = (tokens, targets, segments, positions)
  dense = _loss_logits_grads(model_class(config), params, batch)
  packed = _loss_logits_grads(model_class(dataclasses.replace(config, packed_attention_segments=4)), params, batch)
  assert abs(float(packed[0]) - float(dense[0])) <= 1e-2 * abs(float(dense[0]))
  assert np.abs(packed[1] - dense[1]).max() <= 0.05 * np.abs(dense[1]).max()  # bf16: two kernels' rounding
  for a, b in zip(jax.tree.leaves(packed[2]), jax.tree.leaves(dense[2])):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.isfinite(a).all() and np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b) + 1e-6


def test_the_layout_traces_through_jaxs_cudnn_api(monkeypatch):
  """The call to jax's cuDNN module (a private one: the packed layout has no public API) takes our arguments:
  traced, not run, with its GPU checks answered as a Hopper GPU would, so a jax upgrade that moves it fails
  here. Saving attention's output (remat) keeps its forward out of the backward pass."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
  monkeypatch.setattr(cudnn, "is_cuda_compute_capability_equal", lambda capability: False)
  monkeypatch.setattr(packed_attention, "supported", lambda: True)
  config = opt.OPTConfig(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=2, ffn_dim=256,
                         max_position_embeddings=64, dropout=0.0, dtype="bfloat16", attention_impl="cudnn",
                         packed_attention_segments=4)
  tokens = jnp.ones((2, 64), jnp.int32)
  segments = jnp.asarray([[1] * 20 + [2] * 30 + [0] * 14, [1] * 64], jnp.int32)

  def traced(remat_policy):
    model = opt.OPT(dataclasses.replace(config, remat_policy=remat_policy))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, enable_dropout=False))["params"]
    loss = lambda p: model.apply({"params": p}, tokens, tokens, segments, enable_dropout=False).sum()
    return str(jax.make_jaxpr(jax.grad(loss))(params))

  saving = traced("dots_with_no_batch_dims_and_attention")
  assert saving.count("dot_product_attention_fwd") == 1 and saving.count("dot_product_attention_bwd") == 1
  assert traced("dots").count("dot_product_attention_fwd") == 2  # recomputed in the backward pass
