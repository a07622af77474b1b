"""`python -m optiml_jax.plan`: flags, mesh resolution, the simulated-device environment and exit codes.

JAX is imported in this process, so `plan.main` re-runs itself in a subprocess with the topology's device
count: these tests exercise that path. The opt-30b / opt-175b plans behind the README table are `slow`.
"""

import json
import pathlib
import sys

import jax
import pytest

from optiml_jax import plan

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
QUICKSTART = str(REPO_ROOT / "gin" / "quickstart.gin")


def test_plan_environment_forces_cpu_devices_and_keeps_other_flags():
  env = plan.plan_environment(128, {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_foo=1",
      "PATH": "/bin"
  })
  assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=128"]
  assert env["JAX_PLATFORMS"] == "cpu" and env["PATH"] == "/bin"
  assert plan.plan_environment(8, {})["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_mesh_flag_and_resolution():
  assert plan.parse_mesh("1,-1,8") == (1, -1, 8)
  for bad in ("1,2", "a,b,c", "1,0,8", "-1,-1,8"):
    with pytest.raises(plan.PlanError, match="--mesh"):
      plan.parse_mesh(bad)
  assert plan.resolve_mesh((1, -1, 8), 128, rescale=False) == ((1, 16, 8), None)
  assert plan.resolve_mesh((1, 16, 8), 128, rescale=False) == ((1, 16, 8), None)
  mesh, note = plan.resolve_mesh((1, 32, 8), 128, rescale=True)  # a gin mesh for 256 chips
  assert mesh == (1, 16, 8) and "for 256 chips" in note
  with pytest.raises(plan.PlanError, match="has 256 devices but the topology has 128 chips"):
    plan.resolve_mesh((1, 32, 8), 128, rescale=False)
  with pytest.raises(plan.PlanError, match="not divisible"):
    plan.resolve_mesh((1, -1, 3), 128, rescale=False)


def test_fitting_plan_exits_0_and_writes_json(tmp_path, capfd):
  assert "jax" in sys.modules and jax.device_count() < 8  # so plan.main must re-execute itself
  out = tmp_path / "plan.json"
  code = plan.main([
      f"--gin_file={QUICKSTART}", "--topology=v5e-8", "--mesh=1,4,2", "--batch=16", "--microbatches=2",
      "--gin.model_config.remat_policy='full'", "--no_flops_probe", f"--json_out={out}"
  ])
  printed = capfd.readouterr().out
  assert code == 0, printed
  assert "FITS" in printed and "compiled (XLA:CPU)" in printed
  report = json.loads(out.read_text())
  assert report["topology"]["chips"] == 8 and report["plan"]["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
  assert report["plan"]["num_microbatches"] == 2 and report["plan"]["rows_per_device"] == 2
  assert report["plan"]["seq_len"] == 128  # TASK_FEATURE_LENGTHS of quickstart.gin
  assert report["plan"]["lm_head_positions"] == 32  # compiled as the trainer runs it (quickstart.gin)
  assert report["plan"]["nonfinite_guard"] == "select"  # "auto" for a TPU, though compiled on CPU devices here
  assert report["model"]["remat_policy"] == "full"  # the --gin. override
  assert report["fits"] and report["fit_by"] == "compiled"
  assert report["compiled"]["argument_bytes"] > report["analytic"]["params"] > 0
  assert report["flops_per_device"]["compiled_probe"] is None  # --no_flops_probe


def _host_rows(capfd, *flags):
  code = plan.main([*flags, "--no_compile", "--json_out=-"])
  report = json.loads(capfd.readouterr().out)
  assert code == 0, report
  return report["plan"]["host_rows"], report["plan"]["notes"]


def test_data_line_gives_each_host_the_rows_its_chips_hold_on_the_slice(capfd):
  # jax.make_mesh places the mesh over a TPU slice's chips by their place in the torus, not host by host (hosts
  # hold 2x2x1 blocks of chips). The figures below are those of a simulation of the slices' jax.devices() fed to
  # JAX's mesh code, independent of the planner: 175B's (1, 32, 8) on v4-512's 4x8x8 chips gives each of the 64
  # hosts 8 rows, 0-3 and 32-35 on host 0, in 16 distinct sets (laid out host by host: 4 rows, 32 blocks).
  host_rows, notes = _host_rows(capfd, f"--gin_file={REPO_ROOT / 'gin' / 'optiml_175b.gin'}", "--topology=v4-512")
  assert host_rows == {
      "rows_per_host": 8,
      "row_blocks": 16,
      "host_0_rows": [[0, 4], [32, 36]],
      "layout": "jax.make_mesh's order of the 4x8x8 chips, 2x2x1 per host"
  }
  assert any("16 sets of 8 rows over 64 hosts: 4 hosts hold each set" in note for note in notes), notes
  assert "host 0: rows 0-3, 32-35;" in plan.data_line(64, host_rows)
  # 30B's (1, 16, 4) on v4-128's 4x4x4: 32 rows per host in 8 sets (host by host: 16 rows, 16 blocks).
  host_rows, _ = _host_rows(capfd, f"--gin_file={REPO_ROOT / 'gin' / 'optiml_30b.gin'}", "--topology=v4-128")
  assert (host_rows["rows_per_host"], host_rows["row_blocks"], host_rows["host_0_rows"]) == (32, 8, [[0, 16], [64, 80]])


def test_data_line_on_a_small_slice_follows_the_axes_jax_make_mesh_gives_each_side(capfd):
  # v4-32 (2x2x4: 4 hosts, one per z): tensor 8 takes x and z, so each host's chips span both fsdp shards and
  # every host feeds the whole batch. Tensor 4 takes z alone: each host one fsdp shard of its own.
  host_rows, notes = _host_rows(capfd, f"--gin_file={QUICKSTART}", "--topology=v4-32", "--mesh=1,2,8", "--batch=16")
  assert (host_rows["rows_per_host"], host_rows["row_blocks"]) == (16, 1)
  assert any("do not split the batch over the 4 hosts: each holds it all" in note for note in notes), notes
  host_rows, notes = _host_rows(capfd, f"--gin_file={QUICKSTART}", "--topology=v4-32", "--mesh=1,4,4", "--batch=16")
  assert (host_rows["rows_per_host"], host_rows["row_blocks"], host_rows["host_0_rows"]) == (4, 4, [[0, 4]])
  assert not any("hosts hold each set" in note or "torus" in note for note in notes), notes


def test_data_line_is_host_by_host_on_gpus_and_tpu_slices_of_unknown_shape(capfd):
  # GPUs: jax.make_mesh orders them by device id, host after host. Tensor 4 within a host of 4, fsdp 2 across.
  host_rows, notes = _host_rows(capfd, f"--gin_file={QUICKSTART}", "--topology=h100:2x4", "--mesh=1,2,4", "--batch=16")
  assert host_rows == {
      "rows_per_host": 8,
      "row_blocks": 2,
      "host_0_rows": [[0, 8]],
      "layout": "host by host, GPUs in device id order"
  }
  assert not any("torus" in note for note in notes), notes
  # v4-24: 12 chips on 3 hosts, a shape this planner does not know: host by host, and a note says the slice's
  # own order can give a host other rows.
  host_rows, notes = _host_rows(capfd, f"--gin_file={QUICKSTART}", "--topology=v4-24", "--mesh=3,1,4", "--batch=12")
  assert (host_rows["rows_per_host"], host_rows["row_blocks"], host_rows["layout"]) == (4, 3, "host by host")
  assert any("physical shape of v4-24 is not known here" in note for note in notes), notes


def test_a_mesh_axis_no_side_of_the_torus_holds_is_laid_by_splitting_one(capfd):
  # v6e-64 is 8x8 chips and jax.make_mesh splits no side of a v6e slice: an axis of 4 (optiml_30b.gin's tensor)
  # has nowhere to go there, so the trainer's partitioning.make_mesh splits a side, as jax.make_mesh does on v5e.
  flags = [f"--gin_file={QUICKSTART}", "--mesh=1,16,4", "--batch=64"]
  v6e, _ = _host_rows(capfd, *flags, "--topology=v6e-64")
  v5e, _ = _host_rows(capfd, *flags, "--topology=v5e-64")
  assert v6e == v5e and (v6e["rows_per_host"], v6e["row_blocks"]) == (8, 8), v6e


def test_plan_that_does_not_fit_exits_1(capfd):
  code = plan.main(
      [f"--gin_file={QUICKSTART}", "--topology=v5e-4", "--no_compile", "--hbm_fraction=0.0001", "--json_out=-"])
  printed = capfd.readouterr().out
  assert code == 1, printed
  report = json.loads(printed)
  assert report["compiled"] is None and report["fit_by"] == "analytic"
  assert report["fits"] is False and report["analytic"]["peak"] > report["usable_bytes"]
  assert report["plan"]["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}  # quickstart's (-1, 1, 1)


def test_no_compile_plan_models_the_gin_lm_head_positions_and_loss_chunk_size(capfd):
  # quickstart.gin: lm_head_positions = 32, rows of 128, 1 row per device on v5e-4. --no_compile judges by the
  # analytic figure alone, so it must see the two settings the trainer compiles with.
  from optiml_jax.models import opt_config  # pylint: disable=g-import-not-at-top
  from optiml_jax.planning import analytic  # pylint: disable=g-import-not-at-top

  code = plan.main([
      f"--gin_file={QUICKSTART}", "--topology=v5e-4", "--no_compile", "--json_out=-",
      "--gin.PartitioningArgs.loss_chunk_size=64"
  ])
  report = json.loads(capfd.readouterr().out)
  assert code == 0 and report["plan"]["lm_head_positions"] == 32 and report["plan"]["loss_chunk_size"] == 64
  cfg = opt_config.OPTConfig.preset("tiny")
  shape = analytic.StepShape(4, 128, 1, 4, 1, 1)
  assert report["analytic"]["logits_working"] == analytic.lm_head_working(
      cfg, analytic.StepShape(4, 128, 1, 4, 1, 1, lm_head_positions=32, loss_chunk_size=64))
  assert report["analytic"]["logits_working"] not in (analytic.lm_head_working(cfg, shape),
                                                      analytic.estimate_memory(cfg, shape, params_bytes=0,
                                                                               opt_state_bytes=0).logits_working)
  assert "\nlm head    at 32 gathered positions of 128 or at all of them (a lax.cond, both branches counted); " \
      "the loss 64 positions at a time\n" in plan.format_report(report)


def test_gpu_usable_memory_is_what_jaxs_allocator_gives_a_run():
  h100, v4 = (plan.topology_lib.parse_topology(name) for name in ("h100:1x8", "v4-16"))
  # No fraction set: JAX's GPU pool is 75% of the card (the trainer sets none); a TPU keeps 95%.
  share = plan.memory_share(h100, None, {})
  assert (share.fraction, share.note) == (0.75, None) and "JAX's default" in share.source
  assert plan.memory_share(v4, None, {"XLA_CLIENT_MEM_FRACTION": "0.5"}).fraction == 0.95
  # Either name of the fraction, as jaxlib reads it.
  assert plan.memory_share(h100, None,
                           {"XLA_CLIENT_MEM_FRACTION": "0.9"}) == plan.MemoryShare(0.9, "XLA_CLIENT_MEM_FRACTION")
  assert plan.memory_share(h100, None, {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".6"}).fraction == 0.6
  # --hbm_fraction above the run's pool is planned as asked, with a note saying how to give the run that much.
  share = plan.memory_share(h100, 0.95, {})
  assert share.fraction == 0.95 and "XLA_CLIENT_MEM_FRACTION=0.95" in share.note
  assert plan.memory_share(h100, 0.7, {}).note is None
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 " in plan.memory_share(h100, 0.9, {
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.8"
  }).note
  for environ, message in (({
      "XLA_CLIENT_MEM_FRACTION": "0.9",
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"
  }, "both set"), ({
      "XLA_CLIENT_MEM_FRACTION": "1.5"
  }, "XLA_CLIENT_MEM_FRACTION='1.5'"), ({
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "most"
  }, "XLA_PYTHON_CLIENT_MEM_FRACTION='most'")):
    with pytest.raises(plan.PlanError, match=message):
      plan.memory_share(h100, None, environ)


def test_gpu_plan_judges_by_the_memory_fraction_of_its_environment(capfd, monkeypatch):
  monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
  monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.6")
  code = plan.main([f"--gin_file={QUICKSTART}", "--topology=a100-40gb:1x4", "--no_compile", "--json_out=-"])
  report = json.loads(capfd.readouterr().out)
  assert code == 0 and report["hbm_fraction"] == 0.6 and report["hbm_fraction_source"] == "XLA_CLIENT_MEM_FRACTION"
  assert report["usable_bytes"] == int(0.6 * 40 * 2**30)
  assert "(60% of 40 GiB: XLA_CLIENT_MEM_FRACTION)" in plan.format_report(report)
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")  # jaxlib would refuse to start: so does the plan
  assert plan.main([f"--gin_file={QUICKSTART}", "--topology=a100-40gb:1x4", "--no_compile"]) == 2
  assert "both set" in capfd.readouterr().err


def test_configuration_errors_exit_2(capfd):
  assert plan.main([f"--gin_file={QUICKSTART}", "--topology=v4-12"]) == 2
  assert "multiples of 8" in capfd.readouterr().err
  assert plan.main([f"--gin_file={QUICKSTART}", "--topology=v5e-8", "--hbm_fraction=1.5"]) == 2
  assert "--hbm_fraction" in capfd.readouterr().err
  # A batch that cannot be laid out: 6 rows over data x fsdp = 4.
  assert plan.main([f"--gin_file={QUICKSTART}", "--topology=v5e-4", "--batch=6", "--no_compile"]) == 2
  assert "does not divide over data x fsdp = 4" in capfd.readouterr().err


def test_a_json_out_that_cannot_be_written_exits_2_naming_it_before_planning(tmp_path, capfd, monkeypatch):
  # Checked in this process, before the plan re-runs itself with the topology's devices.
  monkeypatch.setattr(plan.subprocess, "call", lambda *a, **k: pytest.fail("the plan was made"))
  afile = tmp_path / "afile"
  afile.write_text("x")
  cases = [(tmp_path / "nodir" / "plan.json", f"the folder {tmp_path / 'nodir'} does not exist"),
           (afile / "plan.json", f"the folder {afile} does not exist (or is not a folder)"), (tmp_path, "is a folder")]
  for out, reason in cases:
    code = plan.main([f"--gin_file={QUICKSTART}", "--topology=v5e-8", "--no_compile", f"--json_out={out}"])
    err = capfd.readouterr().err
    assert code == 2 and err.startswith(f"error: --json_out {out}: {reason}"), err
  assert not (tmp_path / "nodir").exists()


@pytest.mark.skipif(not pathlib.Path("/dev/full").exists(), reason="needs /dev/full, where every write fails")
def test_a_report_that_fails_to_write_is_an_error_naming_the_file_not_a_traceback(capfd):
  code = plan.main([f"--gin_file={QUICKSTART}", "--topology=v5e-4", "--no_compile", "--json_out=/dev/full"])
  captured = capfd.readouterr()
  assert "FITS" in captured.out
  assert code == 2 and captured.err.splitlines()[-1].startswith(
      "error: --json_out /dev/full: cannot write the report (No space left on device)"), captured.err
  assert "Traceback" not in captured.err


def _plan_json(capfd, *flags):
  code = plan.main(list(flags) + ["--no_flops_probe", "--json_out=-"])
  return code, json.loads(capfd.readouterr().out)


@pytest.mark.slow
def test_opt_175b_on_128_chips_needs_microbatches_and_sequence_parallelism(capfd):
  gin_file = str(REPO_ROOT / "gin" / "optiml_175b.gin")
  code, shipped = _plan_json(capfd, f"--gin_file={gin_file}", "--topology=v4-256")
  assert code == 1 and shipped["plan"]["mesh"] == {"data": 1, "fsdp": 16, "tensor": 8}
  # 8 microbatches (1 row per device) and sequence parallelism: the analytic peak fits 95% of 32 GiB; XLA:CPU's
  # (an upper bound: it keeps the saved bfloat16 layer inputs in float32 too) is at the edge of it.
  code, tuned = _plan_json(capfd, f"--gin_file={gin_file}", "--topology=v4-256", "--microbatches=8",
                           "--sequence_parallel", "--fit_by=analytic")
  assert code == 0, tuned
  assert tuned["compiled"]["peak"] < 0.6 * shipped["compiled"]["peak"]
  assert tuned["compiled"]["peak"] < tuned["hbm_bytes"]


@pytest.mark.slow
def test_opt_30b_shipped_config_fits_v4_128(capfd):
  code, report = _plan_json(capfd, f"--gin_file={REPO_ROOT / 'gin' / 'optiml_30b.gin'}", "--topology=v4-128")
  assert code == 0 and report["plan"]["mesh"] == {"data": 1, "fsdp": 16, "tensor": 4}, report


# 30 s on 2 cores (it compiles opt-125m's step for 8 devices): slow.
@pytest.mark.slow
def test_analytic_verdict_counts_both_branches_of_lm_head_positions(capfd):
  # opt-125m in bfloat16, 2 rows of 2048 per device: the lax.cond of lm_head_positions keeps each branch's
  # softmax from the forward to the backward pass, so the compiled step needs more than without it. The analytic
  # figure (what --no_compile and --fit_by=analytic judge by) said 4.46 GiB and "FITS" in 4.8 GiB; it counts
  # both branches now and stays above XLA's.
  code, report = _plan_json(capfd, f"--gin_file={REPO_ROOT / 'gin' / 'optiml_1.3b.gin'}", "--topology=v4-16",
                            "--gin.model_config.preset='opt-125m'", "--batch=16", "--microbatches=1",
                            "--gin.PartitioningArgs.lm_head_positions=128", "--hbm_fraction=0.15", "--fit_by=analytic")
  assert report["plan"]["lm_head_positions"] == 128 and report["plan"]["rows_per_device"] == 2
  assert report["analytic"]["peak"] >= report["compiled"]["peak"], (report["analytic"], report["compiled"])
  assert code == 1 and not report["fits_analytic"] and not report["fits_compiled"]
