"""tools/benchmarks/update.py: the optimizer update alone, ours against optax's clipping, on a preset's params."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tool():
  sys.path.insert(0, str(REPO / "tools" / "benchmarks"))
  spec = importlib.util.spec_from_file_location("bench_update", REPO / "tools" / "benchmarks" / "update.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_update_benchmark_reports_both_sides_and_ours_moves_fewer_bytes(capsys):
  for guard in ("select", "cond"):
    record = _tool().main(["--preset", "tiny", "--guard", guard, "--steps", "1", "--warmup", "1"])
    assert record["what"] == "bench_update" and record["guard"] == guard and record["param_mib"] > 0
    for side in ("ours", "optax_clip"):
      assert record[side]["ms"] > 0 and record[side]["bytes_accessed_mib"] > 0
    # XLA's count of the compiled update's traffic, not a timing: the clip as one multiply fuses into AdamW.
    assert record["ours"]["bytes_accessed_mib"] < record["optax_clip"]["bytes_accessed_mib"], record
  assert "bench_update" in capsys.readouterr().out
