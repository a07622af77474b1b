"""Our model modules, feature converter, optimizer and axis rules in the shapes t5x's `DecoderOnlyModel` wants.

Where it sits: on the t5x path only. The gin files in `gin/t5x/` import this module (gin dynamic registration)
and bind t5x's model to `DecoderOnlyModel`, `DecoderForT5x`, `FeatureConverter`, `optimizer()` and `decode`, and
t5x's `PjitPartitioner` to `logical_axis_rules()`. It imports t5x, so nothing else in the package imports it.
Every model family of `models/registry.py` (OPT, Llama, Mistral, Qwen2, SmolLM2) goes through the same pieces.

What each piece adapts:
  model_config_for_t5x  `registry.preset(preset, **overrides)`: a config of any family ("opt-1.3b",
                    "smollm2-135m", "llama-3.1-8b"); gin binds the overrides (dtype, dropout, scan_layers, ...).
  DecoderForT5x     the family's module (`registry.make_model(config)`) with the same parameter tree and decode
                    cache (it shares the wrapper's scope), token ids cast to int32, float32 logits when called
                    without dropout (scoring, decoding, evaluation: as `evaluation/` scores), and the `scan_layers`
                    attribute t5x reads to find the layer axis of the decode cache (`cache_offset`). The call
                    signature and the decoding contract (`decode`, `prefill`, `prefill_lengths`, per-example
                    cache index) are the module's own.
  DecoderOnlyModel  t5x's `DecoderOnlyModel`, except that a prompt's length is read from
                    `decoder_causal_attention` instead of counted as its non-zero ids: id 0 is a real token in
                    Llama-family vocabularies (Llama 3's "!", SmolLM2's <|endoftext|>). Causal only: it refuses
                    `inputs_bidirectional_attention=True` (t5x's prefix LM).
  FeatureConverter  `data.packing.OptimlFeatureConverter` (rows that start with the tokenizer's BOS, or with
                    the prompt when it adds none; target-only loss; whole-example packing) with the constructor
                    arguments t5x passes and, unpacked, the `decoder_causal_attention` feature `predict_batch`
                    needs to find the prompt:
                      inputs [7, 8], targets [3, 2]  ->  decoder_input_tokens     [2, 7, 8, 3, 0]
                                                         decoder_target_tokens    [7, 8, 3, 2, 0]
                                                         decoder_loss_weights     [0, 0, 1, 1, 0]
                                                         decoder_causal_attention [1, 1, 1, 0, 0]
                    (BOS and the prompt, plus the position whose output is the first target token: t5x's
                    convention). `predict_batch` then prefills slots 0..1, feeds token 8 at index 2 and
                    writes the generated tokens after it.
  optimizer         the recipe's optax chain (`trainer.optimizer.make_optimizer`) in t5x's `OptaxWrapper`;
                    `learning_rate_fn` is the same schedule, for t5x's learning-rate summaries.
  logical_axis_rules  our one rule table (`models.partitioning`) with its mesh axes renamed to t5x's
                    ("data", "model"): data and fsdp -> "data", tensor -> "model".
  decode            t5x's sampler (greedy by default) with `max_decode_steps` (and its
                    `max_decode_steps_hard_limit`) counted as new tokens, and the scanned decode cache made
                    batch-major when t5x must expand it for several decodes per example.

`OPTForT5x` and `opt_config_for_t5x` are the names gin files written for OPT alone bind; they are the same as
`DecoderForT5x` and `model_config_for_t5x`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import seqio
from t5x import decoding as t5x_decoding
from t5x import models as t5x_models
from t5x import optimizers as t5x_optimizers
import tensorflow as tf

from optiml_jax.data import packing
from optiml_jax.data import special_tokens
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.models import partitioning
from optiml_jax.models import registry
from optiml_jax.trainer import optimizer as optimizer_lib

# Our mesh axes -> t5x's mesh axes (t5x builds a ("data", "model") mesh).
T5X_MESH_AXES = {"data": "data", "fsdp": "data", "tensor": "model"}
CAUSAL_ATTENTION = "decoder_causal_attention"
HARD_LIMIT = "max_decode_steps_hard_limit"  # t5x's sampler argument that clips max_decode_steps

# ----------------------------------------------------------------------------------------------------------
# The module.
# ----------------------------------------------------------------------------------------------------------


def model_config_for_t5x(preset: str = "opt-1.3b", **overrides: Any) -> registry.ModelConfig:
  """`registry.preset(preset, **overrides)`: a preset of any family; gin binds the overrides (dtype, dropout, ...).

  Raises:
    ValueError: an unknown preset (naming the known ones), or a field its config class does not have (naming the
      class and its fields).
  """
  try:
    return registry.preset(preset, **overrides)
  except ValueError as e:
    raise ValueError(f"model_config_for_t5x.{e}") from None


def opt_config_for_t5x(preset: str = "opt-1.3b", **overrides: Any) -> registry.ModelConfig:
  """`model_config_for_t5x`, under the name gin files written for OPT alone bind."""
  return model_config_for_t5x(preset, **overrides)


class DecoderForT5x(nn.Module):
  """The module of `config`'s family as t5x's `DecoderOnlyModel.module`: the same parameters, call signature
  and decode cache (`registry.make_model(config)` shares this module's scope, so nothing is nested under it).

  t5x's `t5x.eval` initializes the module with float32 token ids (`get_initial_variables` without input
  types), so token ids are cast to int32 here.

  Attributes:
    config: a config of any family (`model_config_for_t5x`).
  """

  config: Any

  def setup(self):
    self.decoder = registry.make_model(self.config)
    nn.share_scope(self, self.decoder)

  def __call__(self, decoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array | None = None, *args: Any,
               **kwargs: Any) -> jax.Array:
    tokens = jnp.asarray(decoder_input_tokens).astype(jnp.int32)
    targets = None if decoder_target_tokens is None else jnp.asarray(decoder_target_tokens).astype(jnp.int32)
    # t5x calls without dropout only to score, decode or evaluate: the LM head then returns its float32 sums,
    # as our own inference does (a bfloat16 rounding makes ties for greedy's argmax); training keeps its head.
    kwargs.setdefault("float32_logits", not kwargs.get("enable_dropout", True))
    return self.decoder(tokens, targets, *args, **kwargs)

  @property
  def scan_layers(self) -> bool:
    """Read by `DecoderOnlyModel.predict_batch`: scanned layers put the cache's batch axis at 1."""
    return bool(self.config.scan_layers)


class OPTForT5x(DecoderForT5x):
  """`DecoderForT5x`, under the name gin files written for OPT alone bind (any family's config works)."""


class DecoderOnlyModel(t5x_models.DecoderOnlyModel):
  """t5x's `DecoderOnlyModel` with the prompt's length read from `decoder_causal_attention`.

  t5x counts a prompt's tokens as its non-zero ids after position 0; in Llama-family vocabularies id 0 is a real
  token, so a prompt holding it would be cut short. `decoder_causal_attention` marks BOS (when the tokenizer adds
  one) and the prompt plus the position that predicts the first target: its last 1 is the last prompt token,
  the index decoding starts from, whatever the ids are.

  It also refuses, before anything compiles, a vocabulary with ids beyond the model's embedding rows, and t5x's
  prefix LM (`inputs_bidirectional_attention=True`): every family here is a causal LM, whose modules take
  `decoder_causal_attention` and ignore it, so the flag would change nothing.

  Raises:
    ValueError: the module's `config.vocab_size` does not cover `vocabulary` (naming both sizes), or
      `inputs_bidirectional_attention` is True.
  """

  def __init__(self, module: nn.Module, vocabulary: seqio.Vocabulary, *args: Any, **kwargs: Any):
    config = getattr(module, "config", None)
    arguments = inspect.signature(t5x_models.DecoderOnlyModel.__init__).bind(self, module, vocabulary, *args,
                                                                             **kwargs).arguments
    if arguments.get("inputs_bidirectional_attention"):
      family = getattr(config, "family", type(module).__name__)
      raise ValueError(f"DecoderOnlyModel: inputs_bidirectional_attention=True (t5x's prefix LM) is not supported: "
                       f"{family} models are causal only, every position attending to the positions before it, "
                       "prompt included (decoder_causal_attention only marks the prompt here); bind it to False")
    if config is not None:
      vocab_lib.check_vocab_covers(config.vocab_size, vocabulary,
                                   source=f"t5x model {type(module).__name__} (preset config)")
    super().__init__(module, vocabulary, *args, **kwargs)

  def _compute_kv_cache(self, params: Any, inputs: jax.Array,
                        causal_attention_mask: jax.Array) -> tuple[Any, jax.Array]:
    """(the cache prefilled with every prompt position but the last, the index of the last prompt token)."""
    last_prompt_index = jnp.sum(causal_attention_mask != 0, axis=-1).astype(jnp.int32) - 1
    _, empty = self.module.apply({"params": params}, jnp.ones_like(inputs), jnp.ones_like(inputs), enable_dropout=False,
                                 decode=True, mutable=["cache"])
    # Prefill reads the prompt positions (decoder_target_tokens = the mask: t5x's convention) and caches all but
    # the last one, which decoding feeds first to get the logits of the first new token.
    variables = {"params": params, "cache": empty["cache"]}
    causal = self._get_decoder_causal_attention({"decoder_causal_attention": causal_attention_mask})
    _, filled = self.module.apply(variables, decoder_input_tokens=inputs, decoder_target_tokens=causal_attention_mask,
                                  decoder_causal_attention=causal, enable_dropout=False, prefill=True,
                                  prefill_lengths=last_prompt_index, mutable=["cache"])
    return filled["cache"], last_prompt_index


# ----------------------------------------------------------------------------------------------------------
# Features.
# ----------------------------------------------------------------------------------------------------------


def causal_attention_from_weights(loss_weights: tf.Tensor) -> tf.Tensor:
  """[..., length] int32: 1 up to and including the first position with loss weight, 0 after it.

  On an unpacked row that is BOS and the prompt plus the position that predicts the first target token,
  t5x's `decoder_causal_attention`. A row without any loss weight gives 1 at position 0 only.
  """
  weighted = tf.cast(loss_weights > 0, tf.int32)
  first = tf.argmax(weighted, axis=-1, output_type=tf.int32)
  positions = tf.range(tf.shape(loss_weights)[-1], dtype=tf.int32)
  return tf.cast(positions <= first[..., None], tf.int32)


class FeatureConverter(packing.OptimlFeatureConverter):
  """`OptimlFeatureConverter` with t5x's constructor arguments; unpacked rows add `decoder_causal_attention`.

  Args:
    pack: pack whole examples (training) or one example per row (evaluation, inference).
    use_custom_packing_ops: accepted because t5x passes it; our packer never uses seqio's TF ops.
    apply_length_check: seqio's length check.
    bos_id: the token before each example: the tokenizer's BOS (OPT's </s>, 2: `special_tokens.OPT`), or None
      where the tokenizer adds none (the row then starts with the prompt).
    max_open_rows: rows the packer keeps open (see `packing.pack_examples`).
    max_segments_per_row: at most this many examples per packed row (see `packing.OptimlFeatureConverter`);
      None: as many as fit.
    eos_id: the token that ends every target, kept when a target is cut to its length (OPT's </s>, 2).
    vocabulary: when given (gin/t5x/models/decoder_base.gin binds the model's), its `bos_id` and `eos_id` replace
      the two above: the BOS its tokenizer adds (None: none) and its EOS (`vocab.HFVocabulary`).
  """

  def __init__(self, pack: bool = True, use_custom_packing_ops: bool = False, apply_length_check: bool = True,
               bos_id: int | None = special_tokens.OPT.bos_id, max_open_rows: int = 8,
               eos_id: int = special_tokens.OPT_EOS_ID, vocabulary: seqio.Vocabulary | None = None,
               max_segments_per_row: int | None = None):
    del use_custom_packing_ops  # Packing is `packing.pack_examples`, in Python.
    if vocabulary is not None:
      bos_id, eos_id = vocabulary.bos_id, vocabulary.eos_id
    super().__init__(pack=pack, bos_id=bos_id, max_open_rows=max_open_rows, apply_length_check=apply_length_check,
                     eos_id=eos_id, max_segments_per_row=max_segments_per_row)
    if not pack:  # seqio checks the output against MODEL_FEATURES exactly.
      self.MODEL_FEATURES = {
          **packing.OptimlFeatureConverter.MODEL_FEATURES, CAUSAL_ATTENTION:
              seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
      }

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    if not self.pack:
      lengths[CAUSAL_ATTENTION] = lengths["decoder_input_tokens"]
    return lengths

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    ds = super()._convert_features(ds, task_feature_lengths)
    if self.pack:
      return ds
    return ds.map(lambda ex: {
        **ex, CAUSAL_ATTENTION: causal_attention_from_weights(ex["decoder_loss_weights"])
    }, num_parallel_calls=tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------------------------------------
# Optimizer and partitioning.
# ----------------------------------------------------------------------------------------------------------


def optimizer(total_steps: int, learning_rate: float = 5e-5, warmup_steps: int = 60, end_learning_rate: float = 0.0,
              b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.1,
              decay_matrices_only: bool = False, clip_norm: float | None = 1.0) -> t5x_optimizers.OptaxWrapper:
  """The recipe's AdamW + clipping + warmup/linear decay (`trainer.optimizer.make_optimizer`) for t5x.

  The schedule lives inside the optax chain, so t5x's `learning_rate_fn` does not drive it: bind
  `Trainer.learning_rate_fn` to `learning_rate_fn(...)` with the same figures to log the rate applied.
  """
  tx, _ = optimizer_lib.make_optimizer(learning_rate=learning_rate, warmup_steps=warmup_steps, total_steps=total_steps,
                                       end_learning_rate=end_learning_rate, b1=b1, b2=b2, eps=eps,
                                       weight_decay=weight_decay, decay_matrices_only=decay_matrices_only,
                                       clip_norm=clip_norm)
  return t5x_optimizers.OptaxWrapper(tx)


def learning_rate_fn(total_steps: int, learning_rate: float = 5e-5, warmup_steps: int = 60,
                     end_learning_rate: float = 0.0) -> Callable[[Any], Any]:
  """The schedule of `optimizer(...)` as t5x's `learning_rate_fn` (step -> rate), for its summaries."""
  return optimizer_lib.warmup_linear_decay(learning_rate, warmup_steps, total_steps, end_learning_rate)


def logical_axis_rules(
    fsdp: bool = True, rules: partitioning.LogicalRules = partitioning.LOGICAL_AXIS_RULES
) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Our rule table on t5x's ("data", "model") mesh.

  "data" and "fsdp" both become "data", "tensor" becomes "model". With `fsdp` the weights' "embed" axis
  is split over "data" (ZeRO-3, t5x's `parameter_partitioning_dims=2`); without it, weights are only split
  over "model" and replicated over "data". Activations keep "embed" whole either way ("batch" takes "data").
  """
  mapping = dict(T5X_MESH_AXES, fsdp="data" if fsdp else None)
  out = []
  for name, mesh_axes in rules:
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    unknown = [a for a in axes if a not in mapping]
    if unknown:
      raise ValueError(f"logical axis {name!r}: mesh axes {unknown} have no t5x counterpart "
                       f"(known: {sorted(mapping)})")
    targets = [mapping[a] for a in axes]
    renamed = tuple(dict.fromkeys(t for t in targets if t is not None))
    out.append((name, renamed[0] if len(renamed) == 1 else (renamed or None)))
  return tuple(out)


# ----------------------------------------------------------------------------------------------------------
# Decoding.
# ----------------------------------------------------------------------------------------------------------


def _is_index(path: tuple[Any, ...]) -> bool:
  return getattr(path[-1], "key", None) == "cache_index" and len(path) == 1


def swap_layer_axis(cache: Any) -> Any:
  """Swaps the first two axes of every stacked-layer cache array (layer-major <-> batch-major).

  The top-level `cache_index` [batch] is not stacked and stays as it is.
  """
  return jax.tree_util.tree_map_with_path(lambda path, x: x if _is_index(path) else jnp.swapaxes(x, 0, 1), cache)


def sampler_decode_steps(inputs: jax.Array, initial_index: jax.Array | None, new_tokens: int,
                         num_decodes: int = 1) -> jax.Array | int:
  """The `max_decode_steps` to give t5x's sampler for `new_tokens` new tokens per example.

  The sampler ends an example at position (its non-zero ids in `inputs`) + max_decode_steps, assuming a BOS 0
  before the prompt. Here a row starts with the tokenizer's BOS or with the prompt itself, and the prompt may hold
  id 0 (a real token in Llama-family vocabularies), so the count is replaced by the index of the last prompt
  token, `initial_index`: per example, initial_index + new_tokens - non-zero ids (t5x's sampler does not
  expand this argument for several decodes per example, so it is expanded here). Without `initial_index` (no
  prefill), one step fewer than `new_tokens`, for the row's non-zero first token. The sampler stops every row at
  its length.
  """
  if initial_index is None:
    return min(new_tokens - 1, inputs.shape[1])
  steps = jnp.asarray(initial_index, jnp.int32) + new_tokens - jnp.sum(inputs != 0, axis=-1).astype(jnp.int32)
  return t5x_decoding.flat_batch_beam_expand(steps, num_decodes) if num_decodes > 1 else steps


def _sampler_hard_limit(sampler: Callable[..., Any]) -> Any:
  """The `max_decode_steps_hard_limit` bound on the sampler itself (a `functools.partial` keyword, or a gin binding
  such as `decoding.temperature_sample.max_decode_steps_hard_limit`), or None."""
  if isinstance(sampler, functools.partial):
    if HARD_LIMIT in sampler.keywords:
      return sampler.keywords[HARD_LIMIT]
    sampler = sampler.func
  try:
    return gin.get_bindings(sampler).get(HARD_LIMIT)
  except ValueError:  # not a gin configurable
    return None


def decode(*, inputs: jax.Array, cache: Any, tokens_to_logits: Callable[..., Any], eos_id: int, num_decodes: int = 1,
           cache_offset: int = 0, initial_index: jax.Array | None = None, max_decode_steps: int | None = None,
           sampler: Callable[..., Any] = t5x_decoding.temperature_sample, **kwargs: Any) -> Any:
  """t5x's `decode_fn` for our models: `sampler` (default `temperature_sample`; gin/t5x/ sets temperature 0, greedy).

  `max_decode_steps` (bound here in gin, or passed in t5x's `decoder_params`) is the number of new tokens
  per example, at most what the row (inputs + targets) holds; None decodes until the row is full.
  `max_decode_steps_hard_limit` (in `kwargs`: bound here or passed in `decoder_params`; or bound on the sampler)
  caps it as in t5x: min(max_decode_steps, limit) new tokens when both are set and the limit is > 0. It is applied
  here, and the sampler is given none, since the sampler would clip its own count of steps (rewritten here by
  `sampler_decode_steps`), not the new tokens. `initial_index` (t5x's `predict_batch` passes it) is each
  example's last prompt position.

  t5x expands the cache along axis `cache_offset` to make several decodes per example; our scanned cache
  holds stacked layers [layers, batch, ...] beside an unstacked `cache_index` [batch], so for
  `num_decodes > 1` the stacked arrays are made batch-major for the sampler and layer-major again for
  each model step. One decode per example (the recipe's greedy decoding) passes straight through.
  """
  if initial_index is not None:
    kwargs["initial_index"] = initial_index
  hard_limit = kwargs.pop(HARD_LIMIT, None)
  bound_on_sampler = _sampler_hard_limit(sampler)
  if bound_on_sampler is not None:
    kwargs[HARD_LIMIT] = None  # applied below, in new tokens
    hard_limit = bound_on_sampler if hard_limit is None else hard_limit  # decoder_params win, as in t5x
  if max_decode_steps is not None:
    if max_decode_steps < 1:
      raise ValueError(f"decode: max_decode_steps must be >= 1, got {max_decode_steps}")
    if hard_limit is not None and hard_limit > 0:
      max_decode_steps = min(max_decode_steps, hard_limit)
    kwargs["max_decode_steps"] = sampler_decode_steps(inputs, initial_index, max_decode_steps, num_decodes)
  if num_decodes == 1 or cache_offset == 0:
    return sampler(inputs=inputs, cache=cache, tokens_to_logits=tokens_to_logits, eos_id=eos_id,
                   num_decodes=num_decodes, cache_offset=cache_offset, **kwargs)

  def batch_major_step(state):
    logits, new_cache = tokens_to_logits(state.replace(cache=swap_layer_axis(state.cache)))
    return logits, swap_layer_axis(new_cache)

  return sampler(inputs=inputs, cache=swap_layer_axis(cache), tokens_to_logits=batch_major_step, eos_id=eos_id,
                 num_decodes=num_decodes, cache_offset=0, **kwargs)
