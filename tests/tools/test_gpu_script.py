"""tools/benchmarks/gpu.sh, dry-run with a stand-in interpreter: which runs each switch setting makes, and that
every lever is measured against a plain step of the same command; and (slow) every command of it run for real on
this CPU with its sizes shrunk, so that a GPU call never finds a flag the scripts do not take."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# Inline Python (the script's summaries) runs for real; a benchmark prints one JSON line, with a Hugging Face
# side when asked for `--parts hf,ours`, as tools/benchmarks/train.py does.
STUB = f"""#!/usr/bin/env bash
case "$1" in
  -c|-|-m) exec {sys.executable} "$@";;
esac
if [[ "$*" == *"--parts hf,ours"* ]]; then hf='{{"tokens_per_s": 100, "peak_mib": 5.0}}'; ratio=1.5
else hf=null; ratio=null; fi
echo "{{\\"what\\": \\"bench_train\\", \\"ours\\": {{\\"tokens_per_s\\": 150, \\"temp_mib\\": 1.0, \\"mfu\\": 0.1}}, \
\\"hf_torch\\": $hf, \\"ratio_ours_over_hf\\": $ratio}}"
"""


def _dry_run(tmp_path, **switches):
  stub = tmp_path / "python"
  stub.write_text(STUB)
  stub.chmod(0o755)
  out = tmp_path / "out"
  env = {**os.environ, "PYTHON": str(stub), "OUT_DIR": str(out), **switches}
  result = subprocess.run(["bash", "tools/benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  labels = [json.loads(line)["label"] for line in (out / "bench.jsonl").read_text().splitlines()]
  return labels, result.stdout


def test_the_levers_alone_bring_their_own_plain_step(tmp_path):
  labels, stdout = _dry_run(tmp_path, OPT="0", LLAMA="0", TESTS="0", PROFILE="0", COMPARE_XLA="0")
  assert labels == [
      "lever-plain", "lever-no-padding-mask", "lever-chunked-loss", "lever-remat-attention", "lever-update-1.3b",
      "lever-update-1.3b-cond", "lever-packed", "lever-packed-cudnn", "lever-packed-all", "lever-packed-125m",
      "lever-packed-125m-cudnn"
  ]
  # The packed rows run against transformers' packed step in the same process, and the summary says so.
  assert "lever-packed 150 tokens/s, temp 1.0 MiB, peak None MiB; HF 100 tokens/s, peak 5.0 MiB; ours / HF 1.5" in (
      stdout)


def test_with_the_opt_figures_the_levers_use_their_plain_step(tmp_path):
  labels, _ = _dry_run(tmp_path, LLAMA="0", TESTS="0", PROFILE="0", COMPARE_XLA="0")
  assert "train-1.3b" in labels and "lever-plain" not in labels
  assert labels.index("train-1.3b") < labels.index("lever-no-padding-mask")


def test_more_levers_and_llama_take_commands_of_their_own(tmp_path):
  labels, _ = _dry_run(tmp_path, OPT="0", LLAMA="0", TESTS="0", LEVERS="0", COMPARE_XLA="0", MORE_LEVERS="1")
  assert labels == [
      "lever-plain", "lever-unrolled", "lever-guard-cond", "lever-xla-enable_latency_hiding_scheduler",
      "lever-xla-enable_command_buffer", "lever-xla-enable_triton_gemm"
  ]
  labels, _ = _dry_run(tmp_path, OPT="0", TESTS="0", LEVERS="0", COMPARE_XLA="0")
  assert labels == ["train-llama-1b", "score-llama-1b"]


def test_lever_labels_pick_levers_for_a_call_of_their_own(tmp_path):
  labels, _ = _dry_run(tmp_path, OPT="0", LLAMA="0", TESTS="0", PROFILE="0", COMPARE_XLA="0",
                       LEVER_LABELS="lever-remat-attention,lever-packed-cudnn, lever-update-1.3b-cond")
  assert labels == ["lever-plain", "lever-remat-attention", "lever-update-1.3b-cond", "lever-packed-cudnn"]


# Runs the real interpreter with the GPU's command lines shrunk to tiny models and rows: the flags stay as written.
SHRINK = f"""#!/usr/bin/env bash
args=()
prev=""
for a in "$@"; do
  case "$prev" in
    --preset) case "$a" in llama*) a=llama-tiny;; *) a=tiny;; esac;;
    --batch) a=2;;
    --seq) (( a > 256 )) && a=256;;
    --steps) a=2;;
    --lm_head_positions|--loss_chunk_size) a=64;;
  esac
  args+=("$a")
  prev=$a
done
exec {sys.executable} "${{args[@]}}"
"""


@pytest.mark.slow
def test_every_command_runs_at_tiny_sizes_and_cudnn_runs_fall_back_to_xla(tmp_path):
  stub = tmp_path / "python"
  stub.write_text(SHRINK)
  stub.chmod(0o755)
  out = tmp_path / "out"
  env = dict(os.environ, PYTHON=str(stub), OUT_DIR=str(out), ANCHOR=str(tmp_path / "no_anchor.py"), TESTS="0",
             MORE_LEVERS="1")
  result = subprocess.run(["bash", "tools/benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
  assert result.returncode == 0, result.stderr[-2000:]
  log = (out / "bench.log").read_text()
  exits = dict(re.findall(r"^=== (\S+): exit (\d+) after", log, flags=re.M))
  ours = [label for label in exits if not label.startswith("anchor-") and not label.endswith("-xla")]
  assert len(ours) >= 24, sorted(exits)  # every run of every switch, 24 today (the anchor is ../shared's: left out)
  failed = [label for label in ours if exits[label] != "0" and exits.get(f"{label}-xla") != "0"]
  assert not failed, [(label, log[log.index(f"=== {label}:"):][:3000]) for label in failed[:2]]
  recorded = {json.loads(line)["label"] for line in (out / "bench.jsonl").read_text().splitlines()}
  assert all(label in recorded or f"{label}-xla" in recorded for label in ours), sorted(recorded)
