"""The checks every family's config runs on the fields both families share, with the values they accept.

Where it sits: in `optiml_jax.models`, called from `OPTConfig.__post_init__` and `LlamaConfig.__post_init__`
after their own checks: the sizes and shape rules differ per family, while the positive sizes, dropout rates,
recomputation policy, attention kernel and dtypes are read the same way by `models/layers.py` in both. Errors
name the config class and the field, as a gin binding or a config.json would spell it.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

# models/layers.py maps each to jax's policy
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "dots_with_no_batch_dims_and_attention")
ATTENTION_IMPLEMENTATIONS = (None, "xla", "cudnn")  # None: the model picks (models/layers.py)


def check_positive_ints(config: Any, names: Sequence[str]) -> None:
  """Each of `names` is an int (not a bool) above zero."""
  for name in names:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{type(config).__name__}.{name}: expected a positive int, got {value!r}")


def check_shared_fields(config: Any) -> None:
  """Dropout rates, `remat_policy`, `attention_impl`, `packed_attention_segments`, `dtype` and `param_dtype`, and
  cuDNN's dtype rule."""
  kind = type(config).__name__
  for name in ("dropout", "attention_dropout"):
    if not 0.0 <= getattr(config, name) < 1.0:
      raise ValueError(f"{kind}.{name}: expected a rate in [0, 1), got {getattr(config, name)!r}")
  if config.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"{kind}.remat_policy: expected one of {REMAT_POLICIES}, got {config.remat_policy!r}")
  if config.attention_impl not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"{kind}.attention_impl: expected one of {ATTENTION_IMPLEMENTATIONS}, "
                     f"got {config.attention_impl!r}")
  segments = config.packed_attention_segments
  if not isinstance(segments, int) or isinstance(segments, bool) or segments < 0:
    raise ValueError(f"{kind}.packed_attention_segments: expected an int >= 0 (0: a dense segment mask), "
                     f"got {segments!r}")
  for name in ("dtype", "param_dtype"):
    try:
      jnp.dtype(getattr(config, name))
    except TypeError as e:
      raise ValueError(f"{kind}.{name}: not a dtype: {getattr(config, name)!r}") from e
  if config.attention_impl == "cudnn" and jnp.dtype(config.dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"{kind}.attention_impl: 'cudnn' needs dtype bfloat16 or float16, got {config.dtype!r}")
