"""Our OPT module, feature converter, optimizer and axis rules in the shapes `t5x.models.DecoderOnlyModel` wants.

Where it sits: on the t5x path only. The gin files in `gin/t5x/` import this module (gin dynamic registration)
and bind `t5x.models.DecoderOnlyModel` to `OPTForT5x`, `FeatureConverter`, `optimizer()` and `decode`, and
t5x's `PjitPartitioner` to `logical_axis_rules()`. It imports t5x, so nothing else in the package imports it.

What each piece adapts:
  OPTForT5x         `models.opt.OPT` plus the `scan_layers` attribute t5x reads to find the layer axis of the
                    decode cache (`cache_offset`). The call signature and the decoding contract (`decode`,
                    `prefill`, `prefill_lengths`, per-example cache index) are the module's own.
  FeatureConverter  `data.packing.OptimlFeatureConverter` (BOS-prefixed rows, target-only loss, whole-example
                    packing) with the constructor arguments t5x passes and, unpacked, the
                    `decoder_causal_attention` feature `predict_batch` needs to find the prompt:
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
  decode            t5x's sampler (greedy by default) with the scanned decode cache made batch-major when
                    t5x must expand it for several decodes per example.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import seqio
from t5x import decoding as t5x_decoding
from t5x import optimizers as t5x_optimizers
import tensorflow as tf

from optiml_jax.data import packing
from optiml_jax.data import special_tokens
from optiml_jax.models import opt as opt_lib
from optiml_jax.models import opt_config
from optiml_jax.models import partitioning
from optiml_jax.trainer import optimizer as optimizer_lib

# Our mesh axes -> t5x's mesh axes (t5x builds a ("data", "model") mesh).
T5X_MESH_AXES = {"data": "data", "fsdp": "data", "tensor": "model"}
CAUSAL_ATTENTION = "decoder_causal_attention"

# ----------------------------------------------------------------------------------------------------------
# The module.
# ----------------------------------------------------------------------------------------------------------


def opt_config_for_t5x(preset: str = "opt-1.3b", **overrides: Any) -> opt_config.OPTConfig:
  """`OPTConfig.preset(preset, **overrides)`; gin binds the overrides (dtype, scan_layers, dropout, ...)."""
  return opt_config.OPTConfig.preset(preset, **overrides)


class OPTForT5x(opt_lib.OPT):
  """`OPT` as t5x's `DecoderOnlyModel.module`: the same parameters, call signature and decode cache.

  t5x's `t5x.eval` initializes the module with float32 token ids (`get_initial_variables` without input
  types), so token ids are cast to int32 here.
  """

  def __call__(self, decoder_input_tokens: jax.Array, decoder_target_tokens: jax.Array | None = None, *args: Any,
               **kwargs: Any) -> jax.Array:
    tokens = jnp.asarray(decoder_input_tokens).astype(jnp.int32)
    targets = None if decoder_target_tokens is None else jnp.asarray(decoder_target_tokens).astype(jnp.int32)
    return super().__call__(tokens, targets, *args, **kwargs)

  @property
  def scan_layers(self) -> bool:
    """Read by `DecoderOnlyModel.predict_batch`: scanned layers put the cache's batch axis at 1."""
    return self.config.scan_layers


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
    bos_id: the token before each example (OPT's </s>, 2: `special_tokens.OPT`).
    max_open_rows: rows the packer keeps open (see `packing.pack_examples`).
  """

  def __init__(self, pack: bool = True, use_custom_packing_ops: bool = False, apply_length_check: bool = True,
               bos_id: int = special_tokens.OPT.bos_id, max_open_rows: int = 8):
    del use_custom_packing_ops  # Packing is `packing.pack_examples`, in Python.
    super().__init__(pack=pack, bos_id=bos_id, max_open_rows=max_open_rows, apply_length_check=apply_length_check)
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


def decode(*, inputs: jax.Array, cache: Any, tokens_to_logits: Callable[..., Any], eos_id: int, num_decodes: int = 1,
           cache_offset: int = 0, max_decode_steps: int | None = None,
           sampler: Callable[..., Any] = t5x_decoding.temperature_sample, **kwargs: Any) -> Any:
  """t5x's `decode_fn` for OPT: `sampler` (default `temperature_sample`; gin/t5x/ sets temperature 0, greedy).

  `max_decode_steps` (bound here in gin, or passed in t5x's `decoder_params`) is the number of new tokens
  per example, at most what the row (inputs + targets) holds; None decodes until the row is full.

  t5x expands the cache along axis `cache_offset` to make several decodes per example; our scanned cache
  holds stacked layers [layers, batch, ...] beside an unstacked `cache_index` [batch], so for
  `num_decodes > 1` the stacked arrays are made batch-major for the sampler and layer-major again for
  each model step. One decode per example (the recipe's greedy decoding) passes straight through.
  """
  if max_decode_steps is not None:
    if max_decode_steps < 1:
      raise ValueError(f"decode: max_decode_steps must be >= 1, got {max_decode_steps}")
    # t5x's samplers count a prompt's tokens as its non-zero ids, assuming BOS 0; OPT's BOS is 2 and
    # counts, so one step fewer gives `max_decode_steps` new tokens. No row holds more than its length
    # (t5x refuses a larger figure).
    kwargs["max_decode_steps"] = min(max_decode_steps - 1, inputs.shape[1])
  if num_decodes == 1 or cache_offset == 0:
    return sampler(inputs=inputs, cache=cache, tokens_to_logits=tokens_to_logits, eos_id=eos_id,
                   num_decodes=num_decodes, cache_offset=cache_offset, **kwargs)

  def batch_major_step(state):
    logits, new_cache = tokens_to_logits(state.replace(cache=swap_layer_axis(state.cache)))
    return logits, swap_layer_axis(new_cache)

  return sampler(inputs=inputs, cache=swap_layer_axis(cache), tokens_to_logits=batch_major_step, eos_id=eos_id,
                 num_decodes=num_decodes, cache_offset=0, **kwargs)
