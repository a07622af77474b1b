"""The training loop: exact resume, NaN guard, float32 master weights under bfloat16 compute, data positions.

Everything runs in this process on a tiny OPT with short rows, so each test takes seconds; compiled steps are
shared between tests with the same configuration (trainer.loop caches them).
"""

import dataclasses
import json
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax.models import llama as llama_lib
from optiml_jax.models import llama_config
from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import prefetch
from optiml_jax.trainer import runtime
from optiml_jax.trainer import state as state_lib
from optiml_jax.trainer import synthetic

SEQ_LEN, VOCAB = 32, 512
TINY = opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, dropout=0.1)
TINY_LLAMA = llama_config.LlamaConfig.preset("llama-tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN)
OPTIMIZER = config_lib.OptimizerArgs(learning_rate=1e-2, warmup_steps=1)
ONE_PASS = config_lib.PartitioningArgs()


def _losses(model_dir):
  return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(model_dir, "metrics.jsonl")))}


def _train_config(model_dir, model=TINY, *, train_steps=6, save_every=3, stop_at_step=None, nan_policy="skip",
                  optimizer=OPTIMIZER, initial_checkpoint=None, batch_size=4, max_segments_per_row=None):
  """A TrainConfig for SEQ_LEN-token rows of the synthetic stream (which reads no mixture)."""
  return config_lib.TrainConfig(
      data=config_lib.DataArgs("synthetic", {
          "inputs": SEQ_LEN // 2,
          "targets": SEQ_LEN // 2
      }, batch_size, max_segments_per_row=max_segments_per_row),
      model=config_lib.ModelArgs(model, initial_checkpoint_path=initial_checkpoint),
      checkpoint=config_lib.CheckpointArgs(str(model_dir), save_every=save_every),
      run=config_lib.RunArgs(train_steps, nan_policy=nan_policy, stop_at_step=stop_at_step), optimizer=optimizer,
      logging=config_lib.LoggingArgs(log_every=1, progress=False, tensorboard=False))


def _run_synthetic(model_dir, config=TINY, **kwargs):
  return loop.run(_train_config(model_dir, config, **kwargs), synthetic.factory(SEQ_LEN, config.vocab_size))


def _restore(model_dir, config, step, train_steps=6):
  model = loop.make_model(config)
  tx, _ = loop.optimizer_lib.make_optimizer(learning_rate=1e-2, warmup_steps=1, total_steps=train_steps)
  layout = state_lib.state_layout(model, tx, loop.partitioning.make_mesh(-1, 1, 1), SEQ_LEN)
  ckpt = checkpointing.Checkpointer(str(model_dir))
  restored = ckpt.restore(step, layout.abstract)
  ckpt.close()
  return restored


def test_resumed_run_sees_the_same_batches_and_gives_identical_losses(tmp_path):
  # Dropout is on, so the per-step rng is checked too; checkpoints are asynchronous. (The real toy-bench
  # stream is checked the same way, across processes, in tests/test_train_cli.py.)
  whole = _run_synthetic(tmp_path / "whole", save_every=100)
  first = _run_synthetic(tmp_path / "split", save_every=100, stop_at_step=3)
  assert (first.last_step, first.checkpoint_steps) == (3, [3])
  _, meta = _restore(tmp_path / "split", TINY, 3)
  assert [s["batches_consumed"] for s in meta["data"]] == [3]  # the data position travels with the state
  second = _run_synthetic(tmp_path / "split", save_every=100)
  assert (second.first_step, second.last_step, second.checkpoint_steps) == (3, 6, [3, 6])
  whole_losses, split_losses = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
  assert sorted(split_losses) == [1, 2, 3, 4, 5, 6]
  assert [split_losses[s] for s in (4, 5, 6)] == [whole_losses[s] for s in (4, 5, 6)]
  assert len(set(whole_losses.values())) == 6  # the batches do change from step to step
  assert whole.checkpoint_steps == [6]


def test_a_tiny_llama_trains_resumes_exactly_and_starts_from_its_hugging_face_folder(tmp_path):
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  _run_synthetic(tmp_path / "whole", TINY_LLAMA, save_every=100)
  _run_synthetic(tmp_path / "split", TINY_LLAMA, save_every=100, stop_at_step=3)
  _run_synthetic(tmp_path / "split", TINY_LLAMA, save_every=100)
  whole_losses, split_losses = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
  assert [split_losses[s] for s in (4, 5, 6)] == [whole_losses[s] for s in (4, 5, 6)]
  # Random tokens: the loss stays near ln(vocab), but every step moves the weights.
  assert all(abs(loss - np.log(VOCAB)) < 0.5 for loss in whole_losses.values()), whole_losses
  at_3, _ = _restore(tmp_path / "split", TINY_LLAMA, 3)
  at_6, _ = _restore(tmp_path / "split", TINY_LLAMA, 6)
  moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), at_3.params, at_6.params)
  assert all(jax.tree_util.tree_leaves(moved))
  # MODEL_DIR carries the tokenizer the run used (OPT's by default), so evaluation needs no TOKENIZER_DIR.
  assert (tmp_path / "whole" / "vocab.json").is_file() and (tmp_path / "whole" / "merges.txt").is_file()
  written = json.loads((tmp_path / "whole" / "config.json").read_text(encoding="utf-8"))
  assert loop.registry.config_from_hf(written) == TINY_LLAMA

  trained, _ = _restore(tmp_path / "whole", TINY_LLAMA, 6)
  convert.save_hf(TINY_LLAMA, jax.device_get(trained.params), tmp_path / "hf")
  mesh = loop.partitioning.make_mesh(-1, 1, 1)
  program = loop.build_program(TINY_LLAMA, OPTIMIZER, ONE_PASS, 6, SEQ_LEN, mesh)
  state = state_lib.initial_state(program.model, program.tx, program.layout, mesh, seed=0, seq_len=SEQ_LEN,
                                  initial_checkpoint=str(tmp_path / "hf"))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, trained.params)


def test_resuming_with_another_seed_is_a_resume_error_naming_the_step_folder_and_what_to_do(tmp_path):
  # The stream's own refusal (a ValueError from `restore`) must reach train.py as the ResumeError it reports in one
  # line with exit 1, not as a traceback.
  _run_synthetic(tmp_path, save_every=100, stop_at_step=2)
  config = _train_config(tmp_path, save_every=100)
  with pytest.raises(runtime.ResumeError) as caught:
    loop.run(config, synthetic.factory(SEQ_LEN, VOCAB, seed=1))
  message = str(caught.value)
  assert "\n" not in message
  assert f"checkpoint {tmp_path}/2:" in message
  assert "seed: saved 0, this stream 1" in message
  assert "RunArgs.seed" in message and "INITIAL_CHECKPOINT_PATH" in message


def test_rerunning_a_finished_run_does_nothing(tmp_path):
  _run_synthetic(tmp_path)
  again = _run_synthetic(tmp_path)
  assert (again.first_step, again.last_step, again.checkpoint_steps) == (6, 6, [3, 6])
  assert "nothing to do" in again.describe()


def test_sigterm_during_start_up_says_nothing_was_trained_or_checkpointed(tmp_path, caplog):
  caplog.set_level("WARNING")
  make_stream = synthetic.factory(SEQ_LEN, TINY.vocab_size)

  def preempted_at_start_up(*args):  # SIGTERM once the handler is in place, before the first step
    os.kill(os.getpid(), signal.SIGTERM)
    return make_stream(*args)

  summary = loop.run(_train_config(tmp_path), preempted_at_start_up)
  assert (summary.preempted, summary.first_step, summary.last_step, summary.checkpoint_steps) == (True, 0, 0, [])
  assert not any(name.isdigit() for name in os.listdir(tmp_path))
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "preempted" in r.getMessage()]
  assert warnings == [
      "preempted during start-up, before step 1: nothing trained and nothing checkpointed; rerun the "
      "same command to start"
  ], warnings
  head = summary.describe().splitlines()[0]
  assert head.startswith("preempted during start-up: nothing trained") and "nothing to do" not in head, head


def test_ctrl_c_checkpoints_the_current_step_and_a_second_one_is_left_to_python(tmp_path, caplog):
  caplog.set_level("WARNING")
  original = signal.getsignal(signal.SIGINT)

  class CtrlCAtBatch8(synthetic.SyntheticStream):  # the prefetcher reads <= 3 batches ahead of the steps

    def __next__(self):
      if self._position == 8:
        os.kill(os.getpid(), signal.SIGINT)
        # The run's handler has stepped aside: a second Ctrl-C would raise KeyboardInterrupt at once.
        assert signal.getsignal(signal.SIGINT) is original
      return super().__next__()

  summary = loop.run(_train_config(tmp_path, train_steps=20, save_every=100),
                     lambda rows, index, count: CtrlCAtBatch8(rows, SEQ_LEN, TINY.vocab_size, 0, index, count))
  assert summary.preempted and summary.interrupted and 1 <= summary.last_step <= 8, summary
  assert summary.checkpoint_steps == [summary.last_step]
  assert signal.getsignal(signal.SIGINT) is original
  assert any("Ctrl-C (SIGINT): saving a checkpoint" in r.getMessage() for r in caplog.records)
  resumed = _run_synthetic(tmp_path, train_steps=20, save_every=100)  # the same command goes on from that step
  assert (resumed.first_step, resumed.last_step, resumed.interrupted) == (summary.last_step, 20, False)


def test_nan_skip_goes_on_and_never_checkpoints_nan(tmp_path):
  huge = config_lib.OptimizerArgs(learning_rate=1e30, warmup_steps=1)
  summary = _run_synthetic(tmp_path, optimizer=huge, nan_policy="skip", save_every=1)
  assert summary.last_step == 6 and summary.skipped_steps, summary
  lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
  records = {r["step"]: r for r in map(json.loads, lines)}
  for step in summary.skipped_steps:
    assert records[step]["skipped"] == 1.0 and records[step]["loss"] is None
  state, _ = _restore(tmp_path, TINY, 6)
  assert checkpointing.all_finite((state.params, state.opt_state))


def test_nan_stop_names_the_step_and_writes_no_checkpoint_from_it(tmp_path):
  huge = config_lib.OptimizerArgs(learning_rate=1e30, warmup_steps=1)
  with pytest.raises(loop.NonFiniteLossError, match=r"step (\d+): non-finite") as error:
    _run_synthetic(tmp_path, optimizer=huge, nan_policy="stop", save_every=1)
  bad_step = int(error.value.args[0].split()[1].rstrip(":"))
  saved = sorted(int(name) for name in os.listdir(tmp_path) if name.isdigit())
  assert saved and max(saved) < bad_step


def test_poisoned_initial_checkpoint_is_refused_before_training(tmp_path):
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  params = opt_lib.OPT(TINY).init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), enable_dropout=False)["params"]
  params = jax.tree_util.tree_map(np.array, params)
  params["embed_tokens"]["embedding"][3, 5] = np.nan
  convert.save_orbax(params, tmp_path / "poisoned", config=TINY)
  with pytest.raises(state_lib.InitialCheckpointError, match="poisoned.*NaN"):
    _run_synthetic(tmp_path / "run", initial_checkpoint=str(tmp_path / "poisoned"))
  assert not any(name.isdigit() for name in os.listdir(tmp_path / "run"))


def test_initial_checkpoint_from_a_model_dir_or_a_hugging_face_folder(tmp_path):
  from optiml_jax import convert  # pylint: disable=g-import-not-at-top
  _run_synthetic(tmp_path / "previous", train_steps=2, save_every=2, stop_at_step=2)
  trained, _ = _restore(tmp_path / "previous", TINY, 2, train_steps=2)
  convert.save_hf(TINY, jax.device_get(trained.params), tmp_path / "hf")
  mesh = loop.partitioning.make_mesh(-1, 1, 1)
  program = loop.build_program(TINY, OPTIMIZER, ONE_PASS, 6, SEQ_LEN, mesh)
  for source in (tmp_path / "previous", tmp_path / "previous" / "2", tmp_path / "hf"):
    state = state_lib.initial_state(opt_lib.OPT(TINY), program.tx, program.layout, mesh, seed=0, seq_len=SEQ_LEN,
                                    initial_checkpoint=str(source))
    assert int(state.step) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, trained.params)
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(state.opt_state[1][0].mu))
  wrong = opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB * 2, max_position_embeddings=SEQ_LEN)
  with pytest.raises(state_lib.InitialCheckpointError, match="previous"):
    wrong_program = loop.build_program(wrong, config_lib.OptimizerArgs(warmup_steps=1), ONE_PASS, 6, SEQ_LEN, mesh)
    state_lib.load_initial_params(str(tmp_path / "previous"), wrong, wrong_program.layout)


def test_master_weights_and_optimizer_state_stay_float32_under_bfloat16_compute():
  bf16 = opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, dropout=0.0,
                                  dtype="bfloat16", param_dtype="bfloat16")
  mesh = loop.partitioning.make_mesh(-1, 1, 1)
  program = loop.build_program(bf16, config_lib.OptimizerArgs(warmup_steps=1), ONE_PASS, 10, SEQ_LEN, mesh)
  batch = next(synthetic.SyntheticStream(2, SEQ_LEN, VOCAB))
  # The state the loop creates and the state its step returns (traced, not run) are float32 throughout...
  created = jax.eval_shape(program.init_fn, jax.random.PRNGKey(0))
  stepped, _ = jax.eval_shape(program.train_fn, created, batch, jax.random.PRNGKey(0))
  for tree in (program.layout.abstract, created, stepped):
    leaves = jax.tree_util.tree_leaves((tree.params, tree.opt_state))
    assert {x.dtype for x in leaves if x.ndim} == {jnp.dtype(jnp.float32)}
  # ...while every matrix multiply of the step has a bfloat16 operand: weights are cast before use.
  jaxpr = jax.make_jaxpr(program.train_fn)(created, batch, jax.random.PRNGKey(0))
  dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
  assert dots and all(any(v.aval.dtype == jnp.bfloat16 for v in e.invars) for e in dots)


def _equations(jaxpr):
  """Every equation of `jaxpr`, inside scans, remat and custom-vjp bodies too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, "jaxpr", item)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def test_resume_with_another_process_count_is_a_clear_error():
  with pytest.raises(runtime.ResumeError, match="2 process"):
    runtime.data_state_of_this_process({"step": 5, "data": [{}, {}]}, "/runs/x")
  assert runtime.data_state_of_this_process({"step": 5, "data": [{"a": 1}]}, "/runs/x") == {"a": 1}


def test_prefetcher_reports_the_position_of_the_last_batch_taken():
  stream = synthetic.SyntheticStream(2, 8, 50)
  batches = prefetch.Prefetcher(stream, depth=3)
  expected = [synthetic.global_batch(0, p, 2, 8, 50) for p in range(3)]
  assert batches.state()["batches_consumed"] == 0
  for position in range(3):
    got = next(batches)
    np.testing.assert_array_equal(got["decoder_input_tokens"], expected[position]["decoder_input_tokens"])
    assert batches.state()["batches_consumed"] == position + 1  # not the thread's, which runs ahead
  batches.close()


def test_prefetcher_passes_errors_and_the_end_through():

  class Failing:

    def __init__(self):
      self.n = 0

    def __next__(self):
      self.n += 1
      if self.n == 2:
        raise RuntimeError("source file vanished")
      return self.n

    def state(self):
      return {"n": self.n}

  batches = prefetch.Prefetcher(Failing())
  assert next(batches) == 1
  with pytest.raises(RuntimeError, match="vanished"):
    next(batches)
  with pytest.raises(StopIteration):
    next(batches)
  batches.close()


def test_synthetic_stream_splits_one_global_batch_by_process_and_resumes():
  full = synthetic.global_batch(7, 1, 4, 16, 100)
  parts = []
  for index in range(2):
    stream = synthetic.SyntheticStream(2, 16, 100, seed=7, shard_index=index, shard_count=2)
    next(stream)
    parts.append(next(stream))
  np.testing.assert_array_equal(np.concatenate([p["decoder_target_tokens"] for p in parts]),
                                full["decoder_target_tokens"])
  resumed = synthetic.SyntheticStream(2, 16, 100, seed=7, shard_index=1, shard_count=2)
  resumed.restore({**resumed.state(), "batches_consumed": 1})
  np.testing.assert_array_equal(next(resumed)["decoder_input_tokens"], parts[1]["decoder_input_tokens"])
  with pytest.raises(ValueError, match="different stream"):
    resumed.restore({**resumed.state(), "seed": 8})
  # Only targets carry loss weight, and each row holds two packed examples.
  assert 0 < full["decoder_loss_weights"].mean() < 1
  assert set(np.unique(full["decoder_segment_ids"])) == {1, 2}


def test_a_batch_that_cannot_be_laid_out_on_the_mesh_is_named_before_anything_is_built(tmp_path):
  # The config's own checks (tests/trainer/test_config.py) cannot know the mesh: 2 microbatches of 2 rows do not
  # divide over data x fsdp = 4 devices.
  config = dataclasses.replace(_train_config(tmp_path), partitioning=config_lib.PartitioningArgs(num_microbatches=2))
  with pytest.raises(config_lib.ConfigError, match=r"num_microbatches=2 microbatches whose rows divide over data "
                     r"x fsdp = 4 devices"):
    loop._check_layout(config, types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "tensor": 1}))
  loop._check_layout(config, types.SimpleNamespace(shape={"data": 2, "fsdp": 1, "tensor": 2}))


def test_a_parameter_the_mesh_cannot_split_evenly_is_named_before_anything_is_built(tmp_path):
  # optiml_1.3b.gin's mesh (1, -1, 1) on a 6-GPU host puts hidden 2048 over fsdp = 6; the tiny model's hidden 64
  # over fsdp = 3 is the same mistake. It used to surface as JAX's IndivisibleError from the jitted init, after
  # the catalog was registered, naming neither the parameter nor the binding.
  mesh = lambda data, fsdp, tensor: types.SimpleNamespace(shape=dict(data=data, fsdp=fsdp, tensor=tensor))
  config = _train_config(tmp_path, batch_size=12)
  with pytest.raises(config_lib.ConfigError) as error:
    loop._check_layout(config, mesh(1, 3, 1))
  message = str(error.value)
  assert message.startswith("PartitioningArgs.mesh_shape: ")
  assert "embed_positions/embedding: dimension 1 (embed) of size 64 is not divisible by fsdp=3" in message
  big = dataclasses.replace(config, model=config_lib.ModelArgs(opt_lib.OPTConfig.preset("opt-1.3b")))
  with pytest.raises(config_lib.ConfigError, match=r"dimension \d \(embed\) of size 2048 is not divisible by fsdp=6"):
    loop._check_layout(big, mesh(1, 6, 1))
  vocab_over_tensor = r"embed_tokens/embedding: dimension 0 \(vocab\) of size 512 is not divisible by tensor=3"
  with pytest.raises(config_lib.ConfigError, match=vocab_over_tensor):
    loop._check_layout(config, mesh(2, 1, 3))
  loop._check_layout(config, mesh(2, 2, 2))
  # Only parameters must divide: 3 heads over tensor = 2 split the attention's activations unevenly, which
  # computes the same losses, while every parameter (48 = 3 x 16 wide projections) divides.
  three_heads = dataclasses.replace(TINY, hidden_size=48, num_attention_heads=3)
  loop._check_layout(dataclasses.replace(config, model=config_lib.ModelArgs(three_heads)), mesh(2, 1, 2))


def test_make_model_builds_every_family_and_names_them_for_anything_else():

  @dataclasses.dataclass(frozen=True)
  class OtherFamily:  # has ModelConfig's members, so the config groups take it
    max_position_embeddings: int = SEQ_LEN
    dropout: float = 0.0
    attention_dropout: float = 0.0
    vocab_size: int = VOCAB
    num_hidden_layers: int = 1
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str | None = None

    def num_params(self):
      return 1

    def flops_per_token(self, seq_len):
      return 6.0

    def to_hf(self):
      return {"model_type": "other"}

  assert isinstance(loop.make_model(TINY), opt_lib.OPT)
  assert isinstance(loop.make_model(TINY_LLAMA), llama_lib.Llama)
  with pytest.raises(config_lib.ConfigError,
                     match="ModelArgs.config: not a model config: OtherFamily .*OPTConfig, LlamaConfig"):
    loop.make_model(config_lib.ModelArgs(OtherFamily()).config)


def test_build_program_is_shared_by_runs_that_differ_only_outside_the_step(tmp_path):
  mesh = loop.partitioning.make_mesh(-1, 1, 1)
  program = loop.build_program(TINY, OPTIMIZER, ONE_PASS, 6, SEQ_LEN, mesh)
  assert loop.build_program(TINY, OPTIMIZER, config_lib.PartitioningArgs(), 6, SEQ_LEN, mesh) is program
  assert loop.build_program(TINY, OPTIMIZER, config_lib.PartitioningArgs(sequence_parallel=True), 6, SEQ_LEN,
                            mesh).rules == loop.partitioning.SEQUENCE_PARALLEL_RULES


def test_a_row_over_the_models_segment_bound_is_named_before_its_step(tmp_path):
  # The packer caps rows at DataArgs.max_segments_per_row; a stream that does not (the synthetic one packs two
  # examples a row) is stopped before a step would drop a segment's attention.
  bounded = dataclasses.replace(TINY, packed_attention_segments=1)
  config = _train_config(tmp_path, bounded, max_segments_per_row=1)
  with pytest.raises(config_lib.ConfigError, match=r"decoder_segment_ids: a row of the batch for step 1 holds 2"):
    loop.run(config, synthetic.factory(SEQ_LEN, bounded.vocab_size))
  assert not [name for name in os.listdir(tmp_path) if name.isdigit()]


def test_segment_bound_check_passes_rows_within_it_and_unpacked_batches():
  ids = np.array([[1, 1, 2, 0], [1, 2, 3, 3]])
  runtime.check_segment_bound({"decoder_segment_ids": ids}, 3, 0)
  runtime.check_segment_bound({"decoder_segment_ids": ids}, 0, 0)  # no bound: the dense mask
  runtime.check_segment_bound({"decoder_target_tokens": ids}, 1, 0)  # unpacked: no segments
  with pytest.raises(config_lib.ConfigError, match="step 8 holds 3 segments.*packed_attention_segments=2"):
    runtime.check_segment_bound({"decoder_segment_ids": ids}, 2, 7)


def test_xla_flags_reach_xla_only_before_its_backend_starts(monkeypatch):
  # This process has started JAX: a flag XLA_FLAGS lacks would be ignored, so it is refused by name.
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  with pytest.raises(config_lib.ConfigError, match="RunArgs.xla_flags: .*--xla_dump_hlo_as_text"):
    runtime.apply_xla_flags(("--xla_cpu_enable_fast_math=false", "--xla_dump_hlo_as_text"))
  runtime.apply_xla_flags(("--xla_cpu_enable_fast_math=false",))  # already there: nothing to do
  assert config_lib.RunArgs(train_steps=1,
                            xla_flags=["--xla_dump_hlo_as_text"]).xla_flags == ("--xla_dump_hlo_as_text",)


def test_a_run_may_flip_scan_layers_against_its_checkpoint(tmp_path):
  """`scan_layers` is how the layers are computed, not what: preflight lets it change, so a run resumes, or starts
  from another run's MODEL_DIR, whichever layout the checkpoint stored (stacked `layers/` or `layers_{i}/`), the
  optimizer's moments included."""
  scanned = dataclasses.replace(TINY, dropout=0.0)
  unscanned = dataclasses.replace(scanned, scan_layers=False)
  _run_synthetic(tmp_path / "run", scanned, save_every=100, stop_at_step=3)
  stored, _ = _restore(tmp_path / "run", scanned, 3)
  flipped, _ = _restore(tmp_path / "run", unscanned, 3)
  assert "layers" in stored.params and "layers_1" in flipped.params
  assert int(np.asarray(flipped.step)) == 3
  for i in range(unscanned.num_hidden_layers):
    for want, got in zip(jax.tree_util.tree_leaves(stored.params["layers"]),
                         jax.tree_util.tree_leaves(flipped.params[f"layers_{i}"])):
      np.testing.assert_array_equal(np.asarray(want)[i], np.asarray(got))
  moments = lambda s: [np.asarray(x) for x in jax.tree_util.tree_leaves(s.opt_state) if np.ndim(x) > 0]  # pylint: disable=unnecessary-lambda-assignment
  assert sum(x.size for x in moments(stored)) == sum(x.size for x in moments(flipped))
  assert sum(np.abs(x).sum() for x in moments(flipped)) == pytest.approx(sum(np.abs(x).sum() for x in moments(stored)))
  assert sum(np.abs(x).sum() for x in moments(stored)) > 0
  resumed = _run_synthetic(tmp_path / "run", unscanned, save_every=100)
  assert (resumed.first_step, resumed.last_step) == (3, 6)
  started = _run_synthetic(tmp_path / "from_scanned", unscanned, train_steps=2, save_every=100,
                           initial_checkpoint=str(tmp_path / "run"))
  assert (started.first_step, started.last_step) == (0, 2)
  back = _run_synthetic(tmp_path / "back", scanned, train_steps=2, save_every=100,
                        initial_checkpoint=str(tmp_path / "from_scanned"))  # unstacked layers into a scanned run
  assert back.last_step == 2
