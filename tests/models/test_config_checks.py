"""Both families refuse the same bad shared fields with an error naming the class and the field."""

from __future__ import annotations

import pytest

from optiml_jax.models import config_checks
from optiml_jax.models.llama_config import LlamaConfig
from optiml_jax.models.opt_config import OPTConfig

FAMILIES = {
    "OPTConfig": lambda **kw: OPTConfig.preset("tiny", **kw),
    "LlamaConfig": lambda **kw: LlamaConfig.preset("llama-tiny", **kw)
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("overrides, field", [
    (dict(dropout=1.0), "dropout: expected a rate in [0, 1)"),
    (dict(attention_dropout=-0.1), "attention_dropout: expected a rate"),
    (dict(remat_policy="everything"), "remat_policy: expected one of"),
    (dict(attention_impl="flash"), "attention_impl: expected one of"),
    (dict(dtype="float7"), "dtype: not a dtype"),
    (dict(param_dtype="int3"), "param_dtype: not a dtype"),
    (dict(attention_impl="cudnn", dtype="float32"), "attention_impl: 'cudnn' needs dtype bfloat16"),
    (dict(vocab_size=0), "vocab_size: expected a positive int"),
    (dict(hidden_size=True), "hidden_size: expected a positive int"),
])
def test_a_bad_shared_field_names_the_class_and_the_field(family, overrides, field):
  with pytest.raises(ValueError) as error:
    FAMILIES[family](**overrides)
  assert str(error.value).startswith(f"{family}.{field}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_documented_choice_is_accepted(family):
  for policy in config_checks.REMAT_POLICIES:
    assert FAMILIES[family](remat_policy=policy).remat_policy == policy
  for impl in config_checks.ATTENTION_IMPLEMENTATIONS:
    assert FAMILIES[family](attention_impl=impl, dtype="bfloat16").attention_impl == impl
