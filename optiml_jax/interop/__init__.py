"""Interoperability with other training stacks; nothing here is imported by the rest of the package.

`t5x_model`, `t5x_tasks` and `t5x_checkpoints` let t5x (google-research/t5x, installed from source) train,
evaluate and decode with our OPT module, data and recipe through the gin files in `gin/t5x/`. Only
`t5x_model` imports t5x, and only the t5x gin files import it.
"""
