"""tools/benchmarks/model.py and eval.py on a tiny model of each family: our model and its transformers peer
(built from the config's `to_hf()`) compute the same logits and scores, and every part reports a figure."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PRESETS = ["tiny", "llama-tiny"]


def _run(*args: str) -> str:
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_bench_model_matches_the_transformers_peer(preset):
  out = _run("tools/benchmarks/model.py", "--preset", preset, "--batch", "2", "--seq", "32", "--steps", "2", "--warmup",
             "1")
  assert f"preset={preset} " in out
  ratio = float(re.search(r"jax/torch throughput ratio: ([0-9.]+)", out).group(1))
  diff = float(re.search(r"max \|logit difference\|: ([0-9.e+-]+)", out).group(1))
  assert ratio > 0 and diff < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_bench_eval_scores_and_decodes_as_the_transformers_peer(preset):
  out = _run("tools/benchmarks/eval.py", "--preset", preset, "--batch", "2", "--seq", "32", "--steps", "1", "--warmup",
             "1", "--parts", "score,pipeline,options,decode", "--new_tokens", "4")
  rows = {r["what"]: r for r in map(json.loads, out.strip().splitlines())}
  assert rows["setup"]["preset"] == preset
  assert not [r for r in rows.values() if "error" in r], rows
  assert rows["score_ratio_jax_over_torch"]["max_abs_score_diff"] < 1e-2  # sums of 32 log-probabilities
  assert rows["options_ratio_shared_over_rows"]["max_abs_score_diff"] < 1e-3
  for what in ("jax_score", "torch_score", "jax_score_options_end_to_end"):
    assert rows[what]["tokens_per_s"] > 0, what
  assert rows["jax_greedy_decode"]["new_tokens_per_s"] > 0 and rows["torch_greedy_decode"]["new_tokens_per_s"] > 0


def test_bench_eval_runs_every_part_and_exits_1_when_one_failed(monkeypatch, capsys, load_tool):
  # gpu.sh repeats a run with XLA attention only when the cuDNN run exits non-zero: a part that fails (cuDNN
  # missing) must say so in the exit status, after the other parts have run.
  tool = load_tool("eval")
  ran = []
  monkeypatch.setattr(tool, "build", lambda *args: (None, None, None, "cpu"))

  def score(*args):
    raise RuntimeError("cuDNN is not detected.")

  monkeypatch.setattr(tool, "bench_score", score)
  monkeypatch.setattr(tool, "bench_pipeline", lambda *args: ran.append("pipeline"))
  assert tool.main(["--preset", "tiny", "--parts", "score,pipeline"]) == 1
  captured = capsys.readouterr()
  assert ran == ["pipeline"]
  rows = [json.loads(line) for line in captured.out.strip().splitlines()]
  assert dict(what="score", error="RuntimeError('cuDNN is not detected.')") in rows
  assert "error: parts failed: score" in captured.err
  assert tool.main(["--preset", "tiny", "--parts", "pipeline"]) == 0


def test_bench_model_puts_the_transformers_peer_and_its_tokens_on_cuda_when_torch_sees_a_gpu(monkeypatch, load_tool):
  torch = pytest.importorskip("torch")
  tool = load_tool("model")
  if torch.cuda.is_available():
    _, peer, _ = tool.bench("tiny", 1, 8, "float32", steps=1, warmup=0, scan_layers=True)
    assert peer.device.startswith("cuda"), peer
    return
  # On this machine PyTorch has no GPU: told it has one, the peer must be moved there (and fail to), before any
  # timing; it used to stay on the CPU and time torch-on-CPU against JAX on the GPU.
  monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
  with pytest.raises((AssertionError, RuntimeError), match="CUDA|NVIDIA"):
    tool.bench("tiny", 1, 8, "float32", steps=1, warmup=0, scan_layers=True)
