"""Everything the entry points bind with gin, registered once, and the training config built from the bindings.

Where it sits: between the gin files (gin/) and the library. The entry points (`optiml_jax.train`,
`optiml_jax.eval`, `optiml_jax.plan`) import this module, so importing several of them in one process
registers each configurable once; library modules never import gin. Registered here:
  model_config          a model config of any family from a preset with fields replaced (`ModelArgs.config`,
                        `evaluate.model`; bound in gin/models/*.gin): `model_config.preset = 'smollm2-135m'`;
  opt_model             the same for OPT presets with OPT's field names listed (gin files written before the
                        Llama family came, with `ModelArgs.config = @opt_model()`; `model_config` takes the
                        same fields, and is what every shipped gin file refers to);
  DataArgs, ModelArgs, OptimizerArgs, PartitioningArgs, CheckpointArgs, LoggingArgs, RunArgs
                        the groups of `trainer.config.TrainConfig`, under their class names.

`configure_training(gin_files, bindings)` parses the files, checks that every required value is bound (every
missing macro or field in one message, before anything is built), then builds each group (each checks its own
fields) and the TrainConfig (which checks what spans groups), then checks that every configurable bound was called
while building it (`check_bindings_are_read`: gin drops the bindings of a configurable nothing refers to, such as
`opt_model.*` when ModelArgs.config is `@model_config()`). Every failure is a GinConfigError whose message
names the binding, and the macro behind it when there is one.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import gin

from optiml_jax import gin_utils
from optiml_jax.models import opt_config
from optiml_jax.models import registry
from optiml_jax.trainer import config as config_lib

# Macros a training gin file must set (t5x's names); CATALOG_DIR and INITIAL_CHECKPOINT_PATH are required where
# a run file says so (`%gin.REQUIRED`), which check_training_bindings reports too.
TRAIN_REQUIRED_MACROS = ("MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "BATCH_SIZE")


@gin.configurable
def model_config(preset: str = "tiny", **overrides: Any) -> registry.ModelConfig:
  """The config of a preset of any family (`models/registry.py`: "opt-1.3b", "smollm2-135m", "llama-3.1-8b", ...)
  with fields of its config class replaced, e.g. `model_config.dtype = 'bfloat16'`.

  Raises:
    ValueError: an unknown preset (naming the known ones), or a field the preset's config class does not have
      (naming the class and its fields).
  """
  try:
    return registry.preset(preset, **overrides)
  except ValueError as e:
    raise ValueError(f"model_config.{e}") from None


@gin.configurable
def opt_model(preset: str = "tiny", dtype: str = "float32", param_dtype: str = "float32", scan_layers: bool = True,
              remat_policy: str = "none", dropout: float | None = None, attention_dropout: float | None = None,
              attention_impl: str | None = None, max_position_embeddings: int | None = None,
              num_hidden_layers: int | None = None, hidden_size: int | None = None,
              num_attention_heads: int | None = None, ffn_dim: int | None = None,
              vocab_size: int | None = None) -> opt_config.OPTConfig:
  """An OPTConfig from a preset ("tiny", "opt-125m" ... "opt-175b") with the given fields replaced."""
  overrides = dict(dtype=dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat_policy=remat_policy,
                   attention_impl=attention_impl)
  optional = dict(dropout=dropout, attention_dropout=attention_dropout, max_position_embeddings=max_position_embeddings,
                  num_hidden_layers=num_hidden_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                  ffn_dim=ffn_dim, vocab_size=vocab_size)
  overrides.update({k: v for k, v in optional.items() if v is not None})
  return opt_config.OPTConfig.preset(preset, **overrides)


# The TrainConfig groups: (TrainConfig field, class, its gin configurable). Calling the configurable builds the
# group from the bindings `<ClassName>.<field> = ...` (an instance of the class itself, not of a gin subclass).
_GROUPS = tuple((field, cls, gin.external_configurable(cls, name=cls.__name__)) for field, cls in config_lib.GROUPS)


def training_binding_problems(required_macros: Sequence[str] = TRAIN_REQUIRED_MACROS) -> list[str]:
  """Every required macro or group field the parsed gin config leaves unset, one line each (nothing is built)."""
  problems = [f"macro {m} is required: set it with --gin.{m}=VALUE" for m in gin_utils.missing_macros(required_macros)]
  for _, cls, _ in _GROUPS:
    problems += [
        p for p in gin_utils.binding_problems(cls.__name__, cls) if not any(f"macro {m}:" in p for m in required_macros)
    ]
  return problems


def check_training_bindings(required_macros: Sequence[str] = TRAIN_REQUIRED_MACROS) -> None:
  """Raises GinConfigError listing everything `training_binding_problems` finds."""
  problems = training_binding_problems(required_macros)
  if problems:
    raise gin_utils.GinConfigError("gin configuration incomplete:\n  " + "\n  ".join(problems))


def _macro_behind(message: str) -> str:
  """' (set by the macro X)' when the field a message starts with is bound to macro X, else ''."""
  match = re.match(r"(\w+)\.(\w+)", message)
  if not match:
    return ""
  try:
    bound = gin.query_parameter(match.group(0))
  except ValueError:
    return ""
  if isinstance(bound, gin.config.ConfigurableReference) and bound.configurable.wrapped is gin.config.macro:
    return f" (set by the macro {'/'.join(bound.scopes)})"
  return ""


def train_config() -> config_lib.TrainConfig:
  """The TrainConfig the parsed gin config describes. Raises GinConfigError naming the binding."""
  try:
    groups = {field: configurable() for field, _, configurable in _GROUPS}
    return config_lib.TrainConfig(**groups)
  except config_lib.ConfigError as e:
    message = str(e).split("\n")[0]  # gin appends the configurable it was calling: the field already says it
    raise gin_utils.GinConfigError(message + _macro_behind(message)) from e
  except (ValueError, TypeError) as e:  # the model config's own checks, an unknown preset, ...
    raise gin_utils.GinConfigError(f"gin configuration: {e}") from e


# Configurables of the model config: a binding of the one ModelArgs.config does not refer to is named with the other.
MODEL_CONFIGURABLES = ("model_config", "opt_model")


def _short(selector: str) -> str:
  return selector.rsplit(".", 1)[-1]


def _reads(binding_scope: str, call_scope: str) -> bool:
  """Whether a call under `call_scope` reads bindings made under `binding_scope` (gin: the call's scope prefixes)."""
  return not binding_scope or call_scope == binding_scope or call_scope.startswith(binding_scope + "/")


def unread_bindings() -> dict[str, list[str]] | None:
  """The bound parameters (`scope/name.param`) of every configurable that the calls made so far never read, by
  configurable name; macros are left to `gin_utils.check_macros_are_used`. None when this gin release keeps its
  bindings or its record of calls elsewhere (then nothing can be said)."""
  bound, called = getattr(gin.config, "_CONFIG", None), getattr(gin.config, "_OPERATIVE_CONFIG", None)
  if not isinstance(bound, dict) or not isinstance(called, dict):
    return None
  calls = [key for key in called if isinstance(key, tuple) and len(key) == 2]
  unread: dict[str, list[str]] = {}
  for key, params in bound.items():
    if not isinstance(key, tuple) or len(key) != 2 or key[1] in ("gin.macro", "gin.constant"):
      continue
    scope, selector = key
    if any(sel == selector and _reads(scope, call_scope) for call_scope, sel in calls):
      continue
    name = (f"{scope}/" if scope else "") + _short(selector)
    unread.setdefault(name, []).extend(f"{name}.{param}" for param in params)
  return unread


def check_bindings_are_read(model_binding: str = "ModelArgs.config", reads: str = "") -> None:
  """Raises GinConfigError when a binding was made of a configurable that the entry point never called: gin
  would drop it silently (e.g. `opt_model.dropout` while ModelArgs.config is `@model_config()`). Call once the
  entry point's configurables have been called: after `train_config()` for a training run (which calls every
  configurable it uses while its config is built), at the top of `evaluate` for an evaluation (the library
  itself never reads gin).

  Args:
    model_binding: the binding that names the model configurable (`ModelArgs.config`, `evaluate.model`).
    reads: what the entry point reads, for the message; default: the TrainConfig's groups.
  """
  unread = unread_bindings()
  if not unread:
    return
  try:
    model_ref = gin.query_parameter(model_binding)
  except ValueError:
    model_ref = None
  used_model = (model_ref.configurable.name if isinstance(model_ref, gin.config.ConfigurableReference) else None)
  reads = reads or f"the groups {', '.join(cls.__name__ for _, cls in config_lib.GROUPS)} and what they refer to"
  problems = []
  for name, params in unread.items():
    shown = ", ".join(params)
    if name in MODEL_CONFIGURABLES and used_model in MODEL_CONFIGURABLES:
      instead = ", ".join(f"{used_model}.{p.split('.', 1)[1]}" for p in params)
      problems.append(f"{shown}: this run never calls {name} ({model_binding} = @{used_model}()), so the "
                      f"binding would be ignored; bind {instead} instead (or set {model_binding} = @{name}())")
    else:
      problems.append(f"{shown}: this run never calls {name} (no binding it reads refers to @{name}), so the "
                      f"binding would be ignored; remove it, or bind what the run reads ({reads})")
  raise gin_utils.GinConfigError("gin configuration: " + "; ".join(problems))


def _moved_from_train(message: str) -> str:
  """For a binding of the former `train` configurable: 'train.X is now Group.X' (else '')."""
  match = re.search(r"\btrain\.(\w+)\s*=", message)
  if not match or "'train'" not in message:
    return ""
  name = match.group(1)
  if name == "optimizer":
    return "train.optimizer is gone: bind OptimizerArgs.* directly"
  new = {"model": "ModelArgs.config"}.get(name)
  for _, cls in config_lib.GROUPS:
    if new is None and name in {f.name for f in dataclasses.fields(cls)}:
      new = f"{cls.__name__}.{name}"
  return f"train.{name} is now {new} (the groups of trainer/config.py)" if new else ""


def configure_training(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: str | Sequence[str] = "",
                       required_macros: Sequence[str] = TRAIN_REQUIRED_MACROS) -> config_lib.TrainConfig:
  """Parses gin files and bindings, checks them and returns the TrainConfig (raises GinConfigError)."""
  try:
    gin_utils.parse(gin_files, bindings, search_paths)
  except gin_utils.GinConfigError as e:
    hint = _moved_from_train(str(e))
    if hint:
      raise gin_utils.GinConfigError(f"{e}\n  {hint}") from e
    raise
  check_training_bindings(required_macros)
  config = train_config()
  check_bindings_are_read()
  return config
