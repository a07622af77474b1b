"""Shared fixtures and marker handling for the whole suite.

Markers (registered in pytest.ini, which runs with --strict-markers): `slow` tests are skipped unless pytest is
given --runslow (`make test PYTEST_ARGS=--runslow`, what CI runs, or `make test-all`); `gpu` tests are skipped,
with the backend named, when JAX's default backend is not a GPU. Fixtures: the `../shared` sample data
and OPT tokenizer (skipped when absent) and a random-weight PyTorch OPT builder.
"""

from __future__ import annotations

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def pytest_addoption(parser):
  parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure():
  # (Markers are registered in pytest.ini.) Parity tolerances are float32's. CPUs compute float32 matmuls in
  # float32 anyway; GPUs would use TF32 (~1e-3 relative) unless asked for full precision.
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  run_slow = config.getoption("--runslow")
  skip_slow = pytest.mark.skip(reason="slow: run with --runslow (make test PYTEST_ARGS=--runslow, make test-all)")
  skip_gpu = None
  for item in items:
    if item.get_closest_marker("slow") and not run_slow:
      item.add_marker(skip_slow)
    if item.get_closest_marker("gpu"):
      if skip_gpu is None:  # Asks JAX for its backend only when a gpu test was collected.
        import jax  # pylint: disable=g-import-not-at-top
        backend = jax.default_backend()
        skip_gpu = False if backend == "gpu" else pytest.mark.skip(
            reason=f"gpu: needs a GPU backend, but JAX's default backend is {backend!r}")
      if skip_gpu:
        item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """`../shared` beside the repository (real public sample data), or skip."""
  if not (SHARED_DIR / "data").is_dir():
    pytest.skip(f"real sample data not found at {SHARED_DIR}/data (a user's machine has no ../shared)")
  return SHARED_DIR


@pytest.fixture(scope="session")
def opt_tokenizer_dir(shared_dir) -> pathlib.Path:
  """OPT's byte-level BPE tokenizer folder from `../shared/tokenizers/opt`, or skip."""
  path = shared_dir / "tokenizers" / "opt"
  if not (path / "vocab.json").is_file():
    pytest.skip(f"OPT tokenizer not found at {path}")
  return path


@pytest.fixture(scope="session")
def random_hf_opt():
  """A builder of transformers' PyTorch OPTForCausalLM with random weights for an `OPTConfig`.

  Eager attention (exact reference); biases ~ N(0, 0.1) and layer-norm scales ~ N(1, 0.1) as well, so that
  a mix-up of any parameter changes the logits.
  """
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")

  def build(config, seed: int = 0):
    torch.manual_seed(seed)
    hf_config = transformers.OPTConfig(**config.to_hf())
    hf_config._attn_implementation = "eager"  # pylint: disable=protected-access
    model = transformers.OPTForCausalLM(hf_config).eval()
    with torch.no_grad():
      for name, param in model.named_parameters():
        if name.endswith("bias"):
          param.normal_(0.0, 0.1)
        elif "layer_norm" in name:
          param.normal_(1.0, 0.1)
    return model

  return build
