"""Models: the Flax OPT (`opt`) and the logical-axis -> device-mesh rule table (`partitioning`).

Where it sits: between the packed data (data/packing) and the trainer / evaluation, which call
`opt.OPT(config)` and shard its parameters with `partitioning`; convert.py maps Hugging Face weights onto
the parameter tree that `opt` defines.
"""
