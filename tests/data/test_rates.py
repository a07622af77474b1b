"""Tests for optiml_jax.data.rates: examples-proportional mixing with a cap and benchmark shares."""

import math

import pytest

from optiml_jax.data import rates

SHARES = {
    "sni": 25,
    "promptsource": 45,
    "flan": 20,
    "crossfit": 4,
    "exmix": 2,
    "t5": 2,
    "unifiedskg": 2,
    "reasoning": 1,
    "pretraining": 5
}
FIXED = ("reasoning", "pretraining")


def _per_benchmark(task_rates, benchmark_of):
  totals = {}
  for task, rate in task_rates.items():
    totals[benchmark_of[task]] = totals.get(benchmark_of[task], 0.0) + rate
  return totals


def test_cap_and_proportions_within_a_benchmark():
  num = {"a": 100, "b": 300, "c": 10_000, "d": 4096}
  bench = {t: "sni" for t in num}
  out = rates.examples_proportional(num, bench, {"sni": 25})
  assert math.isclose(sum(out.values()), 1.0)
  # weights 100, 300, 4096 (capped), 4096
  total = 100 + 300 + 4096 + 4096
  assert out["a"] == pytest.approx(100 / total)
  assert out["b"] == pytest.approx(300 / total)
  assert out["c"] == pytest.approx(out["d"])


def test_benchmark_totals_equal_shares_when_all_present():
  num = {"s1": 50, "s2": 5000, "p1": 7, "p2": 70, "p3": 700, "f1": 1, "c1": 9}
  bench = {
      "s1": "sni",
      "s2": "sni",
      "p1": "promptsource",
      "p2": "promptsource",
      "p3": "promptsource",
      "f1": "flan",
      "c1": "crossfit"
  }
  shares = {"sni": 25, "promptsource": 45, "flan": 20, "crossfit": 10}
  totals = _per_benchmark(rates.examples_proportional(num, bench, shares), bench)
  assert totals == pytest.approx({"sni": 0.25, "promptsource": 0.45, "flan": 0.20, "crossfit": 0.10})


def test_absent_benchmarks_are_renormalised_over_present_ones():
  num = {"s": 10, "p": 10}
  bench = {"s": "sni", "p": "promptsource"}
  totals = _per_benchmark(rates.examples_proportional(num, bench, SHARES), bench)
  assert totals["sni"] == pytest.approx(25 / 70)
  assert totals["promptsource"] == pytest.approx(45 / 70)


def test_fixed_shares_are_absolute_fractions():
  num = {"s": 10, "p": 20, "r": 5, "t": 1000}
  bench = {"s": "sni", "p": "promptsource", "r": "reasoning", "t": "pretraining"}
  totals = _per_benchmark(rates.examples_proportional(num, bench, SHARES, fixed=FIXED), bench)
  assert totals["reasoning"] == pytest.approx(0.01)
  assert totals["pretraining"] == pytest.approx(0.05)
  assert totals["sni"] == pytest.approx(0.94 * 25 / 70)
  assert totals["promptsource"] == pytest.approx(0.94 * 45 / 70)


def test_tasks_without_examples_get_zero_and_temperature_flattens():
  num = {"a": 0, "b": 16, "c": 4096}
  bench = {t: "sni" for t in num}
  t1 = rates.examples_proportional(num, bench, {"sni": 1})
  t2 = rates.examples_proportional(num, bench, {"sni": 1}, temperature=2.0)
  assert t1["a"] == 0.0 and t2["a"] == 0.0
  assert t1["b"] == pytest.approx(16 / (16 + 4096))
  assert t2["b"] == pytest.approx(4 / (4 + 64))
  assert t2["b"] > t1["b"]


def test_uniform_within_benchmarks():
  num = {"a": 1, "b": 1000, "c": 50, "d": 0}
  bench = {"a": "sni", "b": "sni", "c": "flan", "d": "flan"}
  out = rates.uniform(num, bench, {"sni": 3, "flan": 1})
  assert out == pytest.approx({"a": 0.375, "b": 0.375, "c": 0.25, "d": 0.0})


@pytest.mark.parametrize("kwargs, message", [
    ({
        "shares": {
            "sni": 1
        }
    }, "no share given for benchmark 'flan'"),
    ({
        "shares": {
            "sni": 1,
            "flan": 1
        },
        "cap": 0
    }, "cap must be positive"),
    ({
        "shares": {
            "sni": 0,
            "flan": 0
        }
    }, "share 0"),
])
def test_errors_name_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rates.examples_proportional({"a": 1, "b": 2}, {"a": "sni", "b": "flan"}, **kwargs)


def test_no_examples_at_all_is_an_error():
  with pytest.raises(ValueError, match="no task has training examples"):
    rates.examples_proportional({"a": 0}, {"a": "sni"}, {"sni": 1})


def test_per_benchmark_caps_replace_the_global_cap_for_their_tasks():
  num = {"p_small": 5, "p_mid": 50, "p_big": 5000, "s_small": 5, "s_big": 5000}
  benchmark_of = {
      "p_small": "promptsource",
      "p_mid": "promptsource",
      "p_big": "promptsource",
      "s_small": "sni",
      "s_big": "sni"
  }
  shares = {"promptsource": 1, "sni": 1}
  capped = rates.examples_proportional(num, benchmark_of, shares, cap=4096, caps={"promptsource": 10})
  # promptsource weights 5 : 10 : 10 (its own cap); sni keeps the global one, 5 : 4096.
  assert capped["p_small"] / capped["p_mid"] == pytest.approx(0.5)
  assert capped["p_mid"] == pytest.approx(capped["p_big"])
  assert capped["s_small"] / capped["s_big"] == pytest.approx(5 / 4096)
  assert sum(capped.values()) == pytest.approx(1.0)
  # Benchmark totals still follow the shares; without caps the global cap applies to both.
  totals = _per_benchmark(capped, benchmark_of)
  assert totals["promptsource"] == pytest.approx(totals["sni"])
  plain = rates.examples_proportional(num, benchmark_of, shares, cap=4096)
  assert plain["p_small"] / plain["p_mid"] == pytest.approx(0.1)
  with pytest.raises(ValueError, match="cap of benchmark 'sni' must be positive"):
    rates.examples_proportional(num, benchmark_of, shares, caps={"sni": 0})


def test_one_datasets_templates_share_one_cap():
  # OPT-IML counts a P3 dataset, all its prompts, as one task: 13 templates must not weigh 13 capped tasks.
  num = {"cosmos_1": 5000, "cosmos_2": 5000, "cosmos_3": 2000, "app_1": 5000, "lone": 1000}
  benchmark_of = {t: "promptsource" for t in num}
  groups = {"cosmos_1": "cosmos", "cosmos_2": "cosmos", "cosmos_3": "cosmos", "app_1": "app"}
  out = rates.examples_proportional(num, benchmark_of, {"promptsource": 1}, cap=4096, groups=groups)
  assert out["cosmos_1"] + out["cosmos_2"] + out["cosmos_3"] == pytest.approx(out["app_1"])  # 4096 each
  assert out["cosmos_1"] / out["cosmos_3"] == pytest.approx(5000 / 2000)  # split by examples inside the group
  assert out["lone"] / out["app_1"] == pytest.approx(1000 / 4096)  # a task outside any group: as before
  assert sum(out.values()) == pytest.approx(1.0)
  # Under the cap a group weighs its examples: the same rates as without groups.
  small = {t: n // 100 for t, n in num.items()}
  assert rates.examples_proportional(small, benchmark_of, {"promptsource": 1}, groups=groups) == pytest.approx(
      rates.examples_proportional(small, benchmark_of, {"promptsource": 1}))
  # Uniform: a group is one task, split evenly over its templates with examples.
  uniform = rates.uniform({**num, "cosmos_3": 0}, benchmark_of, {"promptsource": 1}, groups=groups)
  assert uniform == pytest.approx({
      "cosmos_1": 1 / 6,
      "cosmos_2": 1 / 6,
      "cosmos_3": 0.0,
      "app_1": 1 / 3,
      "lone": 1 / 3
  })


def test_a_group_across_benchmarks_is_refused():
  with pytest.raises(ValueError, match="group 'x' has tasks of benchmarks 'sni' and 'flan'"):
    rates.examples_proportional({
        "a": 1,
        "b": 2
    }, {
        "a": "sni",
        "b": "flan"
    }, {
        "sni": 1,
        "flan": 1
    }, groups={
        "a": "x",
        "b": "x"
    })
