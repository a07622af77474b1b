"""Installs optiml-jax: OPT-IML instruction meta-learning on JAX (see README.md)."""

import pathlib

import setuptools

INSTALL_REQUIRES = [
    # JAX 0.10.x is the newest on Python 3.11; GPU machines run 0.11 on Python 3.12.
    "jax>=0.6.0,<0.12",
    "flax>=0.10.0,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11.0,<0.13",
    "etils[epath]",  # MODEL_DIR files (metrics, config.json) on local disks or buckets, as Orbax writes
    "seqio>=0.0.19",
    "tensorflow-datasets>=4.9.6",
    "transformers>=4.45,<6",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "gin-config>=0.5.0",
    "rouge-score>=0.1.2",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "numpy>=1.26",
    "matplotlib>=3.8",
    "tensorboard>=2.16",
]

# `python -m optiml_jax.bench cache` builds the pre-tokenized bench with Apache Beam (FnApiRunner locally; Dataflow,
# Flink or Spark on a cluster). Beam caps protobuf below 7, and sentencepiece 0.2.3 (imported by seqio) is generated
# for protobuf 7 and refuses an older one at import; 0.2.2 and earlier import with either, hence the pin.
CACHE_REQUIRES = [
    "apache-beam>=2.60",
    "sentencepiece<0.2.3",
]

# Training, evaluation, the bench and planning never import torch. The tests compare against transformers'
# PyTorch OPT, so torch is a test dependency only; `make test` installs the CPU build (torch==2.13.0) first,
# because a bare `torch` from PyPI is a CUDA build of several GB. Converting a PyTorch `.bin` checkpoint
# (not safetensors) also needs torch: `pip install torch`.
TEST_REQUIRES = [
    "pytest>=8.0",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",  # `make test` runs the tests in two processes (PYTEST_WORKERS in the Makefile)
    "torch>=2.4,<=2.13.0",  # any 2.x with OPT works
    "gguf>=0.10.0",  # tests/checkpoints/test_gguf.py writes tiny GGUF files and converts them
    "accelerate>=1.1.0",  # transformers loads GGUF files only with it
    # `make lint` (part of `make test`): pinned, so a new release cannot turn a clean tree red.
    "yapf==0.43.0",  # the formatter, Google style (setup.cfg [yapf])
    "ruff==0.17.6",  # the linter (ruff.toml)
    "mypy==2.4.1",  # the type checker (setup.cfg [mypy])
    *CACHE_REQUIRES,  # tests/data/test_cache.py builds caches with Beam locally
]

# `python -m optiml_jax.convert gguf-to-hf` / `fetch-smollm2` read GGUF files through transformers' own loader, which
# needs torch, the `gguf` package and accelerate. Only those commands import them.
GGUF_REQUIRES = [
    "torch>=2.4,<=2.13.0",
    "gguf>=0.10.0",
    "accelerate>=1.1.0",
]

# The repository keeps its gin files and bench definitions at its top level (gin/, tasks/); the wheel ships
# them inside the package, as optiml_jax/gin/ and optiml_jax/tasks/ (found by optiml_jax/resources.py).
CONFIG_PACKAGES = {"optiml_jax.gin": "gin", "optiml_jax.tasks": "tasks"}

# One command per entry point, beside `python -m optiml_jax.<module>`: each calls the module's main(),
# which reads sys.argv and returns the exit status.
CONSOLE_SCRIPTS = [
    "optiml-train = optiml_jax.train:main",
    "optiml-eval = optiml_jax.eval:main",
    "optiml-answer = optiml_jax.answer:main",
    "optiml-bench = optiml_jax.bench:main",
    "optiml-plan = optiml_jax.plan:main",
    "optiml-convert = optiml_jax.convert:main",
    "optiml-quickstart = optiml_jax.quickstart:main",
    "optiml-reproduce = optiml_jax.reproduce:main",
]

setuptools.setup(
    name="optiml-jax",
    version="0.1.0",
    description="OPT-IML instruction meta-learning for OPT models on JAX, TPUs and GPUs.",
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["optiml_jax", "optiml_jax.*"]) + list(CONFIG_PACKAGES),
    package_dir=CONFIG_PACKAGES,
    package_data={
        "optiml_jax": ["py.typed", "data/tokenizer_opt/*.json", "data/tokenizer_opt/*.txt"],
        "optiml_jax.gin": ["*.gin", "models/*.gin", "t5x/*.gin", "t5x/models/*.gin"],
        "optiml_jax.tasks": ["*.yaml"],
    },
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        "gguf": GGUF_REQUIRES,
        "cache": CACHE_REQUIRES,
    },
    license="Apache-2.0",
)
