"""tools/benchmarks/train.py runs both parts on a tiny model of each family and reports comparable figures."""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_bench_train_reports_ours_hf_and_their_ratio(preset):
  result = subprocess.run([
      sys.executable, "tools/benchmarks/train.py", "--preset", preset, "--layers", "0", "--batch", "2", "--seq", "32",
      "--steps", "1", "--warmup", "1"
  ], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  ours, hf = report["ours"], report["hf_torch"]
  assert report["preset"] == preset and report["layers"] == 2
  assert ours["tokens_per_s"] > 0 and hf["tokens_per_s"] > 0
  assert report["ratio_ours_over_hf"] == pytest.approx(ours["tokens_per_s"] / hf["tokens_per_s"], rel=1e-2)
  # Same architecture, same random-token task: both start at about ln(50272) = 10.8 (both presets have OPT's
  # vocabulary).
  assert abs(ours["loss"] - hf["loss"]) < 0.5 and 10 < ours["loss"] < 11.5
  assert ours["tflops"] >= 0 and hf["tflops"] >= 0
