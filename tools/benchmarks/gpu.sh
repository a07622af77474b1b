#!/usr/bin/env bash
# The GPU benchmarks of docs/benchmarks.md, in one call: ours and the Hugging Face PyTorch anchor, same card.
#
# Where it sits: a developer tool for a session that is lent one GPU for a few minutes. It runs, one process
# each (so neither framework holds memory the other needs):
#   0. the GPU-only tests and the model/inference tests (TESTS=0 skips them; log in OUT_DIR/bench.log);
#   1. ../shared/tools/gpu_anchor_bench.py (the peers: matmul peak, HF train opt-125m 16x2048 and opt-1.3b
#      8x2048, HF scoring opt-1.3b 32x512), from ANCHOR (default: device_carry/gpu_anchor_bench.py);
#   2. tools/benchmarks/train.py --parts ours at the same shapes (bf16 compute, cuDNN attention);
#   3. tools/benchmarks/eval.py --parts score at opt-1.3b 32x512 (also times transformers in the same process),
#      then --parts options (16 prompts of 1024 tokens, 4 options each: shared prompts vs a row per option);
#   4. the Llama family, which the anchor lacks, each against transformers in the same call: a Llama 3.2
#      1B-shaped train step (tools/benchmarks/train.py --preset llama-3.2-1b --parts hf,ours, 8 x 2048) and
#      scoring (eval.py --preset llama-3.2-1b --parts score, 32 x 512), random weights;
#   5. tools/benchmarks/profile_step.py on the opt-125m and opt-1.3b steps of 2. (PROFILE=0 skips it);
#   6. the step's levers, ours alone at opt-1.3b 8 x 2048 (LEVERS=0 skips them; against a plain step of the
#      same call: 2.'s, or one of their own when OPT=0 leaves 2. out): no padding mask, a chunked loss, remat
#      that also saves attention's output (the backward pass then runs no attention forward), the optimizer
#      update alone against optax's clipping (tools/benchmarks/update.py), and packed rows
#      (8 segments, 10% targets) plain, through cuDNN's packed layout instead of a dense mask, and with no mask,
#      a chunked loss and the LM head at 512 positions; the plain packed rows also against transformers in the
#      same process (its block-diagonal sdpa mask), at opt-1.3b and opt-125m 16 x 2048 (where the packed layout
#      runs too), the real workload beside the equal work of 2.; MORE_LEVERS=1 (off by default)
#      unrolled layers, the NaN guard as a lax.cond, and XLA's GPU flags (latency-hiding scheduler, no command
#      buffers, no Triton GEMMs), each through XLA_FLAGS for that process.
# If a cuDNN run fails, the same run is repeated with XLA attention, and the log says so. Every JSON line goes
# to OUT_DIR/bench.jsonl (as each run ends: a call cut short keeps what finished), every log to
# OUT_DIR/bench.log; a summary table is printed after 3. Each run logs its seconds. All of it is more than one
# 10-minute call; the switches OPT, LLAMA, TESTS, PROFILE, LEVERS, MORE_LEVERS and COMPARE_XLA (1 or 0) split it:
#
#   ANCHOR=device_carry/gpu_anchor_bench.py OUT_DIR=$OUT bash tools/benchmarks/gpu.sh          # everything
#   TESTS=0 LLAMA=0 LEVERS=0 COMPARE_XLA=0 OUT_DIR=$OUT bash tools/benchmarks/gpu.sh  # OPT figures, profiles
#   OPT=0 TESTS=0 LEVERS=0 COMPARE_XLA=0 OUT_DIR=$OUT bash tools/benchmarks/gpu.sh    # the Llama runs alone
set -uo pipefail

cd "$(dirname "$0")/../.."
ANCHOR=${ANCHOR:-device_carry/gpu_anchor_bench.py}
OUT_DIR=${OUT_DIR:-gpu_bench_out}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-10}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/bench.log
JSONL=$OUT_DIR/bench.jsonl
: > "$LOG"
: > "$JSONL"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

run() {  # run LABEL CMD...: logs the command and its output, keeps its JSON lines tagged with LABEL.
  local label=$1 start rc
  shift
  start=$(date +%s)
  echo "=== $label: $*" | tee -a "$LOG"
  "$@" > "$OUT_DIR/run.out" 2>&1
  rc=$?
  cat "$OUT_DIR/run.out" >> "$LOG"
  grep '^{' "$OUT_DIR/run.out" | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
  try:
    record = json.loads(line)
  except ValueError:
    continue
  print(json.dumps({"label": sys.argv[1], **record}))' "$label" >> "$JSONL"
  echo "=== $label: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
  rm -f "$OUT_DIR/run.out"
  return $rc
}

ours() {  # ours LABEL CMD... (with --attention_impl cudnn): falls back to XLA attention when cuDNN fails.
  local label=$1
  shift
  run "$label" "$@" --attention_impl cudnn || run "$label-xla" "$@" --attention_impl xla
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >> "$LOG" 2>&1
"$PYTHON" -c 'import jax, flax, optax, torch, transformers; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, "torch", torch.__version__, "transformers", transformers.__version__, jax.devices())' \
  2>&1 | tee -a "$LOG"

# First the tests that only a GPU runs (cuDNN attention against a float32 reference) and the model and
# inference tests on the GPU's kernels; TESTS=0 skips them. A failure is logged and the benchmarks go on.
if [[ "${TESTS:-1}" == 1 ]]; then
  tests=(tests/models/test_opt.py tests/models/test_packed_attention.py tests/evaluation/test_inference.py)
  [[ -f tests/models/test_llama.py ]] && tests+=(tests/models/test_llama.py)
  run tests "$PYTHON" -m pytest -q -rs "${tests[@]}"
  grep -E "passed|failed|^FAILED|^SKIPPED" "$LOG" | tail -8
fi

# OPT=0 or LLAMA=0 leave out that family's runs (a short lease can measure one family per call).
if [[ "${OPT:-1}" == 1 ]]; then
  run anchor-125m "$PYTHON" "$ANCHOR" --size 125m --batch 16 --seq 2048 --steps "$STEPS" --parts torch_peak,hf
  ours train-125m "$PYTHON" tools/benchmarks/train.py --preset opt-125m --layers 0 --batch 16 --seq 2048 \
    --dtype bfloat16 --steps "$STEPS" --warmup 2 --parts ours
  run anchor-1.3b "$PYTHON" "$ANCHOR" --size 1.3b --batch 8 --seq 2048 --steps "$STEPS" --parts hf
  ours train-1.3b "$PYTHON" tools/benchmarks/train.py --preset opt-1.3b --layers 0 --batch 8 --seq 2048 \
    --dtype bfloat16 --remat dots --steps "$STEPS" --warmup 2 --parts ours
  run anchor-score "$PYTHON" "$ANCHOR" --size 1.3b --batch 32 --seq 512 --steps "$STEPS" --parts score
  ours score-1.3b "$PYTHON" tools/benchmarks/eval.py --preset opt-1.3b --batch 32 --seq 512 --dtype bfloat16 \
    --steps "$STEPS" --warmup 2 --parts score
  run options-1.3b "$PYTHON" tools/benchmarks/eval.py --preset opt-1.3b --batch 16 --seq 1024 --dtype bfloat16 \
    --options 4 --option_tokens 8 --parts options
fi
if [[ "${LLAMA:-1}" == 1 ]]; then
  # Llama 3.2 1B shapes (16 layers, width 2048, 32 query heads over 8 key/value heads, 128256-token tied
  # vocabulary): transformers runs first in the same process, then ours, on the same batch.
  ours train-llama-1b "$PYTHON" tools/benchmarks/train.py --preset llama-3.2-1b --layers 0 --batch 8 --seq 2048 \
    --dtype bfloat16 --remat dots --steps "$STEPS" --warmup 2 --parts hf,ours
  ours score-llama-1b "$PYTHON" tools/benchmarks/eval.py --preset llama-3.2-1b --batch 32 --seq 512 --dtype bfloat16 \
    --steps "$STEPS" --warmup 2 --parts score
fi

"$PYTHON" - "$JSONL" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def find(label, what):
  for r in rows:
    if r["label"].startswith(label) and r.get("what", "").startswith(what):
      return r
def tps(r, side="ours"):
  if r and "examples_per_s" in r:
    return r["examples_per_s"]
  return None if not r else r.get("tokens_per_s") or (r.get(side) or {}).get("tokens_per_s")
print(f"{'measurement (options: examples/s)':<38}{'ours tok/s':>12}{'HF tok/s':>12}{'ratio':>8}")
for name, ours_row, hf_row in [
    ("train opt-125m 16x2048", find("train-125m", "bench_train"), find("anchor-125m", "hf_torch_opt_125m_train")),
    ("train opt-1.3b 8x2048", find("train-1.3b", "bench_train"), find("anchor-1.3b", "hf_torch_opt_1.3b_train")),
    ("score opt-1.3b 32x512 (anchor)", find("score-1.3b", "jax_score"), find("anchor-score", "hf_torch_opt_1.3b_score")),
    ("score opt-1.3b 32x512 (in-proc)", find("score-1.3b", "jax_score"), find("score-1.3b", "torch_score")),
    ("options opt-1.3b, shared vs rows", find("options-1.3b", "jax_score_options_shared"),
     find("options-1.3b", "jax_score_options_row")),
    ("train llama-3.2-1b 8x2048 (in-proc)", find("train-llama-1b", "bench_train"),
     find("train-llama-1b", "bench_train")),
    ("score llama-3.2-1b 32x512 (in-proc)", find("score-llama-1b", "jax_score"),
     find("score-llama-1b", "torch_score"))]:
  a, b = tps(ours_row), tps(hf_row, "hf_torch")
  ratio = f"{a / b:.2f}" if a and b else "n/a"
  label = ours_row["label"] if ours_row else "-"
  print(f"{name:<38}{a or 'n/a':>12}{b or 'n/a':>12}{ratio:>8}  ({label})")
EOF

# Where the step's time goes (issue: the profiled step), after the figures: PROFILE=0 leaves it out.
if [[ "${PROFILE:-1}" == 1 && "${OPT:-1}" == 1 ]]; then
  ours profile-125m "$PYTHON" tools/benchmarks/profile_step.py --preset opt-125m --layers 0 --batch 16 --seq 2048 \
    --dtype bfloat16 --steps 3 --warmup 2
  ours profile-1.3b "$PYTHON" tools/benchmarks/profile_step.py --preset opt-1.3b --layers 0 --batch 8 --seq 2048 \
    --dtype bfloat16 --remat dots --steps 3 --warmup 2
  grep -A 12 "^category" "$LOG" | tail -26
fi

# The levers of the step (trainer/step.py), each against a plain opt-1.3b step measured in the same call: 2.'s,
# or lever-plain when 2. did not run (OPT=0), so the levers can take a call of their own. LEVERS=0 leaves them
# out; MORE_LEVERS=1 (off by default) measures the others:
#   OPT=0 LLAMA=0 TESTS=0 PROFILE=0 COMPARE_XLA=0 OUT_DIR=$OUT bash tools/benchmarks/gpu.sh     # the levers
#   OPT=0 LLAMA=0 TESTS=0 LEVERS=0 COMPARE_XLA=0 MORE_LEVERS=1 OUT_DIR=$OUT bash tools/benchmarks/gpu.sh
# All of them are more than one 10-minute call: LEVER_LABELS (comma-separated labels, e.g.
# LEVER_LABELS=lever-remat-attention,lever-packed,lever-packed-cudnn) runs only those, beside the plain step.
if [[ "${LEVERS:-1}" == 1 || "${MORE_LEVERS:-0}" == 1 ]]; then
  wanted() {  # wanted LABEL: whether LEVER_LABELS (empty: every lever) names it
    [[ -z "${LEVER_LABELS:-}" || ",${LEVER_LABELS// /}," == *",$1,"* ]]
  }
  lever() {  # lever LABEL FLAGS...: the opt-1.3b step of 2. with FLAGS
    local label=$1
    shift
    wanted "$label" || [[ "$label" == lever-plain ]] || return 0
    ours "$label" "$PYTHON" tools/benchmarks/train.py --preset opt-1.3b --layers 0 --batch 8 --seq 2048 \
      --dtype bfloat16 --remat dots --steps "$STEPS" --warmup 2 --parts ours "$@"
  }
  grep -q '"label": "train-1.3b' "$JSONL" || lever lever-plain  # the baseline of this call
  if [[ "${LEVERS:-1}" == 1 ]]; then
    lever lever-no-padding-mask --no_padding_mask
    lever lever-chunked-loss --loss_chunk_size 512
    lever lever-remat-attention --remat dots_with_no_batch_dims_and_attention
    # The optimizer update alone at opt-1.3b's params, the recipe's clipping against optax's (bench_update), with
    # the NaN guard as select (the GPU default) and as cond.
    wanted lever-update-1.3b &&
      run lever-update-1.3b "$PYTHON" tools/benchmarks/update.py --preset opt-1.3b --guard select
    wanted lever-update-1.3b-cond &&
      run lever-update-1.3b-cond "$PYTHON" tools/benchmarks/update.py --preset opt-1.3b --guard cond
    lever lever-packed --packed 8 --target_fraction 0.1 --parts hf,ours
    lever lever-packed-cudnn --packed 8 --target_fraction 0.1 --packed_attention
    lever lever-packed-all --packed 8 --target_fraction 0.1 --no_padding_mask --loss_chunk_size 512 \
      --lm_head_positions 512
    wanted lever-packed-125m &&
      ours lever-packed-125m "$PYTHON" tools/benchmarks/train.py --preset opt-125m --layers 0 --batch 16 --seq 2048 \
      --dtype bfloat16 --steps "$STEPS" --warmup 2 --parts hf,ours --packed 8 --target_fraction 0.1
    wanted lever-packed-125m-cudnn &&
      ours lever-packed-125m-cudnn "$PYTHON" tools/benchmarks/train.py --preset opt-125m --layers 0 --batch 16 \
      --seq 2048 --dtype bfloat16 --steps "$STEPS" --warmup 2 --parts ours --packed 8 --target_fraction 0.1 \
      --packed_attention
  fi
  if [[ "${MORE_LEVERS:-0}" == 1 ]]; then
    lever lever-unrolled --no_scan
    lever lever-guard-cond --nonfinite_guard cond
    for flag in --xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer= \
      --xla_gpu_enable_triton_gemm=false; do
      name=${flag#--xla_gpu_}
      XLA_FLAGS="${XLA_FLAGS:-} $flag" lever "lever-xla-${name%%=*}"
    done
  fi
  grep '"bench_train"' "$JSONL" | grep -E '"label": "(train-1.3b|lever-)' | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
  record = json.loads(line)
  r, hf = record["ours"] or {}, record["hf_torch"]
  peer = "" if not hf else "; HF %s tokens/s, peak %s MiB; ours / HF %s" % (
      hf.get("tokens_per_s"), hf.get("peak_mib"), record.get("ratio_ours_over_hf"))
  layout = " (cuDNN packed layout)" if r.get("packed_layout") else ""
  print(record["label"] + layout, r.get("tokens_per_s"), "tokens/s, temp", r.get("temp_mib"), "MiB, peak",
        r.get("peak_mib"), "MiB" + peer)'
fi

# Last (a timeout here loses nothing above): the same opt-125m step with XLA's own attention, for comparison.
if [[ "${COMPARE_XLA:-1}" == 1 ]]; then
  run train-125m-xla-compare "$PYTHON" tools/benchmarks/train.py --preset opt-125m --layers 0 --batch 16 --seq 2048 \
    --dtype bfloat16 --steps "$STEPS" --warmup 2 --parts ours --attention_impl xla
  grep '"bench_train"' "$JSONL" | "$PYTHON" -c '
import json, sys
for line in sys.stdin:
  r = json.loads(line)
  print(r["label"], r["ours"]["tokens_per_s"], "tokens/s", "MFU", r["ours"]["mfu"])'
fi
