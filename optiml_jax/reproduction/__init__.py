"""The pieces of `python -m optiml_jax.reproduce` below its stages: the claim table (`claim`) and the files that
carry the run between two machines (`bundle`)."""
