"""Task sampling rates: how often each training task is drawn in the training mixture.

Where it sits: `catalog.build` counts each training task's examples, calls these functions and stores
the result as `CatalogEntry.rate`; `registry` turns the rates into a seqio Mixture. Pure functions over
plain mappings: nothing here reads files.

OPT-IML recipe (Iyer et al. 2022, section 3): examples-proportional sampling with a cap, rescaled so
that every source benchmark contributes a fixed share of the mixture.

  1. weight(task) = min(num training examples, cap(b)) ** (1 / temperature)   (cap = 4096, T = 1)
     cap(b) is the task's benchmark's own cap when `caps` names it (metaseq's opt_instruct keeps such a
     per-benchmark mapping beside the global cap), else the global cap. Tasks of one `group` (the templates
     of one dataset: P3 and FLAN render a dataset in several prompts, and OPT-IML counts the dataset as one
     task, 5.7 and 8.5 prompts each) are one task for the cap: the group weighs min(its examples, cap(b)) **
     (1 / temperature), split over its tasks in proportion to their examples, so a dataset's share does not
     grow with its number of templates.
  2. within a benchmark b, rate(task) = share'(b) * weight(task) / sum of weights in b
  3. share'(b): the configured shares of the benchmarks *present* (at least one task with examples),
     renormalised to sum to 1. A benchmark absent from the checkout gives its share to the present
     ones in proportion to their shares. "Fixed" shares (the 1% chain-of-thought reasoning and 5%
     pre-training text streams) are absolute fractions of the final mixture: the other present
     benchmarks share the remaining 1 - (sum of present fixed shares) in proportion to their shares.

Rates sum to 1 over the tasks with examples; tasks with no training examples get rate 0.
"""

from __future__ import annotations

from typing import Collection, Mapping

DEFAULT_CAP = 4096


def _benchmark_fractions(present: Collection[str], shares: Mapping[str, float],
                         fixed: Collection[str]) -> dict[str, float]:
  """Fraction of the mixture that goes to each present benchmark (see module docstring, step 3)."""
  for benchmark in present:
    if benchmark not in shares:
      raise ValueError(f"no share given for benchmark {benchmark!r} (shares: {sorted(shares)})")
    if shares[benchmark] < 0:
      raise ValueError(f"share of benchmark {benchmark!r} is negative: {shares[benchmark]}")
  fixed_present = [b for b in present if b in fixed]
  free_present = [b for b in present if b not in fixed]
  fixed_total = sum(shares[b] for b in fixed_present) / 100.0
  if fixed_total > 1.0:
    raise ValueError(f"fixed shares {fixed_present} add up to {fixed_total * 100:g}%, over 100%")
  free_total = sum(shares[b] for b in free_present)
  fractions = {}
  if free_total > 0:
    for b in free_present:
      fractions[b] = (1.0 - fixed_total) * shares[b] / free_total
    for b in fixed_present:
      fractions[b] = shares[b] / 100.0
  else:
    # Only fixed streams carry weight: they share the whole mixture in proportion to their shares.
    total = sum(shares[b] for b in fixed_present)
    if total <= 0:
      raise ValueError(f"every present benchmark {sorted(present)} has share 0: nothing to sample")
    fractions = {b: shares[b] / total for b in fixed_present}
    fractions.update({b: 0.0 for b in free_present})
  return fractions


def _rescale(weights: Mapping[str, float], benchmark_of: Mapping[str, str], shares: Mapping[str, float],
             fixed: Collection[str]) -> dict[str, float]:
  """Turns per-task weights into rates whose per-benchmark totals equal the benchmark fractions."""
  totals: dict[str, float] = {}
  for task, weight in weights.items():
    if task not in benchmark_of:
      raise ValueError(f"task {task!r} has no benchmark in benchmark_of")
    if weight > 0:
      totals[benchmark_of[task]] = totals.get(benchmark_of[task], 0.0) + weight
  if not totals:
    raise ValueError("no task has training examples: cannot compute sampling rates")
  fractions = _benchmark_fractions(list(totals), shares, fixed)
  return {
      task: (fractions[benchmark_of[task]] * weight / totals[benchmark_of[task]] if weight > 0 else 0.0)
      for task, weight in weights.items()
  }


def examples_proportional(num_examples: Mapping[str, int], benchmark_of: Mapping[str, str], shares: Mapping[str, float],
                          cap: int = DEFAULT_CAP, temperature: float = 1.0, fixed: Collection[str] = (),
                          caps: Mapping[str, int] | None = None,
                          groups: Mapping[str, str] | None = None) -> dict[str, float]:
  """Examples-proportional rates with a cap and benchmark shares (OPT-IML's mixing).

  Args:
    num_examples: training examples per task (after held-out instances and per-task limits).
    benchmark_of: the benchmark of each task.
    shares: share of each benchmark, in percent or any positive scale (only ratios matter, except for
      `fixed` benchmarks, whose share is a percentage of the whole mixture).
    cap: examples beyond the cap do not raise a task's weight (OPT-IML: 4096).
    temperature: weight = min(n, cap) ** (1 / temperature); T > 1 flattens the mixture towards uniform.
    fixed: benchmarks whose share is an absolute percentage (OPT-IML: reasoning 1, pre-training 5).
    caps: per-benchmark caps that replace `cap` for the tasks of the benchmarks they name.
    groups: task -> its group (one dataset's templates; the tasks of a group share a benchmark); a task absent
      is a group of its own.

  Returns:
    rate per task, summing to 1; 0 for tasks with no examples.
  """
  caps = dict(caps or {})
  if cap <= 0:
    raise ValueError(f"cap must be positive, got {cap}")
  for benchmark, benchmark_cap in caps.items():
    if benchmark_cap <= 0:
      raise ValueError(f"cap of benchmark {benchmark!r} must be positive, got {benchmark_cap}")
  if temperature <= 0:
    raise ValueError(f"temperature must be positive, got {temperature}")
  for task, n in num_examples.items():
    if n < 0:
      raise ValueError(f"task {task!r} has a negative number of examples: {n}")
  group_of = _groups(num_examples, benchmark_of, groups)
  in_group: dict[str, int] = {}
  for task, n in num_examples.items():
    in_group[group_of[task]] = in_group.get(group_of[task], 0) + n
  weights = {}
  for task, n in num_examples.items():
    total = in_group[group_of[task]]
    task_cap = caps.get(benchmark_of.get(task, ""), cap)
    weights[task] = float(min(total, task_cap))**(1.0 / temperature) * n / total if n > 0 else 0.0
  return _rescale(weights, benchmark_of, shares, fixed)


def _groups(num_examples: Mapping[str, int], benchmark_of: Mapping[str, str],
            groups: Mapping[str, str] | None) -> dict[str, str]:
  """Each task's group (`examples_proportional`); a ValueError naming a group whose tasks are of two benchmarks
  (a benchmark's share would then pay for another's)."""
  group_of = {task: (" ", task) for task in num_examples}  # a task alone: a key no group name can equal
  benchmark_of_group: dict[str, str] = {}
  for task, group in (groups or {}).items():
    if task not in num_examples:
      continue
    benchmark = benchmark_of.get(task, "")
    if benchmark_of_group.setdefault(group, benchmark) != benchmark:
      raise ValueError(f"group {group!r} has tasks of benchmarks {benchmark_of_group[group]!r} and {benchmark!r}: "
                       "a group is one dataset's templates in one benchmark")
    group_of[task] = ("", group)
  return {task: repr(key) for task, key in group_of.items()}


def uniform(num_examples: Mapping[str, int], benchmark_of: Mapping[str, str], shares: Mapping[str, float],
            fixed: Collection[str] = (), groups: Mapping[str, str] | None = None) -> dict[str, float]:
  """Every task with examples weighs the same within its benchmark, a group of tasks (`examples_proportional`)
  as one, split evenly over its tasks with examples; benchmark shares still apply."""
  group_of = _groups(num_examples, benchmark_of, groups)
  sizes: dict[str, int] = {}
  for task, n in num_examples.items():
    if n > 0:
      sizes[group_of[task]] = sizes.get(group_of[task], 0) + 1
  weights = {task: (1.0 / sizes[group_of[task]] if n > 0 else 0.0) for task, n in num_examples.items()}
  return _rescale(weights, benchmark_of, shares, fixed)
