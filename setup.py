"""Installs optiml-jax: OPT-IML instruction meta-learning on JAX (see README.md)."""

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

TEST_REQUIRES = [
    "pytest>=8.0",
    "pytest-timeout>=2.3",
    # CPU build, served from this machine's disk; any 2.x with OPT works.
    "torch>=2.4,<=2.13.0",
]

setuptools.setup(
    name="optiml-jax",
    version="0.1.0",
    description="OPT-IML instruction meta-learning for OPT models on JAX, TPUs and GPUs.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["optiml_jax", "optiml_jax.*"]),
    package_data={"optiml_jax": ["py.typed", "data/tokenizer_opt/*.json", "data/tokenizer_opt/*.txt"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    license="Apache-2.0",
)
