"""optiml-jax: OPT-IML instruction meta-learning on JAX.

Flow (see README.md): data/sources -> data/catalog -> data/registry + packing -> trainer -> evaluation,
with the Flax OPT in models/ and Hugging Face <-> Orbax conversion in convert.py.
"""

__version__ = "0.1.0"
