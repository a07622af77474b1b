"""Timing shared by the benchmarks in this folder: our code and its peer, alternated under the same load.

Where it sits: imported by `model.py`, `eval.py` and `update.py` (run as scripts, so this folder is on the path).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def time_alternating(runs: dict[str, Callable[[], Any]], steps: int,
                     warmup: int) -> tuple[dict[str, float], dict[str, Any]]:
  """Median seconds per call of each function, and each function's last output.

  Each function runs `warmup` untimed calls, then `steps` rounds of one timed call each, alternating between
  the functions, so every side sees the same background load. Each function must block until its result is
  ready.
  """
  outputs = {}
  for name, run in runs.items():
    for _ in range(warmup):
      outputs[name] = run()
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      start = time.perf_counter()
      outputs[name] = run()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}, outputs
