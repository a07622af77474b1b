"""Multi-host correctness: the trainer in 4 JAX processes (jax.distributed over gloo on 127.0.0.1, 2 CPU
devices each) on a (data, fsdp, tensor) = (2, 2, 2) mesh gives one process's per-step losses, and a
checkpoint it writes resumes in 2 processes (another slice size, mesh (1, 2, 2)) as if never interrupted.

All runs read the same global batches (`trainer.synthetic`: process i takes its block of rows of batch p, a
pure function of (seed, p)), so only the layout of the computation and the number of processes differ.
The fast tests below check the rule that carries data positions over to another number of processes
(`runtime.data_state_of_this_process`), for the synthetic stream and for a real `data.pipeline.BatchStream`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import runtime
from optiml_jax.trainer import synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]
SEQ_LEN, VOCAB, BATCH = 32, 512, 8
STEPS, HALF = 4, 2  # the 4-process run stops (and checkpoints) after HALF steps; 2 processes do the rest
OPTIMIZER = config_lib.OptimizerArgs(learning_rate=1e-2, warmup_steps=1)
PROCESS_TIMEOUT_S = 420

# Runs in a fresh interpreter: argv = model_dir, mesh "d,f,t", stop_at_step, num_processes, process_id, port. A mesh
# "interleaved:d,f,t" orders the devices local device first, then process (p0d0, p1d0, ..., p0d1, ...), so that
# the processes interleave along the batch as a TPU slice's hosts do.
SCRIPT = f"""
import sys
interleave = sys.argv[2].startswith("interleaved:")
model_dir, mesh = sys.argv[1], tuple(int(x) for x in sys.argv[2].split(":")[-1].split(","))
stop_at_step, count, index, port = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
from optiml_jax.trainer import runtime
runtime.initialize_distributed(f"127.0.0.1:{{port}}", count, index)
import jax
if interleave:
  from optiml_jax.models import partitioning
  make_mesh = partitioning.make_mesh
  rank = {{d: sorted(jax.local_devices(d.process_index), key=lambda e: e.id).index(d) for d in jax.devices()}}
  partitioning.make_mesh = lambda *sizes: make_mesh(
      *sizes, devices=sorted(jax.devices(), key=lambda d: (rank[d], d.process_index)))
from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import config as c, loop, synthetic
model = opt_lib.OPTConfig.preset("tiny", vocab_size={VOCAB}, max_position_embeddings={SEQ_LEN}, dropout=0.0)
config = c.TrainConfig(
    data=c.DataArgs("synthetic", {{"inputs": {SEQ_LEN // 2}, "targets": {SEQ_LEN // 2}}}, {BATCH}),
    model=c.ModelArgs(model), checkpoint=c.CheckpointArgs(model_dir, save_every={HALF}),
    run=c.RunArgs({STEPS}, stop_at_step=stop_at_step), partitioning=c.PartitioningArgs(mesh),
    optimizer=c.OptimizerArgs(learning_rate={OPTIMIZER.learning_rate}, warmup_steps={OPTIMIZER.warmup_steps}),
    logging=c.LoggingArgs(log_every=1, progress=False, tensorboard=False))
summary = loop.run(config, synthetic.factory({SEQ_LEN}, {VOCAB}))
print("DEVICES", jax.device_count(), "LOCAL", jax.local_device_count(), "PROCESSES", jax.process_count(),
      "FIRST", summary.first_step, "LAST", summary.last_step, flush=True)
"""

# Each process's rows (`runtime.process_row_block`) on meshes whose tensor axis spans processes or whose device
# order interleaves the processes (as `jax.make_mesh` orders a TPU slice's chips), and the global batch that feeding
# them builds (`jax.make_array_from_process_local_data`); argv as SCRIPT's (model_dir and stop_at_step unused).
BLOCKS_SCRIPT = f"""
import json, sys
count, index, port = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
from optiml_jax.trainer import runtime
runtime.initialize_distributed(f"127.0.0.1:{{port}}", count, index)
import jax, numpy as np
from jax.experimental import multihost_utils
from optiml_jax.models import partitioning
from optiml_jax.trainer import synthetic
rank = {{d: sorted(jax.local_devices(d.process_index), key=lambda e: e.id).index(d) for d in jax.devices()}}
interleaved = sorted(jax.devices(), key=lambda d: (rank[d], d.process_index))  # process p: mesh positions p, p + 4
full = synthetic.global_batch(3, 0, {BATCH}, {SEQ_LEN}, {VOCAB})["decoder_input_tokens"]
meshes = [(str(shape), partitioning.make_mesh(*shape)) for shape in [(2, 2, 2), (1, 2, 4), (1, 1, 8), (1, 4, 2)]]
for shape in [(8, 1, 1), (4, 1, 2)]:
  mesh = jax.sharding.Mesh(np.reshape(interleaved, shape), partitioning.MESH_AXES)
  meshes.append(("interleaved " + str(shape), mesh))
for name, mesh in meshes:
  sharding = partitioning.logical_to_mesh_sharding(jax.sharding.PartitionSpec("batch", "length"), mesh)
  block = runtime.process_row_block(sharding, {BATCH}, {SEQ_LEN})
  local = next(synthetic.SyntheticStream(block.rows, {SEQ_LEN}, {VOCAB}, 3, block.index, block.count))
  tokens = jax.make_array_from_process_local_data(sharding, local["decoder_input_tokens"], ({BATCH}, {SEQ_LEN}))
  whole = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
  expected = np.zeros_like(full)  # stream shard b.index of every process p, in its ranges in order
  for p in range(count):
    b = runtime.process_row_block(sharding, {BATCH}, {SEQ_LEN}, process=p)
    expected[np.concatenate([np.arange(*r) for r in b.ranges])] = full[b.index * b.rows:(b.index + 1) * b.rows]
  once = sorted(map(tuple, whole.tolist())) == sorted(map(tuple, full.tolist()))  # every row of the batch, once
  print("BLOCK", json.dumps([name, block.rows, block.index, block.count, block.ranges, bool((whole == expected).all()),
                             once, bool((whole == full).all())]), flush=True)
"""


def _config():
  return opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, dropout=0.0)


def _losses(model_dir):
  return [json.loads(line)["loss"] for line in open(os.path.join(model_dir, "metrics.jsonl"))]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_processes(tmp_path, name, count, devices_each, mesh, stop_at_step, source=SCRIPT):
  """Runs `source` in `count` processes; returns their stdouts. Every process is killed if any fails or hangs."""
  script = tmp_path / f"{name}.py"
  script.write_text(source)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
  port = _free_port()
  logs, processes = [], []
  try:
    for index in range(count):
      out, err = tmp_path / f"{name}.{index}.out", tmp_path / f"{name}.{index}.err"
      logs.append((out, err))
      with open(out, "w") as stdout, open(err, "w") as stderr:  # files, so no pipe can fill up and block
        processes.append(
            subprocess.Popen([
                sys.executable,
                str(script),
                str(tmp_path / "run"), mesh,
                str(stop_at_step),
                str(count),
                str(index),
                str(port)
            ], cwd=REPO, env=env, stdout=stdout, stderr=stderr))
    deadline = time.time() + PROCESS_TIMEOUT_S
    while any(p.poll() is None for p in processes):
      failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        break
      time.sleep(0.5)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
      p.wait()
  for index, (p, (_, err)) in enumerate(zip(processes, logs)):
    assert p.returncode == 0, (f"{name} process {index} of {count} exited with {p.returncode} (killed if "
                               f"negative: another failed or {PROCESS_TIMEOUT_S} s passed):\n"
                               f"{err.read_text()[-3000:]}")
  return [out.read_text() for out, _ in logs]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run in this process (1 device unless XLA_FLAGS says more): its dir and losses."""
  model_dir = tmp_path_factory.mktemp("one_process")
  config = config_lib.TrainConfig(
      data=config_lib.DataArgs("synthetic", {
          "inputs": SEQ_LEN // 2,
          "targets": SEQ_LEN // 2
      }, BATCH), model=config_lib.ModelArgs(_config()),
      checkpoint=config_lib.CheckpointArgs(str(model_dir), save_every=HALF), run=config_lib.RunArgs(STEPS),
      optimizer=OPTIMIZER, logging=config_lib.LoggingArgs(log_every=1, progress=False, tensorboard=False))
  loop.run(config, synthetic.factory(SEQ_LEN, VOCAB))
  losses = _losses(model_dir)
  assert len(losses) == STEPS and len(set(losses)) == STEPS
  return model_dir, losses


def _restore(model_dir, step):
  program = loop.build_program(_config(), OPTIMIZER, config_lib.PartitioningArgs(), STEPS, SEQ_LEN,
                               loop.partitioning.make_mesh(-1, 1, 1))
  ckpt = checkpointing.Checkpointer(str(model_dir))
  try:
    return ckpt.all_steps(), *ckpt.restore(step, program.layout.abstract)
  finally:
    ckpt.close()


def _assert_same_state(a, b):
  """Every leaf of params and optimizer state within 1e-4 of its largest magnitude, but the key biases:
  their gradient is 0 in exact arithmetic (softmax ignores a shift of all of a query's scores), so they
  only carry rounding noise, which Adam scales up to ~1e-5 updates."""
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path((a.params, a.opt_state)),
                          jax.tree_util.tree_leaves((b.params, b.opt_state))):
    name = jax.tree_util.keystr(path)
    if "k_proj" in name and "bias" in name:
      continue
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape, name
    assert np.abs(x - y).max(initial=0) <= 1e-4 * np.abs(y).max(initial=0), name


@pytest.mark.slow
def test_four_processes_match_one_and_two_processes_resume_their_checkpoint(tmp_path, reference):
  reference_dir, reference_losses = reference
  started = time.time()
  outs = _run_processes(tmp_path, "four", count=4, devices_each=2, mesh="2,2,2", stop_at_step=HALF)
  assert all(f"DEVICES 8 LOCAL 2 PROCESSES 4 FIRST 0 LAST {HALF}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses[:HALF], rtol=2e-5)
  steps, state, meta = _restore(tmp_path / "run", HALF)
  assert steps == [HALF]
  assert [(s["shard_index"], s["shard_count"], s["batch_size"], s["batches_consumed"]) for s in meta["data"]
         ] == [(i, 4, BATCH // 4, HALF) for i in range(4)]
  _assert_same_state(state, _restore(reference_dir, HALF)[1])
  four_seconds = time.time() - started

  # The same MODEL_DIR, resumed by 2 processes of 2 devices: Orbax reshards the state onto the (1, 2, 2)
  # mesh and each process continues at global batch HALF with its new (twice as large) block of rows.
  outs = _run_processes(tmp_path, "two", count=2, devices_each=2, mesh="1,2,2", stop_at_step=STEPS)
  assert all(f"DEVICES 4 LOCAL 2 PROCESSES 2 FIRST {HALF} LAST {STEPS}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses, rtol=2e-5)
  steps, state, meta = _restore(tmp_path / "run", STEPS)
  assert steps == [HALF, STEPS]
  assert [(s["shard_index"], s["shard_count"], s["batch_size"], s["batches_consumed"]) for s in meta["data"]
         ] == [(i, 2, BATCH // 2, STEPS) for i in range(2)]
  _assert_same_state(state, _restore(reference_dir, STEPS)[1])
  print(f"4 processes: {four_seconds:.0f} s, 2 processes: {time.time() - started - four_seconds:.0f} s")


def test_each_process_feeds_the_rows_its_devices_hold(tmp_path):
  # 4 processes of 2 devices. With tensor = 4 or 8 the tensor axis spans processes (as tensor = 8 spans two
  # 4-chip hosts on a v4-512), so processes share rows: each must feed its group's whole block, not
  # batch / 4 rows of its own; the blocks fed make exactly the global batch. With the processes interleaved along
  # the batch (a TPU slice's order), a process's rows are no one block: it feeds its stream shard into them in
  # order, which JAX maps there, and the batch on the devices holds every row of the global batch once.
  outs = _run_processes(tmp_path, "blocks", count=4, devices_each=2, mesh="-", stop_at_step=0, source=BLOCKS_SCRIPT)
  got = [[json.loads(line[len("BLOCK "):]) for line in out.splitlines() if line.startswith("BLOCK ")] for out in outs]
  rows_of = lambda rows, index: [[rows * index, rows * (index + 1)]]
  expected = {
      "(2, 2, 2)": [(2, i, 4, rows_of(2, i)) for i in range(4)],
      "(1, 2, 4)": [(4, 0, 2, rows_of(4, 0))] * 2 + [(4, 1, 2, rows_of(4, 1))] * 2,
      "(1, 1, 8)": [(8, 0, 1, rows_of(8, 0))] * 4,
      "(1, 4, 2)": [(2, i, 4, rows_of(2, i)) for i in range(4)],
      "interleaved (8, 1, 1)": [(2, i, 4, [[i, i + 1], [i + 4, i + 5]]) for i in range(4)],
      "interleaved (4, 1, 2)": [(4, 0, 2, [[0, 2], [4, 6]])] * 2 + [(4, 1, 2, [[2, 4], [6, 8]])] * 2,
  }
  for m, (mesh, blocks) in enumerate(expected.items()):
    assert [g[m][0] for g in got] == [mesh] * 4
    assert [tuple(g[m][1:5]) for g in got] == blocks, mesh
    assert all(g[m][5] for g in got), f"{mesh}: the rows fed are not where JAX put them"
    assert all(g[m][6] for g in got), f"{mesh}: the batch on the devices does not hold each row of the batch once"
    # Where every process's rows are one block, the batch on the devices is the stream's global batch itself.
    assert all(g[m][7] for g in got) == (not mesh.startswith("interleaved")), mesh


@pytest.mark.slow
def test_a_tensor_axis_across_processes_trains_as_one_process_and_resumes(tmp_path, reference):
  # Mesh (1, 2, 4) over 4 processes of 2 devices: two processes per batch shard. The loop feeds each its row
  # block (`runtime.process_row_block`), and the run gives one process's losses; its checkpoint (4 states, 2
  # distinct blocks) resumes in 2 processes of 4 devices on mesh (1, 2, 4), where each process holds a block alone.
  _, reference_losses = reference
  outs = _run_processes(tmp_path, "four", count=4, devices_each=2, mesh="1,2,4", stop_at_step=HALF)
  assert all(f"DEVICES 8 LOCAL 2 PROCESSES 4 FIRST 0 LAST {HALF}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses[:HALF], rtol=2e-5)
  _, _, meta = _restore(tmp_path / "run", HALF)
  assert [(s["shard_index"], s["shard_count"], s["batch_size"]) for s in meta["data"]] == [(0, 2, BATCH // 2),
                                                                                           (0, 2, BATCH // 2),
                                                                                           (1, 2, BATCH // 2),
                                                                                           (1, 2, BATCH // 2)]
  outs = _run_processes(tmp_path, "two", count=2, devices_each=4, mesh="1,2,4", stop_at_step=STEPS)
  assert all(f"DEVICES 8 LOCAL 4 PROCESSES 2 FIRST {HALF} LAST {STEPS}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses, rtol=2e-5)


@pytest.mark.slow
def test_processes_interleaved_along_the_batch_train_as_one_process_and_resume(tmp_path, reference):
  # Mesh (4, 1, 2) over 4 processes of 2 devices ordered as a TPU slice's hosts interleave: processes 0 and 1 hold
  # rows 0-1 and 4-5, processes 2 and 3 rows 2-3 and 6-7 (no one block each), which the loop used to refuse. They
  # feed stream shards 0 and 1, the run gives one process's losses, and its checkpoint resumes in 2 processes of
  # 2 devices on mesh (1, 2, 2), where each process's rows are one block again.
  _, reference_losses = reference
  outs = _run_processes(tmp_path, "four", count=4, devices_each=2, mesh="interleaved:4,1,2", stop_at_step=HALF)
  assert all(f"DEVICES 8 LOCAL 2 PROCESSES 4 FIRST 0 LAST {HALF}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses[:HALF], rtol=2e-5)
  _, _, meta = _restore(tmp_path / "run", HALF)
  assert [(s["shard_index"], s["shard_count"], s["batch_size"]) for s in meta["data"]
         ] == [(0, 2, BATCH // 2)] * 2 + [(1, 2, BATCH // 2)] * 2
  outs = _run_processes(tmp_path, "two", count=2, devices_each=2, mesh="1,2,2", stop_at_step=STEPS)
  assert all(f"DEVICES 4 LOCAL 2 PROCESSES 2 FIRST {HALF} LAST {STEPS}" in out for out in outs), outs
  np.testing.assert_allclose(_losses(tmp_path / "run"), reference_losses, rtol=2e-5)


def _synthetic_states(count, consumed, **overrides):
  states = []
  for index in range(count):
    stream = synthetic.SyntheticStream(BATCH // count, SEQ_LEN, VOCAB, seed=3, shard_index=index, shard_count=count)
    stream.restore({**stream.state(), "batches_consumed": consumed})
    states.append(json.loads(json.dumps({**stream.state(), **overrides})))  # as stored in a checkpoint
  return states


def test_synthetic_positions_continue_exactly_with_another_process_count(caplog):
  assert jax.process_count() == 1
  meta = {"step": 5, "data": _synthetic_states(4, 5)}
  stream = synthetic.SyntheticStream(BATCH, SEQ_LEN, VOCAB, seed=3)
  with caplog.at_level("WARNING"):
    stream.restore(runtime.data_state_of_this_process(meta, "/runs/x", stream.state()))
  assert not caplog.records  # nothing differs from an uninterrupted run
  expected = synthetic.global_batch(3, 5, BATCH, SEQ_LEN, VOCAB)
  np.testing.assert_array_equal(next(stream)["decoder_input_tokens"], expected["decoder_input_tokens"])
  # The same number of processes keeps the saved state as it is.
  assert runtime.data_state_of_this_process({
      "step": 5,
      "data": _synthetic_states(1, 5)
  }, "/runs/x", stream.state()) == _synthetic_states(1, 5)[0]


def test_positions_of_processes_that_shared_rows_continue_exactly(caplog):
  # 4 processes that fed 2 blocks (two per batch shard: a tensor axis across processes) resumed by 2
  # processes of one block each; the states saved in another order than the blocks (a device order that puts
  # process 0 on block 1) read the same.
  saved = [_synthetic_states(2, 5)[i] for i in (1, 1, 0, 0)]
  for index, count, rows in [(0, 1, BATCH), (1, 2, BATCH // 2), (3, 4, BATCH // 4)]:
    stream = synthetic.SyntheticStream(rows, SEQ_LEN, VOCAB, seed=3, shard_index=index, shard_count=count)
    with caplog.at_level("WARNING"):
      stream.restore(runtime.data_state_of_this_process({"step": 5, "data": saved}, "/runs/x", stream.state()))
    assert not caplog.records
    expected = synthetic.global_batch(3, 5, BATCH, SEQ_LEN,
                                      VOCAB)["decoder_input_tokens"][index * rows:(index + 1) * rows]
    np.testing.assert_array_equal(next(stream)["decoder_input_tokens"], expected)
  # The same number of processes on another mesh (this process now on another block): resharded, not the saved
  # state of another block (which the stream's restore refuses).
  one = _synthetic_states(1, 5)
  stream = synthetic.SyntheticStream(BATCH // 2, SEQ_LEN, VOCAB, seed=3, shard_index=1, shard_count=2)
  assert runtime.data_state_of_this_process({
      "step": 5,
      "data": one
  }, "/runs/x", stream.state()) == {
      **stream.state(), "batches_consumed": 5
  }


def test_positions_that_cannot_be_continued_are_refused_with_what_to_do():
  fresh = synthetic.SyntheticStream(BATCH, SEQ_LEN, VOCAB, seed=3).state()
  cases = [
      ({
          "step": 5,
          "data": _synthetic_states(2, 5)
      }, None, "resume with the same number of processes"),
      ({
          "step": 5,
          "data": [{}, {}]
      }, fresh, "lack the integer field"),
      ({
          "step": 5,
          "data": _synthetic_states(2, 5)[:1] + _synthetic_states(2, 4)[1:]
      }, fresh, r"different numbers of batches \[4, 5\]"),
      ({
          "step": 5,
          "data": _synthetic_states(2, 5)[:1] * 2
      }, fresh, r"states \[\(0, 2\), \(0, 2\)\] \(shard, of\) are not each of shards 0..1 of 2"),
      ({
          "step": 5,
          "data": [_synthetic_states(2, 5)[0],
                   _synthetic_states(2, 5)[0],
                   _synthetic_states(4, 5)[2]]
      }, fresh, "not each of shards 0..1 of 2"),
      ({
          "step": 5,
          "data": _synthetic_states(2, 5)[:1] + _synthetic_states(2, 5, target_fraction=0.25)
      }, fresh, "processes that fed the same rows saved different positions"),
      ({
          "step": 5,
          "data": _synthetic_states(2, 5)
      }, {
          **fresh, "batch_size": BATCH // 2
      }, "global batch has 8 rows, this run's has 4; resume with batch_size=8"),
      ({
          "step": 5,
          "data": _synthetic_states(2, 5, seed=4)
      }, fresh, "seed: saved 4, now 3"),
      ({
          "step": 5
      }, fresh, "an unknown number of process"),
  ]
  for meta, fresh_state, message in cases:
    with pytest.raises(runtime.ResumeError, match=message) as error:
      runtime.data_state_of_this_process(meta, "/runs/x", fresh_state)
    assert "/runs/x/5" in str(error.value)
    assert "INITIAL_CHECKPOINT_PATH" in str(error.value)


def test_batch_stream_positions_continue_approximately_with_a_warning(tmp_path, caplog):
  # pylint: disable=g-import-not-at-top  (seqio and the catalog only for this test)
  from optiml_jax.data import bench_config
  from optiml_jax.data import catalog
  from optiml_jax.data import pipeline
  from optiml_jax.data import registry
  from optiml_jax.data import sources
  from optiml_jax.data import toybench
  from optiml_jax.data.sources import sni
  # pylint: enable=g-import-not-at-top

  # The toy catalog of tests/data/test_pipeline.py (same arguments, so re-registering its names is harmless).
  sni_dir = toybench.write(tmp_path / "sni", seed=1, num_instances=40)
  catalog.build(bench_config.load_config(toybench.CONFIG_PATH), sources.iter_all(sni_dir=sni_dir),
                sni.read_split(sni_dir)).save(tmp_path / "catalog")
  registry.register_catalog(tmp_path / "catalog", mixtures=False)

  def stream(batch_size, index=0, count=1):
    return pipeline.BatchStream("sni:task001_toy_add_small", "train", {
        "inputs": 40,
        "targets": 8
    }, batch_size, seed=0, shard_index=index, shard_count=count, window_size=16)

  saved = []
  for index in range(2):  # two processes of 3 rows each consumed 2 batches
    old = stream(3, index, 2)
    next(old), next(old)
    saved.append(json.loads(json.dumps(old.state())))
  resumed = stream(6)
  with caplog.at_level("WARNING"):
    resumed.restore(runtime.data_state_of_this_process({"step": 2, "data": saved}, "/runs/x", resumed.state()))
  assert "written by 2 processes feeding 2 block(s) of rows, and this run has 1 feeding 1" in caplog.text
  assert "differ" in caplog.text
  # The rule: the new process's own stream, after as many of its batches as global batches were consumed.
  uninterrupted_single = stream(6)
  expected = [next(uninterrupted_single) for _ in range(3)][2]
  got = next(resumed)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name])
  assert resumed.state()["batches_consumed"] == 3
