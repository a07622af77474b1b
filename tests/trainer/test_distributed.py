"""The same training on one device, on an 8-device (data, fsdp, tensor) = (2, 2, 2) mesh, and in two JAX
processes (jax.distributed over gloo on 127.0.0.1) gives the same per-step losses.

All three runs read the same global batches (`trainer.synthetic`: process i takes its block of rows of
batch p, a pure function of (seed, p)), so only the layout of the computation differs.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]
SEQ_LEN, VOCAB, STEPS, BATCH = 32, 512, 4, 8

# Runs in a fresh interpreter: argv = model_dir, mesh "d,f,t", num_microbatches, stop_at_step [, port, process_id];
# env LM_HEAD_POSITIONS sets PartitioningArgs.lm_head_positions.
SCRIPT = f"""
import json, os, sys
model_dir, mesh, micro = sys.argv[1], tuple(int(x) for x in sys.argv[2].split(",")), int(sys.argv[3])
lm_head_positions = int(os.environ["LM_HEAD_POSITIONS"]) if "LM_HEAD_POSITIONS" in os.environ else None
stop_at_step = int(sys.argv[4])
if len(sys.argv) > 5:
  from optiml_jax.trainer import runtime
  runtime.initialize_distributed(f"127.0.0.1:{{sys.argv[5]}}", 2, int(sys.argv[6]))
import jax
from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import config as c, loop, synthetic
model = opt_lib.OPTConfig.preset("tiny", vocab_size={VOCAB}, max_position_embeddings={SEQ_LEN}, dropout=0.0)
config = c.TrainConfig(
    data=c.DataArgs("synthetic", {{"inputs": {SEQ_LEN // 2}, "targets": {SEQ_LEN // 2}}}, {BATCH}),
    model=c.ModelArgs(model), checkpoint=c.CheckpointArgs(model_dir, save_every=2),
    run=c.RunArgs({STEPS}, stop_at_step=stop_at_step),
    optimizer=c.OptimizerArgs(learning_rate=1e-2, warmup_steps=1),
    partitioning=c.PartitioningArgs(mesh, num_microbatches=micro, lm_head_positions=lm_head_positions),
    logging=c.LoggingArgs(log_every=1, progress=False, tensorboard=False))
summary = loop.run(config, synthetic.factory({SEQ_LEN}, {VOCAB}))
print("DEVICES", jax.device_count(), "PROCESSES", jax.process_count(), "FIRST", summary.first_step, flush=True)
"""
MODEL = opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, dropout=0.0)
OPTIMIZER = config_lib.OptimizerArgs(learning_rate=1e-2, warmup_steps=1)


def _env(xla_flags=None, cache=None, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  if cache:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  env.pop("XLA_FLAGS", None)
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  return env


def _losses(model_dir):
  return [json.loads(line)["loss"] for line in open(os.path.join(model_dir, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("one_device")
  import jax  # pylint: disable=g-import-not-at-top
  config = config_lib.TrainConfig(
      data=config_lib.DataArgs("synthetic", {
          "inputs": SEQ_LEN // 2,
          "targets": SEQ_LEN // 2
      }, BATCH), model=config_lib.ModelArgs(MODEL), checkpoint=config_lib.CheckpointArgs(str(model_dir), save_every=2),
      run=config_lib.RunArgs(STEPS), optimizer=OPTIMIZER,
      partitioning=config_lib.PartitioningArgs(mesh_shape=(jax.device_count(), 1, 1)),
      logging=config_lib.LoggingArgs(log_every=1, progress=False, tensorboard=False))
  loop.run(config, synthetic.factory(SEQ_LEN, VOCAB))
  losses = _losses(model_dir)
  assert len(losses) == STEPS and len(set(losses)) == STEPS
  return losses


def test_eight_device_mesh_matches_one_device(tmp_path, one_device_losses):
  script = tmp_path / "run.py"
  script.write_text(SCRIPT)
  result = subprocess.run(
      [sys.executable, str(script), str(tmp_path / "run"), "2,2,2", "2",
       str(STEPS)], cwd=REPO, env=_env("--xla_force_host_platform_device_count=8", LM_HEAD_POSITIONS=str(SEQ_LEN // 2)),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "DEVICES 8 PROCESSES 1" in result.stdout
  # Two microbatches here, one batch there, and here the LM head only at each row's SEQ_LEN / 2 target
  # positions (the second half of each of its two segments): the update is the same.
  np.testing.assert_allclose(_losses(tmp_path / "run"), one_device_losses, rtol=2e-5)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_checkpoint_and_resume_together_like_one(tmp_path, one_device_losses):
  script = tmp_path / "run.py"
  script.write_text(SCRIPT)
  for stop_at_step, first_step in ((2, 0), (STEPS, 2)):  # stopped after step 2, then the same command resumes
    port = _free_port()
    processes = [
        subprocess.Popen([
            sys.executable,
            str(script),
            str(tmp_path / "run"), "-1,1,1", "1",
            str(stop_at_step),
            str(port),
            str(index)
        ], cwd=REPO, env=_env(cache=tmp_path / "jax_cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (out, err) in zip(processes, outputs):
      assert p.returncode == 0, err[-3000:]
      assert f"DEVICES 2 PROCESSES 2 FIRST {first_step}" in out
  np.testing.assert_allclose(_losses(tmp_path / "run"), one_device_losses, rtol=2e-5)
  # Both processes' data positions are in every checkpoint, which holds the whole (finite) state.
  ckpt = checkpointing.Checkpointer(str(tmp_path / "run"))
  assert ckpt.all_steps() == [2, 4]
  program = loop.build_program(MODEL, OPTIMIZER, config_lib.PartitioningArgs(), STEPS, SEQ_LEN,
                               loop.partitioning.make_mesh(-1, 1, 1))
  state, meta = ckpt.restore(4, program.layout.abstract)
  ckpt.close()
  assert [(s["shard_index"], s["batches_consumed"]) for s in meta["data"]] == [(0, 4), (1, 4)]
  assert checkpointing.all_finite(state.params)
