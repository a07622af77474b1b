"""Planning a run before it starts: topologies, an analytic memory and FLOP model, ahead-of-time compilation.

Sits beside the trainer, used only by the `python -m optiml_jax.plan` entry point:
  topology.py  accelerator slices and GPU clusters by name (v4-256, v5p-128, h100:16x8 ...): chips, HBM;
  analytic.py  per-device bytes of parameters, optimizer state, gradients and activations, and FLOPs per step,
               from the model config and the plan figures (mesh, batch, microbatches), without compiling;
  compiled.py  lowers and compiles the trainer's real train step with abstract inputs on a simulated mesh and
               reads XLA's memory and cost analyses.
Nothing here is imported by training itself.
"""
