"""tools/benchmarks/profile_step.py: every op of a traced train step lands in the category its scope and kernel say."""
# ruff: noqa: E501  (the HLO text below keeps XLA's one line per instruction)

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STEP = "jit(train_step)"

# A hand-written compiled module in XLA's text form: the kinds of instruction a GPU or CPU step holds.
HLO = f"""HloModule jit_train_step, is_scheduled=true

%fused_fc1 (param_0: bf16[8,64], param_1: bf16[64,256]) -> bf16[8,256] {{
  %param_0 = bf16[8,64]{{1,0}} parameter(0)
  %param_1 = bf16[64,256]{{1,0}} parameter(1)
  ROOT %dot.1 = bf16[8,256]{{1,0}} dot(%param_0, %param_1), lhs_contracting_dims={{1}}, rhs_contracting_dims={{0}}
}}

%fused_slice (param_0.1: f32[2,64,256], param_1.1: s32[]) -> f32[64,256] {{
  %param_0.1 = f32[2,64,256]{{2,1,0}} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %constant.0 = s32[] constant(0)
  %dynamic-slice.1 = f32[1,64,256]{{2,1,0}} dynamic-slice(%param_0.1, %param_1.1, %constant.0, %constant.0), dynamic_slice_sizes={{1,64,256}}
  ROOT %bitcast.1 = f32[64,256]{{1,0}} bitcast(%dynamic-slice.1)
}}

%fused_norm (param_0.2: f32[8,64]) -> f32[8,64] {{
  %param_0.2 = f32[8,64]{{1,0}} parameter(0)
  ROOT %multiply.1 = f32[8,64]{{1,0}} multiply(%param_0.2, %param_0.2)
}}

%body (arg_tuple: (s32[], /*index=1*/f32[8,64])) -> (s32[], f32[8,64]) {{
  %arg_tuple = (s32[], f32[8,64]{{1,0}}) parameter(0)
  %fc1_fusion = bf16[8,256]{{1,0}} fusion(%a, %b), kind=kCustom, calls=%fused_fc1, metadata={{op_name="{STEP}/jvp(OPT)/while/body/closed_call/layers/fc1/dot_general"}}, backend_config={{"fusion_backend_config":{{"kind":"__triton_gemm"}}}}
  %slice_fusion = f32[64,256]{{1,0}} fusion(%c, %d), kind=kLoop, calls=%fused_slice, metadata={{op_name="{STEP}/jvp(OPT)/while/body/jit(dynamic_index_in_dim)/dynamic_slice"}}
  %q_gemm = (bf16[8,64]{{1,0}}, s8[0]{{0}}) custom-call(%a, %b), custom_call_target="__cublas$gemm", metadata={{op_name="{STEP}/jvp(OPT)/while/body/closed_call/layers/self_attn/q_proj/dot_general"}}
  %fmha = (bf16[2,4,16,16]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax", metadata={{op_name="{STEP}/jvp(OPT)/while/body/closed_call/layers/self_attn/dot_product_attention"}}
  %fmha_bwd = (bf16[2,4,16,16]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={{op_name="{STEP}/transpose(jvp(OPT))/while/body/closed_call/layers/self_attn/dot_product_attention"}}
  %softmax_fusion = f32[2,4,16,16]{{3,2,1,0}} fusion(%s), kind=kLoop, calls=%fused_norm, metadata={{op_name="{STEP}/transpose(jvp(OPT))/while/body/closed_call/layers/self_attn/vmap()/exp"}}
  %norm_fusion = f32[8,64]{{1,0}} fusion(%x), kind=kLoop, calls=%fused_norm, metadata={{op_name="{STEP}/jvp(OPT)/while/body/closed_call/layers/final_layer_norm/mul"}}
  ROOT %tuple.1 = (s32[], f32[8,64]{{1,0}}) tuple(%i, %norm_fusion)
}}

ENTRY %main.1 (p0: f32[8,64], /*index=1*/p1: f32[64,256]) -> f32[8,64] {{
  %p0 = f32[8,64]{{1,0}} parameter(0)
  %while.1 = (s32[], f32[8,64]{{1,0}}) while(%t), condition=%cond, body=%body, metadata={{op_name="{STEP}/jvp(OPT)/while"}}
  %head = f32[8,512]{{1,0}} fusion(%x, %w), kind=kOutput, calls=%fused_fc1, metadata={{op_name="{STEP}/jvp(OPT)/embed_tokens.attend/...d,vd->...v/dot_general"}}
  %xent = f32[8]{{0}} fusion(%l), kind=kLoop, calls=%fused_norm, metadata={{op_name="{STEP}/jvp(cross_entropy)/exp"}}
  %adam = f32[64,256]{{1,0}} fusion(%g, %m), kind=kLoop, calls=%fused_norm, metadata={{op_name="{STEP}/jit(_where)/select_n"}}
  %copy.7 = f32[64,256]{{0,1}} copy(%p1)
  ROOT %gather = f32[8,64]{{1,0}} fusion(%e), kind=kLoop, calls=%fused_norm, metadata={{op_name="{STEP}/jvp(OPT)/embed_tokens/jit(_take)/gather"}}
}}
"""

EXPECTED = {
    "fc1_fusion": "matmuls",
    "q_gemm": "matmuls",
    "slice_fusion": "copies and dynamic slices",
    "copy.7": "copies and dynamic slices",
    "fmha": "attention forward",
    "fmha_bwd": "attention backward",
    "softmax_fusion": "attention backward",
    "norm_fusion": "norms and elementwise",
    "head": "LM head and loss",
    "xent": "LM head and loss",
    "adam": "optimizer update",
    "gather": "other",
}


def _tool():
  if "profile_step_tool" not in sys.modules:
    sys.path.insert(0, str(REPO / "tools" / "benchmarks"))  # it imports its sibling train.py
    spec = importlib.util.spec_from_file_location("profile_step_tool",
                                                  REPO / "tools" / "benchmarks" / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
  return sys.modules["profile_step_tool"]


def test_every_kind_of_instruction_gets_the_category_of_its_scope_and_kernel():
  tool = _tool()
  instructions, computations = tool.parse_hlo(HLO)
  assert set(instructions["while.1"].calls) == {"cond", "body"}
  assert instructions["fmha"].target == "__cudnn$fmhaSoftmax" and instructions["fc1_fusion"].target == "__triton_gemm"
  assert {i.name for i in computations["body"]} >= set(EXPECTED) - {"head", "xent", "adam", "copy.7", "gather"}
  got = {name: tool.classify(instructions[name], computations) for name in EXPECTED}
  assert got == EXPECTED


def test_summary_counts_each_ops_time_once_and_the_gaps_between_them():
  tool = _tool()
  instructions, computations = tool.parse_hlo(HLO)
  ms = 1_000_000
  events = [
      ("while.1", 0, 10 * ms),  # a loop's time is its ops': not counted again
      ("fc1_fusion", 0, 4 * ms),
      ("fmha", 4 * ms, 2 * ms),
      ("adam", 5 * ms, 2 * ms),  # overlaps fmha by 1 ms (another stream or thread)
      ("xent", 8 * ms, 1 * ms),
  ]
  summary = tool.summarize(events, instructions, computations, steps=1, wall_s=0.012, top=2)
  rows = summary["rows"]
  assert rows["matmuls"]["ms_per_step"] == 4 and rows["attention forward"]["ms_per_step"] == 2
  assert rows["optimizer update"]["ms_per_step"] == 2 and rows["LM head and loss"]["ms_per_step"] == 1
  assert summary["busy_ms_per_step"] == 8  # [0, 7) and [8, 9)
  assert rows["host gaps"]["ms_per_step"] == 4  # 12 ms of wall time, 8 of them busy
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)
  assert [op["op"] for op in summary["top_ops"]] == ["fc1_fusion", "fmha"]
  assert summary["top_ops"][0]["category"] == "matmuls" and "fc1" in summary["top_ops"][0]["scope"]


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_a_traced_cpu_step_puts_its_time_in_the_model_s_categories(preset):
  result = subprocess.run([
      sys.executable, "tools/benchmarks/profile_step.py", "--preset", preset, "--batch", "2", "--seq", "32", "--steps",
      "2", "--warmup", "1", "--top", "3"
  ], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "slowest ops" in result.stdout
  report = json.loads(result.stdout.strip().splitlines()[-1])
  rows = report["rows"]
  assert report["layers"] == 2 and report["ops"] > 100 and report["unmatched_ms_per_step"] == 0
  for category in ("matmuls", "attention forward", "attention backward", "LM head and loss", "optimizer update",
                   "norms and elementwise"):
    assert rows[category]["ms_per_step"] > 0, (category, rows)
  assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)
  assert report["busy_ms_per_step"] <= report["step_ms"] and len(report["top_ops"]) == 3
