r"""Where a train step's time goes: a few steps of the trainer's step traced with `jax.profiler`, every op's time
put in one category.

Where it sits: a developer tool beside tools/benchmarks/train.py, whose step it builds (`train.build_ours`: the
jit-ed step of `loop.build_program`, the same flags); nothing imports it. It runs --warmup steps, traces --steps
more, reads the trace (`jax.profiler.ProfileData`) and matches each op event to its instruction in the compiled
step's HLO, whose metadata names the JAX scope it came from (`jvp(OPT)/.../layers/self_attn/...`). Categories,
first rule that matches:

  copies and dynamic slices  copy, transpose, (dynamic-)slice, dynamic-update-slice, concatenate, pad, and fusions
                             of nothing else (the scanned layers' parameter slices and stacked-activation writes)
  optimizer update           ops outside the differentiated function: gradient scaling, the global norm, AdamW,
                             the non-finite guard
  LM head and loss           the LM head (`lm_head`, OPT's tied `embed_tokens.attend`) and the cross-entropy
  attention forward          inside `self_attn` but not its q/k/v/output projections: scores, mask, softmax,
                             the weighted values, rotary embeddings (a cuDNN attention call is one op)
  attention backward         the same under `transpose(...)` (the backward pass, recomputation included)
  matmuls                    the other dot/convolution ops, cuBLAS calls and GEMM fusions (projections, MLP)
  norms and elementwise      the rest of the model: layer/RMS norms, activations, residual adds, dropout
  other                      embeddings lookups, loop control, what matched nothing above
  host gaps                  the step's wall time when no op ran (launch overhead, host work, waits)

ms per step counts each op's own time (a loop's or call's time is its ops'); share is of the sum of all rows, so
on a GPU (one op at a time) it is a share of the wall time; on a CPU, whose ops run on several threads at once,
a share of the time spent. Prints the table, then one JSON line.

  python tools/benchmarks/profile_step.py                  # CPU: opt-125m cut to 2 layers, 1 x 256
  python tools/benchmarks/profile_step.py --preset opt-125m --batch 16 --seq 2048 --attention_impl cudnn  # GPU
  python tools/benchmarks/profile_step.py --preset opt-1.3b --batch 8 --seq 2048 --remat dots --attention_impl cudnn
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping

import train  # this folder (on the path as the script's): the step, its flags and the batch

CATEGORIES = ("matmuls", "attention forward", "attention backward", "norms and elementwise", "LM head and loss",
              "optimizer update", "copies and dynamic slices", "other", "host gaps")
MOVE_OPS = frozenset(("copy", "copy-start", "copy-done", "transpose", "slice", "dynamic-slice", "dynamic-update-slice",
                      "concatenate", "pad"))
SHAPE_OPS = frozenset(
    ("parameter", "constant", "tuple", "get-tuple-element", "bitcast", "reshape", "broadcast", "iota", "convert"))
MATMUL_OPS = frozenset(("dot", "convolution"))
CONTAINERS = frozenset(("while", "conditional", "call", "async-start", "async-done"))  # their time is their ops'
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*.*?\s(?P<opcode>[a-z][a-z0-9\-]*)\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")  # unindented: a computation's header


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction of the compiled step, as much of it as the categories read."""

  name: str
  opcode: str
  op_name: str = ""  # metadata: the JAX scope and primitive it came from
  calls: tuple[str, ...] = ()  # the computations it runs (a fusion's fused computation)
  target: str = ""  # a custom call's target, or a fusion's backend kind (e.g. __triton_gemm)


def parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[Instruction]]]:
  """The instructions of an HLO module's text by name, and each computation's instructions."""
  by_name: dict[str, Instruction] = {}
  computations: dict[str, list[Instruction]] = collections.defaultdict(list)
  current = ""
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header is not None:
      current = header.group("name")
      continue
    found = _INSTRUCTION.match(line)
    if found is None:
      continue
    op_name = re.search(r'op_name="([^"]*)"', line)
    calls = re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?([^,}\s]+(?:,\s*%[\w.\-]+)*)", line)
    target = re.search(r'custom_call_target="([^"]*)"', line) or re.search(r'"kind":"([^"]*)"', line)
    instruction = Instruction(name=found.group("name"), opcode=found.group("opcode"),
                              op_name=op_name.group(1) if op_name else "",
                              calls=tuple(c.strip().lstrip("%") for group in calls for c in group.split(",")),
                              target=target.group(1) if target else "")
    by_name[instruction.name] = instruction
    computations[current].append(instruction)
  return by_name, dict(computations)


def _inner_opcodes(instruction: Instruction, computations: Mapping[str, list[Instruction]]) -> set[str]:
  """The opcodes a fusion runs (its own for any other instruction), custom-call targets as `custom-call:T`."""
  if instruction.opcode != "fusion":
    return {instruction.opcode, f"custom-call:{instruction.target}"} if instruction.target else {instruction.opcode}
  found: set[str] = set()
  for called in instruction.calls:
    for inner in computations.get(called, ()):
      found |= _inner_opcodes(inner, computations)
  if instruction.target:
    found.add(f"custom-call:{instruction.target}")
  return found


def _is_matmul(opcodes: set[str]) -> bool:
  targets = " ".join(o for o in opcodes if o.startswith("custom-call:")).lower()
  return bool(opcodes & MATMUL_OPS) or any(k in targets for k in ("gemm", "matmul", "cublas"))


def _is_attention_kernel(opcodes: set[str]) -> bool:
  targets = " ".join(o for o in opcodes if o.startswith("custom-call:")).lower()
  return "cudnn" in targets and any(k in targets for k in ("fmha", "attention", "flash"))


def classify(instruction: Instruction, computations: Mapping[str, list[Instruction]]) -> str:
  """The category (CATEGORIES) an executed instruction's time goes to."""
  opcodes = _inner_opcodes(instruction, computations)
  scope = instruction.op_name
  if opcodes - SHAPE_OPS and not (opcodes - SHAPE_OPS) - MOVE_OPS:
    return "copies and dynamic slices"
  if "jvp(" not in scope and "transpose(" not in scope and not _is_attention_kernel(opcodes):
    return "optimizer update" if scope else "other"
  if "cross_entropy" in scope or "lm_head" in scope or "embed_tokens.attend" in scope:
    return "LM head and loss"
  in_attention = "self_attn" in scope and not any(f"/{p}/" in scope or scope.endswith(f"/{p}") for p in PROJECTIONS)
  if _is_attention_kernel(opcodes) or in_attention:
    backward = "transpose(" in scope or "bwd" in instruction.target.lower()
    return "attention backward" if backward else "attention forward"
  if _is_matmul(opcodes):
    return "matmuls"
  if "/layers/" in scope or "norm" in scope:
    return "norms and elementwise"
  return "other"


def _union_ns(intervals: list[tuple[int, int]]) -> int:
  """Length of the union of [start, end) intervals."""
  total, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start > reach:
      total += end - start
      reach = end
    elif end > reach:
      total += end - reach
      reach = end
  return total


def op_events(xspace: Any, module: str) -> Iterable[tuple[str, int, int]]:
  """(instruction name, start ns, duration ns) of every op event of `module` in a `jax.profiler.ProfileData`:
  events carrying the `hlo_op` stat (CPU threads; GPU XLA ops) and, on a device's "XLA Ops" line, the events
  themselves (named after their instruction)."""
  for plane in xspace.planes:
    for line in plane.lines:
      xla_ops_line = line.name == "XLA Ops"
      for event in line.events:
        stats = dict(event.stats)
        name = stats.get("hlo_op") or (event.name if xla_ops_line else None)
        if not name or stats.get("hlo_module", module) != module:
          continue
        yield str(name), int(event.start_ns), int(event.duration_ns)


def summarize(events: Iterable[tuple[str, int, int]], instructions: Mapping[str, Instruction],
              computations: Mapping[str,
                                    list[Instruction]], steps: int, wall_s: float, top: int = 10) -> dict[str, Any]:
  """ms per step and share per category, with host gaps = wall time minus the time any op ran; and the `top`
  instructions by time, each with its category and scope."""
  per_op: collections.Counter[str] = collections.Counter()
  intervals = []
  for name, start, duration in events:
    instruction = instructions.get(name)
    if instruction is not None and instruction.opcode in CONTAINERS:
      continue
    intervals.append((start, start + duration))
    per_op[name] += duration
  # Each distinct instruction is classified once (a trace holds it once per step and layer).
  category = {name: classify(instructions[name], computations) if name in instructions else "other" for name in per_op}
  per_category: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
  for name, ns in per_op.items():
    per_category[category[name]] += ns
  unmatched_ns = sum(ns for name, ns in per_op.items() if name not in instructions)
  top_ops = []
  for name, ns in per_op.most_common(top):
    instruction = instructions.get(name)
    top_ops.append(
        dict(op=name, ms_per_step=round(ns / steps / 1e6, 3), category=category[name],
             opcode=instruction.opcode if instruction else "", scope=instruction.op_name if instruction else ""))
  busy_ns = _union_ns(intervals)
  per_category["host gaps"] = max(0.0, wall_s * 1e9 - busy_ns)
  total = sum(per_category.values()) or 1.0
  rows = {
      c: {
          "ms_per_step": round(ns / steps / 1e6, 3),
          "share": round(ns / total, 4)
      } for c, ns in per_category.items()
  }
  return dict(rows=rows, step_ms=round(wall_s / steps * 1e3, 3), busy_ms_per_step=round(busy_ns / steps / 1e6, 3),
              ops=len(intervals), unmatched_ms_per_step=round(unmatched_ns / steps / 1e6, 3), top_ops=top_ops)


def format_table(summary: Mapping[str, Any]) -> str:
  lines = [f"{'category':<28}{'ms/step':>12}{'share':>9}"]
  for category, row in summary["rows"].items():
    lines.append(f"{category:<28}{row['ms_per_step']:>12.3f}{100 * row['share']:>8.1f}%")
  lines.append(f"{'step (wall)':<28}{summary['step_ms']:>12.3f}")
  if summary.get("top_ops"):
    lines.append("\nslowest ops (ms/step, category, opcode, scope):")
    for op in summary["top_ops"]:
      scope = op["scope"] if len(op["scope"]) <= 90 else "..." + op["scope"][-87:]
      lines.append(f"  {op['ms_per_step']:>10.3f}  {op['category']:<26} {op['opcode']:<14} {scope or op['op']}")
  return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trace_dir", default=None, help="keep the trace here (for TensorBoard / xprof); "
                      "default: a temporary folder, removed")
  parser.add_argument("--top", type=int, default=10, help="list this many of the slowest ops")
  own, rest = parser.parse_known_args(argv)
  args = train.parse_args(rest)
  args.trace_dir, args.top = own.trace_dir, own.top
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top

  on_gpu = jax.default_backend() == "gpu"
  dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
  if args.layers is None and not on_gpu:
    args.layers = 2
  program, config, mesh, batch = train.build_ours(args, dtype)
  rng = jax.random.PRNGKey(0)
  with tempfile.TemporaryDirectory() as scratch, partitioning.mesh_context(mesh):
    trace_dir = pathlib.Path(args.trace_dir or scratch)
    state = program.init_fn(rng)
    hlo = program.train_fn.lower(state, batch, rng).compile().as_text()  # the same program the calls run
    instructions, computations = parse_hlo(hlo)
    for _ in range(max(1, args.warmup)):
      state, out = program.train_fn(state, batch, rng)
    jax.block_until_ready(out)
    with jax.profiler.trace(str(trace_dir)):
      started = time.perf_counter()
      for _ in range(args.steps):
        state, out = program.train_fn(state, batch, rng)
      jax.block_until_ready(out)
      wall_s = time.perf_counter() - started
    traces = sorted(trace_dir.glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not traces:
      print(f"error: jax.profiler wrote no trace under {trace_dir}", file=sys.stderr)
      return 1
    profile = jax.profiler.ProfileData.from_file(str(traces[-1]))
    module = hlo.split(",", 1)[0].split()[-1]  # "HloModule jit_train_step, ..."
    summary = summarize(op_events(profile, module), instructions, computations, args.steps, wall_s, args.top)
  print(f"{args.preset} ({config.num_hidden_layers} layers), {args.batch} x {args.seq}, {dtype}, remat "
        f"{args.remat}, attention {args.attention_impl or 'default'}, {jax.devices()[0].device_kind}: "
        f"{args.steps} traced steps, {summary['ops']} ops")
  print(format_table(summary))
  print(
      json.dumps(
          dict(what="profile_step", preset=args.preset, layers=config.num_hidden_layers, batch=args.batch, seq=args.seq,
               dtype=dtype, remat=args.remat, attention_impl=args.attention_impl,
               lm_head_positions=args.lm_head_positions, target_fraction=args.target_fraction,
               device=jax.devices()[0].device_kind, jax=jax.__version__, **summary)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
