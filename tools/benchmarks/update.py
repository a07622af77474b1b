r"""The optimizer update alone: the recipe's clipping (trainer/optimizer.py) against optax's, on a model's params.

Times `trainer.step.apply_update` (AdamW with clipping at global norm 1.0, float32 params and state, the NaN
guard) on random gradients shaped like a preset's parameters, with two optimizers whose states are the same
tree: ours (`optimizer.make_optimizer`: the clip is one multiply by a factor from the step's gradient norm)
and optax's own chain (`optax.clip_by_global_norm`, which picks each leaf with a `select` and computes the norm
again), otherwise equal. Prints, per side, the compiled update's bytes accessed (XLA's cost analysis), its
temporary memory and milliseconds per update (median of alternating calls), then one JSON line with the ratio.

  python tools/benchmarks/update.py                                   # CPU: opt-125m's params
  python tools/benchmarks/update.py --preset opt-1.3b --guard select  # GPU: the step's guard there
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="opt-125m", help="whose parameter shapes (models/registry.py)")
  parser.add_argument("--guard", default="select", choices=("select", "cond"),
                      help="the NaN guard (PartitioningArgs.nonfinite_guard): select on a GPU, cond on a CPU")
  parser.add_argument("--steps", type=int, default=10, help="timed updates per side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed updates per side (compilation included)")
  return parser.parse_args(argv)


def optax_reference(schedule: Any) -> Any:
  """The recipe's chain with optax's own clipping (what `make_optimizer` built before)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, mu_dtype=jnp.float32, weight_decay=0.1))


def _one_update(fn: Any, state: dict[str, Any], grads: Any) -> Any:
  """Applies one update to `state` in place (its buffers are donated) and waits for it."""
  import jax  # pylint: disable=g-import-not-at-top
  state["params"], state["opt_state"] = fn(state["params"], state["opt_state"], grads)
  return jax.block_until_ready(state["params"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from optiml_jax.trainer import step as step_lib  # pylint: disable=g-import-not-at-top

  import timing  # pylint: disable=g-import-not-at-top

  model = registry.make_model(registry.preset(args.preset))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones(
      (1, 4), jnp.int32), enable_dropout=False))["params"]
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 2 * len(jax.tree.leaves(shapes))))
  params = jax.tree.map(lambda s: 0.02 * jax.random.normal(next(keys), s.shape, jnp.float32), shapes)
  grads = jax.tree.map(lambda s: 4.0 * jax.random.normal(next(keys), s.shape, jnp.float32), shapes)
  ours, schedule = optimizer_lib.make_optimizer(learning_rate=1e-4, warmup_steps=1, total_steps=1000)
  sides = {"ours": ours, "optax_clip": optax_reference(schedule)}

  def build(tx):

    def update(params, opt_state, grads):
      scale = jnp.float32(1 / 4096)  # summed gradients over the loss weights, as the step hands them over
      grad_norm = optax.global_norm(grads) * scale
      return step_lib.apply_update(params, opt_state, grads, scale, grad_norm, jnp.isfinite(grad_norm), tx, args.guard)

    return jax.jit(update, donate_argnums=(0, 1))

  runs: dict[str, Callable[[], Any]] = {}
  figures: dict[str, dict[str, Any]] = {}
  for name, tx in sides.items():
    fn = build(tx)
    compiled = fn.lower(params, tx.init(params), grads).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    figures[name] = {
        "bytes_accessed_mib": round(float(cost.get("bytes accessed", 0.0)) / 2**20, 1),
        "temp_mib": None if memory is None else round(memory.temp_size_in_bytes / 2**20, 1),
    }
    state = {"params": jax.tree.map(jnp.copy, params), "opt_state": tx.init(params)}

    runs[name] = functools.partial(_one_update, fn, state, grads)
  seconds, _ = timing.time_alternating(runs, args.steps, args.warmup)
  param_mib = sum(x.size for x in jax.tree.leaves(params)) * 4 / 2**20
  for name, s in seconds.items():
    figures[name]["ms"] = round(s * 1e3, 2)
    print(f"  {name:>10}: {figures[name]['ms']:8.2f} ms/update, {figures[name]['bytes_accessed_mib']:,.1f} MiB "
          f"accessed, temp {figures[name]['temp_mib']} MiB")
  record = {
      "what": "bench_update",
      "preset": args.preset,
      "guard": args.guard,
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "param_mib": round(param_mib, 1),
      **figures,
      "ratio_optax_over_ours": round(seconds["optax_clip"] / seconds["ours"], 3),
  }
  print(json.dumps(record))
  return record


if __name__ == "__main__":
  main()
