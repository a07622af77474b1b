"""Orbax checkpoints of the `params` tree of any model family: write one, and read one back, sharded or as numpy.

Where it sits: in `optiml_jax.checkpoints`, between the in-memory `params` tree (`layout`) and the Orbax
checkpoints that training and evaluation start from; `optiml_jax.convert` re-exports `save_orbax` /
`restore_orbax` and the trainer restores its initial parameters with them.

Layout written by `save_orbax` and read by `restore_orbax`:
  OUT_DIR/config.json   the Hugging Face config of the model (`config.to_hf()`), so nothing else is needed
  OUT_DIR/params/       one Orbax PyTree item holding the `params` tree
The trainer's CheckpointManager writes `ROOT/<step>/params/`; `restore_orbax` accepts `ROOT/<step>` (config.json
looked up in the step folder, then in ROOT) and `ROOT` itself (its latest complete step): `discovery.py` says
which folder is which.

A stored array that cannot be read (a data file cut short or deleted, a missing `_METADATA`) raises
`UnreadableCheckpointError`, one line naming the item, the tensor and what the storage layer said
(`describe_error`, which the trainer's resume uses too); the library's own traceback goes to the log
(logger `optiml_jax.details`), not into the message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str

PARAMS_ITEM = discovery.PARAMS_ITEM
DETAILS_LOG = logging.getLogger("optiml_jax.details")  # tracebacks behind one-line errors: the log file only

# Errors of our own code or of the Python runtime, never a sign of a damaged file: they keep their traceback.
PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError, RecursionError)

# TensorStore's messages (through Orbax): 'OUT_OF_RANGE: Error reading "decoder.embed_tokens.embedding/0.0" in
# OCDBT database at local file "/run/30/params/": Requested byte range ...', 'Metadata at "fc1.bias/.zarray" in
# OCDBT database ... does not exist', 'Error reading local file "/ckpt/params/fc1.kernel/0.0"'.
_STATUS = re.compile(r"^[A-Z][A-Z_]{2,}: ")
_KEY_IN_DATABASE = re.compile(r'(?:Error (?:reading|writing|opening)|Metadata at) "([^"]+)" in \w+ database at '
                              r'(?:local file )?"([^"]+)"')
_LOCAL_FILE = re.compile(r'(?:reading|writing|opening|Failed writing:|Failed reading:) (?:local file )?"([^"]+)"')
_BRACKETED = re.compile(r"\s*\[(?:tensorstore_spec|source locations|os_error_code).*$", re.MULTILINE)  # trailers


class UnreadableCheckpointError(discovery.CheckpointError):
  """An Orbax item exists but one of its arrays (or its metadata) cannot be read; the message is one line."""

  def __init__(self, message: str, *, tensor: str | None = None, reason: str = ""):
    super().__init__(message)
    self.tensor = tensor
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ErrorDescription:
  """What a storage error says, in one line: the tensor (Orbax's dotted key) and the file it names, if any."""

  reason: str
  tensor: str | None = None
  file: str | None = None


def _chain(error: BaseException) -> list[BaseException]:
  found: list[BaseException] = []
  while error is not None and error not in found and len(found) < 16:
    found.append(error)
    error = error.__cause__ or error.__context__  # type: ignore[assignment]
  return found


def describe_error(error: BaseException, limit: int = 300) -> ErrorDescription:
  """One line for an exception of Orbax / TensorStore / the file system, with the tensor and file it names.

  The innermost TensorStore status ("OUT_OF_RANGE: ...") is preferred over Orbax's wrapper, which repeats the
  whole TensorStore spec; anything else is `Type: first line`. Never raises.
  """
  chain = _chain(error)
  tensor = file = None
  for e in chain:
    match = _KEY_IN_DATABASE.search(str(e))
    if match:
      key, database = match.group(1), match.group(2)
      tensor = key.rsplit("/", 1)[0] if "/" in key else key
      file = database
      break
  if file is None:
    for e in chain:
      match = _LOCAL_FILE.search(str(e))
      if match:
        file = match.group(1)
        break
  if file is None:
    for e in chain:
      if isinstance(e, OSError) and e.filename:
        file = str(e.filename)
        break
  statuses = [e for e in chain if _STATUS.match(str(e))]
  chosen = statuses[-1] if statuses else chain[-1] if chain else error
  text = _BRACKETED.sub("", str(chosen)).strip().splitlines()
  first = text[0] if text else ""
  match = _KEY_IN_DATABASE.search(first)
  if statuses and match:  # the tensor and the file are named apart: keep the status and what follows them
    rest = first[match.end():].lstrip(": ")
    first = first.split(":", 1)[0] + (f": {rest}" if rest else "")
  if not statuses:
    first = f"{type(chosen).__name__}: {first}" if first else type(chosen).__name__
  if len(first) > limit:
    first = first[:limit - 3] + "..."
  return ErrorDescription(first, tensor, file)


def _unreadable(item: pathlib.Path, error: Exception) -> UnreadableCheckpointError:
  """The one-line error for an item that cannot be read; the traceback goes to the details log."""
  described = describe_error(error)
  DETAILS_LOG.info("%s: cannot be read", item, exc_info=error)
  where = f"the checkpoint's tensor '{described.tensor}'" if described.tensor else "the checkpoint's metadata or arrays"
  return UnreadableCheckpointError(f"{item}: cannot read {where}: {described.reason}", tensor=described.tensor,
                                   reason=described.reason)


def save_orbax(params: Mapping[str, Any], path: Path, config: layout.ModelConfig | None = None, overwrite: bool = False,
               tokenizer_dir: Path | None = None, sources: Sequence[Path] = ()) -> pathlib.Path:
  """Writes `path/params` (an Orbax PyTree item), given `config` `path/config.json`, and given `tokenizer_dir` the
  tokenizer files found there (`hf.TOKENIZER_FILES`: the folder then serves as its own TOKENIZER_DIR); returns
  `path`.

  Single-process: it stages into a temporary sibling of `path` and renames it into place when complete. `sources`:
  what `params` were read from; a `path` that is or holds one is refused (`fileio.OutDirError`), even with
  `overwrite`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  params = layout.unwrap(params)
  if config is not None:
    layout.validate_params(config, params, source=f"params for {path}")
  tokenizer_files = [] if tokenizer_dir is None else [
      pathlib.Path(tokenizer_dir) / n for n in hf.TOKENIZER_FILES if (pathlib.Path(tokenizer_dir) / n).is_file()
  ]
  with fileio.staged_dir(path, overwrite, sources) as tmp:
    for source in tokenizer_files:
      shutil.copyfile(source, tmp / source.name)
    if config is not None:
      (tmp / hf.CONFIG_NAME).write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      checkpointer.save(tmp / PARAMS_ITEM, args=ocp.args.PyTreeSave(dict(params)))
  return pathlib.Path(path).absolute()


def _sharding_of(spec: Any) -> Any:
  return getattr(spec, "sharding", spec)


def relayout_abstract(tree: Any, scan_layers: bool, num_layers: int | None = None) -> Any:
  """`layout.relayout` for a tree of `jax.ShapeDtypeStruct`s or shardings: the stacked layout's leaves gain a
  leading layers axis, replicated (a NamedSharding's spec gains a leading None), and lose it when unstacked. So a
  restore reads a checkpoint of the other layout straight into shards. `num_layers`: needed for shardings alone."""
  import jax  # pylint: disable=g-import-not-at-top

  def spec(sharding: Any, add: bool) -> Any:
    if isinstance(sharding, jax.sharding.NamedSharding):
      parts = tuple(sharding.spec)
      return jax.sharding.NamedSharding(sharding.mesh,
                                        jax.sharding.PartitionSpec(*((None,) + parts if add else parts[1:])))
    return sharding

  def stack(leaves: list[Any]) -> Any:
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype, sharding=spec(first.sharding, True))
    return spec(first, True)

  def unstack(leaf: Any) -> list[Any]:
    if isinstance(leaf, jax.ShapeDtypeStruct):
      one = jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=spec(leaf.sharding, False))
      return [one] * leaf.shape[0]
    return [spec(leaf, False)] * int(num_layers or 0)

  return layout.relayout(tree, scan_layers, stack=stack, unstack=unstack, num_layers=num_layers)


def restore_orbax(path: Path, shardings: Any = None,
                  config: layout.ModelConfig | None = None) -> tuple[layout.ModelConfig, layout.Params]:
  """Reads params written by `save_orbax` or a CheckpointManager; returns (config, params).

  Args:
    path: a save_orbax folder, a step folder, the `params` item or a MODEL_DIR (its latest complete step);
      see `discovery.find_params_item`.
    shardings: None for numpy arrays; one `jax.sharding.Sharding` for every array; or a tree like params
      whose leaves are shardings or `jax.ShapeDtypeStruct`s with a sharding. Arrays then come back as
      jax.Arrays with those shardings.
    config: the model config; by default read from config.json beside the item (its `model_type` picks
      the family); an item without one is an error saying where to copy it.

  The returned config's `scan_layers` follows the stored tree (stacked `layers/` or `layers_{i}/`), and so do the
  params, whichever layout `shardings` is in (`layout.relayout` turns them into the other).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  item, config_dirs = discovery.find_params_item(path)
  if config is None:
    found = [d / hf.CONFIG_NAME for d in config_dirs if (d / hf.CONFIG_NAME).is_file()]
    if not found:
      raise layout.ConversionError(
          f"{item}: no {hf.CONFIG_NAME} in {', '.join(map(str, config_dirs))} to say which model it holds; copy the "
          f"config.json of that model (e.g. the Hugging Face folder's it was trained from) into {config_dirs[0]}")
    config = hf.config_from_hf_dict(fileio.read_json(found[0]), str(found[0]))
  try:
    metadata = ocp.PyTreeCheckpointHandler().metadata(item)
  except PROGRAMMING_ERRORS:
    raise
  except Exception as e:  # pylint: disable=broad-except  Orbax and TensorStore raise bare Exceptions too.
    raise _unreadable(item, e) from e
  metadata = getattr(metadata, "tree", metadata)  # Newer orbax wraps the tree in a TreeMetadata.
  scanned = layout.validate_params(config, metadata, source=str(item))
  if shardings is None:
    restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=m.dtype), metadata)
    target = None
  else:
    if isinstance(shardings, jax.sharding.Sharding):
      sharding_tree = jax.tree.map(lambda _: shardings, metadata)
    else:
      sharding_tree = dict(layout.unwrap(shardings))
      if layout.is_scanned(sharding_tree) not in (None, scanned):  # read in the stored layout; the caller relayouts
        sharding_tree = relayout_abstract(sharding_tree, scanned, config.num_hidden_layers)
    try:
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_sharding_of(s)), metadata,
                            sharding_tree)
    except ValueError as e:
      raise layout.ConversionError(f"{item}: shardings do not match the stored tree: {e}") from e
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      params = checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  except PROGRAMMING_ERRORS:
    raise
  except Exception as e:  # pylint: disable=broad-except  a data file cut short or missing, a corrupt chunk, ...
    raise _unreadable(item, e) from e
  return dataclasses.replace(config, scan_layers=scanned), params
