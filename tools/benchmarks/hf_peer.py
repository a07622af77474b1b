"""The Hugging Face peer of a model config, for the benchmarks in this folder (model.py, train.py, eval.py).

Where it sits: beside `timing.py`; the benchmarks import it as a sibling module. transformers builds the causal LM
of the config's own architecture from `config.to_hf()` (`AutoConfig.for_model` dispatches on its `model_type`:
OPTForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM), with random weights, so every family of
`models/registry.py` gets its peer without naming one. transformers is imported when called: train.py must not
start anything before it has set its memory limits.
"""

from __future__ import annotations

from typing import Any


def hf_config_of(config: Any) -> Any:
  """transformers' config of `config` (any family's config with `to_hf()`)."""
  import transformers  # pylint: disable=g-import-not-at-top

  return transformers.AutoConfig.for_model(**config.to_hf())


def hf_model_of(config: Any, **kwargs: Any) -> Any:
  """transformers' causal LM of `config` with random weights; `kwargs` go to `from_config` (attn_implementation,
  dtype)."""
  import transformers  # pylint: disable=g-import-not-at-top

  return transformers.AutoModelForCausalLM.from_config(hf_config_of(config), **kwargs)
