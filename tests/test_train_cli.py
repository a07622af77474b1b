"""`python -m optiml_jax.train`: every gin file builds its TrainConfig; configuration errors exit 2 before any
compilation, naming the binding; SIGTERM checkpoints and exits 0, and the same command resumes to the same
losses as a run that was never stopped; the other entry points do not import this one."""

import dataclasses
import json
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import gin
import pytest

from optiml_jax import bench
from optiml_jax import gin_registry
from optiml_jax import gin_utils
from optiml_jax import train as train_entry
from optiml_jax.models import opt as opt_lib
from optiml_jax.models import registry
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop

REPO = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO / "gin"
# Files of other entry points (evaluation, t5x) live in gin/ too; these are the trainer's.
RUN_FILES = ["quickstart.gin", "optiml_1.3b.gin", "optiml_30b.gin", "optiml_175b.gin"]
MODEL_FILES = sorted(p.name for p in (GIN_DIR / "models").glob("*.gin"))
LLAMA_MODEL_FILES = {
    "llama_tiny.gin": "llama-tiny",
    "smollm2_135m.gin": "smollm2-135m",
    "llama3.2_1b.gin": "llama-3.2-1b",
    "llama3_8b.gin": "llama-3.1-8b"
}
TRAINER_FILES = RUN_FILES + ["recipe.gin"] + [f"models/{name}" for name in MODEL_FILES]
PATHS = ["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/data/catalog", "--gin.INITIAL_CHECKPOINT_PATH=/ckpt/opt"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _configure(files, flags=()):
  args = train_entry.parse_flags([f"--gin_file={f}" for f in files] + list(flags))
  return gin_registry.configure_training(args.gin_file, args.gin_bindings, args.gin_search_paths)


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_run_file_builds_its_config(name):
  config = _configure([name], PATHS)
  assert isinstance(config, config_lib.TrainConfig)
  model = config.model.config
  assert config.checkpoint.model_dir == "/runs/x" and isinstance(model, opt_lib.OPTConfig)
  assert config.data.catalog_dir == "/data/catalog" and config.data.mixture_or_task_name == "optiml_bench_train"
  assert config.seq_len <= model.max_position_embeddings
  rows_per_pass = config.data.batch_size // config.partitioning.num_microbatches
  data, fsdp, tensor = config.partitioning.mesh_shape
  if -1 not in config.partitioning.mesh_shape:  # pod slices: the batch divides over data x fsdp, heads over tensor
    assert rows_per_pass % (data * fsdp) == 0 and model.num_attention_heads % tensor == 0
    assert model.vocab_size % tensor == 0 and model.hidden_size % fsdp == 0
  if name.startswith("optiml_"):
    size = name[len("optiml_"):-len(".gin")]
    assert model == opt_lib.OPTConfig.preset(f"opt-{size}", dtype="bfloat16", param_dtype="float32", scan_layers=True,
                                             remat_policy=model.remat_policy, dropout=0.1, attention_dropout=0.0)
    assert config.optimizer == config_lib.OptimizerArgs()  # the paper's figures are the defaults
    assert config.seq_len == 2048 and config.model.initial_checkpoint_path == "/ckpt/opt"
    assert (config.checkpoint.keep_checkpoints, config.logging.log_every, config.run.nan_policy) == (3, 10, "skip")
  expected = {"optiml_30b.gin": (4000, 256, 64, 500), "optiml_175b.gin": (8000, 128, 256, 250)}
  if name in expected:
    steps, batch, chips, save_every = expected[name]
    assert (config.run.train_steps, config.data.batch_size, data * fsdp * tensor,
            config.checkpoint.save_every) == (steps, batch, chips, save_every)


def _bound_value(key):
  """What gin binds `key` to, macros followed; None when unbound or bound to a configurable (`@model_config()`)."""
  try:
    value = gin.query_parameter(key)
  except ValueError:
    return None
  while isinstance(value, gin.config.ConfigurableReference):
    if value.configurable.wrapped is not gin.config.macro:
      return None
    value = gin.query_parameter(f"%{'/'.join(value.scopes)}")
  return (value,)


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_binding_of_a_run_file_reaches_its_group(name):
  config = _configure([name], PATHS)
  compared = set()
  for field, cls in config_lib.GROUPS:
    group = getattr(config, field)
    for f in dataclasses.fields(cls):
      bound = _bound_value(f"{cls.__name__}.{f.name}")
      if bound is not None:
        expected = tuple(bound[0]) if isinstance(bound[0], list) else bound[0]
        assert getattr(group, f.name) == expected, (f"{cls.__name__}.{f.name}", getattr(group, f.name), expected)
        compared.add(cls.__name__)
  # The run files bind fields of every group (OptimizerArgs through the recipe or quickstart's rates).
  assert compared == {cls.__name__ for _, cls in config_lib.GROUPS}, compared


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_builds_its_preset(name):
  config = _configure(["recipe.gin", f"models/{name}"], PATHS + ["--gin.TRAIN_STEPS=100", "--gin.BATCH_SIZE=8"])
  preset = LLAMA_MODEL_FILES.get(name) or ("tiny" if name == "opt_tiny.gin" else "opt-" + name[4:-len(".gin")])
  assert gin.query_parameter("model_config.preset") == preset
  built = config.model.config
  assert type(built) is type(registry.preset(preset))
  assert (built.hidden_size, built.num_hidden_layers) == (registry.preset(preset).hidden_size,
                                                          registry.preset(preset).num_hidden_layers)
  if built.family != "opt" and preset != "llama-tiny":
    # A real Llama-family model tokenizes with its own tokenizer, the one in its converted folder.
    assert config.data.tokenizer_dir == config.model.initial_checkpoint_path == "/ckpt/opt"


@pytest.mark.parametrize("name", TRAINER_FILES)
def test_every_binding_is_commented(name):
  for number, line in enumerate((GIN_DIR / name).read_text().splitlines(), 1):
    if re.match(r"^\s*[\w./%]+\s*=", line) or line.startswith("include "):
      assert "#" in line, f"gin/{name}:{number}: binding without a comment: {line}"


def _run_cli(*flags, timeout=120):
  return subprocess.run([sys.executable, "-m", "optiml_jax.train", *flags], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def test_unknown_binding_exits_2_naming_it_before_anything_is_built(tmp_path):
  started = time.time()
  result = _run_cli("--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path}/run", "--gin.CATALOG_DIR=/nowhere",
                    "--gin.OptimizerArgs.learning_rat=0.1")
  assert result.returncode == 2, result.stderr
  assert "learning_rat" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()
  assert time.time() - started < 60


@pytest.mark.parametrize(
    "flags,message",
    [
        ([], "MODEL_DIR"),  # a required macro left unset
        ([
            "--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 4000, 'targets': 512}"
        ], "max_position_embeddings=2048"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.RunArgs.nan_policy='ignore'"
         ], "RunArgs.nan_policy"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.model_config.preset='opt-7b'"], "opt-7b"),
        # A field of another family's config: named, with the fields the preset's class has.
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.model_config.intermediate_size=64"
         ], "model_config.intermediate_size: OPTConfig (preset 'tiny') has no such field"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.DataArgs.batch_size=%BATCH"], "%BATCH"),
        # A value a group refuses: the field, and the macro that set it.
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.BATCH_SIZE=0"
         ], "DataArgs.batch_size: expected a positive integer, got 0 (set by the macro BATCH_SIZE)"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.PartitioningArgs.num_microbatches=3"
         ], "PartitioningArgs.num_microbatches=3"),
        # A binding of the former `train` configurable names where it went.
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.train.mesh_shape=(1, 8, 16)"
         ], "train.mesh_shape is now PartitioningArgs.mesh_shape"),
        # A mistyped macro would define a new one that nothing reads: named, with the macros of close names.
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.TRAIN_STEP=5"
         ], "macro TRAIN_STEP is set by a binding (--gin.TRAIN_STEP=...) but no gin file or binding uses %TRAIN_STEP; "
         "did you mean TRAIN_STEPS?"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.BATCHSIZE=2"], "did you mean BATCH_SIZE?"),
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin_bindings=NOT_A_MACRO = 3"
         ], "macro NOT_A_MACRO is set by a binding"),
        # A binding of a configurable the run never calls would be dropped by gin: named, with what to bind.
        (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.opt_model.dropout=0.3"
         ], "opt_model.dropout: this run never calls opt_model (ModelArgs.config = @model_config()), so the binding "
         "would be ignored; bind model_config.dropout instead"),
    ])
def test_configuration_errors_exit_2_naming_the_binding(flags, message, capsys):
  assert train_entry.main(["--gin_file=quickstart.gin", *flags]) == 2
  err = capsys.readouterr().err
  assert message in err, err


def test_opt_model_bindings_reach_the_model_of_a_file_that_refers_to_it_and_model_config_ones_are_refused(tmp_path):
  # A run file written before the Llama family: the model from `@opt_model()`, bound under opt_model.
  text = (GIN_DIR / "quickstart.gin").read_text(encoding="utf-8")
  text = text.replace("include 'models/opt_tiny.gin'", "opt_model.preset = 'tiny'\nopt_model.dropout = 0.3")
  old_style = tmp_path / "old_style.gin"
  old_style.write_text(text.replace("@model_config()", "@opt_model()"), encoding="utf-8")
  config = _configure([str(old_style)], PATHS[:2])
  assert (config.model.config.num_hidden_layers, config.model.config.dropout) == (2, 0.3)
  gin.clear_config()
  with pytest.raises(
      gin_utils.GinConfigError, match=r"model_config.dropout: this run never calls model_config "
      r"\(ModelArgs.config = @opt_model\(\)\).*bind opt_model.dropout instead"):
    _configure([str(old_style)], PATHS[:2] + ["--gin.model_config.dropout=0.1"])


def test_a_gin_file_with_an_unclosed_bracket_exits_2_naming_it(tmp_path, capsys):
  bad = tmp_path / "run.gin"
  bad.write_text("include 'quickstart.gin'\nTRAIN_STEPS = (5\n", encoding="utf-8")
  assert train_entry.main([f"--gin_file={bad}", "--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c"]) == 2
  error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and f"{bad}: line 3: EOF in multi-line statement" in error[0], error


def test_multihost_off_a_tpu_pod_without_a_coordinator_is_a_usage_error(tmp_path):
  # A fresh process: jax.distributed's state is global.
  result = _run_cli("--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.CATALOG_DIR=/c",
                    "--multihost")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "error: --multihost:" in result.stderr and "--coordinator_address" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_run_file_names_the_macro_it_still_needs(capsys):
  assert train_entry.main(["--gin_file=optiml_30b.gin", "--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c"]) == 2
  assert "INITIAL_CHECKPOINT_PATH" in capsys.readouterr().err


def test_check_bindings_follows_references_and_macros():
  gin.parse_config("ModelArgs.config = @model_config()\nmodel_config.preset = %PRESET\nPRESET = %gin.REQUIRED")
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_registry.check_training_bindings()
  message = str(error.value)
  assert "model_config.preset needs the macro PRESET" in message
  assert "macro MODEL_DIR is required" in message
  # Fields without a default that nothing binds, in every group, in the same message.
  for field in ("CheckpointArgs.model_dir", "DataArgs.batch_size", "RunArgs.train_steps"):
    assert f"{field} is required but no gin file or flag binds it" in message


def test_sigterm_checkpoints_and_the_same_command_resumes_to_identical_losses(tmp_path):
  catalog = tmp_path / "catalog"
  assert bench.main(["toy", "--out", str(tmp_path / "toy"), "--catalog", str(catalog)]) == 0
  flags = [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", f"--gin.CATALOG_DIR={catalog}",
      "--gin.TRAIN_STEPS=30", "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
      "--gin.model_config.max_position_embeddings=64", "--gin.model_config.dropout=0.1",
      "--gin.OptimizerArgs.warmup_steps=2", "--gin.LoggingArgs.log_every=1", "--gin.CheckpointArgs.save_every=1000",
      "--gin.LoggingArgs.tensorboard=False", "--gin.LoggingArgs.progress=False"
  ]
  cache = [f"--gin.RunArgs.compilation_cache_dir={tmp_path / 'jax_cache'}"]
  metrics = tmp_path / "run" / "metrics.jsonl"
  # The same command never stopped (another MODEL_DIR), run alongside: the reference losses.
  reference = subprocess.Popen([
      sys.executable, "-m", "optiml_jax.train",
      *[f.replace(str(tmp_path / "run"), str(tmp_path / "ref")) for f in flags], *cache
  ], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  process = subprocess.Popen([sys.executable, "-m", "optiml_jax.train", *flags, *cache], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 150
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    assert process.poll() is None and time.time() < deadline, process.communicate()[0][-3000:]
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=120)
  assert process.returncode == 0, output[-3000:]
  reached = [json.loads(line)["step"] for line in metrics.read_text().splitlines()][-1]
  saved = sorted(int(p.name) for p in (tmp_path / "run").iterdir() if p.name.isdigit())
  assert saved == [reached] and reached < 30, (saved, reached, output[-2000:])
  assert "preempted" in output

  resumed = _run_cli(*flags, *cache, timeout=150)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
  summary = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert (summary["first_step"], summary["last_step"]) == (reached, 30)

  # The same loss at every step as the run that never stopped.
  reference_output, _ = reference.communicate(timeout=150)
  assert reference.returncode == 0, reference_output[-2000:]
  losses = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
  assert losses(tmp_path / "run") == losses(tmp_path / "ref")
  assert [step for step, _ in losses(tmp_path / "run")] == list(range(1, 31))


def test_a_llama_run_tokenizes_with_its_own_tokenizer_and_carries_it_to_evaluation(tmp_path, tiny_tokenizer, capsys):
  from optiml_jax import eval as eval_entry  # pylint: disable=g-import-not-at-top
  tokenizer = tiny_tokenizer("smollm2")  # ~330 ids: no BOS added, <|im_end|> (2) ends each target
  catalog = tmp_path / "catalog"
  assert bench.main(["toy", "--out", str(tmp_path / "toy"), "--catalog", str(catalog)]) == 0
  flags = [
      "--gin_file=quickstart.gin", "--gin_file=models/llama_tiny.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}",
      f"--gin.CATALOG_DIR={catalog}", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2", "--gin.OptimizerArgs.warmup_steps=1",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}", "--gin.model_config.max_position_embeddings=64",
      "--gin.LoggingArgs.progress=False", "--gin.LoggingArgs.tensorboard=False"
  ]
  # OPT's tokenizer (the default) has ids up to 50264: a 330-row embedding is refused before anything compiles.
  assert train_entry.main([*flags, "--gin.model_config.vocab_size=330"]) == 2
  err = capsys.readouterr().err
  assert "vocab_size 330 does not cover" in err and "50265" in err and "Traceback" not in err
  assert not (tmp_path / "run" / "config.json").exists()

  gin.clear_config()
  assert train_entry.main([*flags, "--gin.model_config.vocab_size=330",
                           f"--gin.DataArgs.tokenizer_dir='{tokenizer}'"]) == 0
  run = tmp_path / "run"
  assert (run / "tokenizer.json").read_bytes() == (tokenizer / "tokenizer.json").read_bytes()
  assert json.loads((run / "config.json").read_text())["model_type"] == "llama"

  # Evaluation finds the tokenizer in MODEL_DIR: no TOKENIZER_DIR, no model gin file.
  gin.clear_config()
  out = tmp_path / "eval"
  assert eval_entry.main([
      "--gin_file=eval.gin", f"--gin.CHECKPOINT_PATH={run}", f"--gin.EVAL_OUTPUT_DIR={out}",
      f"--gin.CATALOG_DIR={catalog}", "--gin.TASKS=['sni:task001_toy_add_small']", "--gin.MAX_INSTANCES=2",
      "--gin.evaluate.max_new_tokens=3", "--gin.evaluate.progress=False"
  ]) == 0
  report = json.loads((out / "metrics.json").read_text())
  assert report["settings"]["tokenizer_dir"] == str(run)
  assert report["tasks"]["sni:task001_toy_add_small"]["shots"]["0"]["error"] is None


@pytest.mark.parametrize("flags,message", [
    (["--gin.DataArgs.tokenizer_dir='/nowhere/tok'"], "DataArgs.tokenizer_dir (TOKENIZER_DIR)"),
])
def test_a_missing_tokenizer_folder_exits_2_naming_the_binding(flags, message, capsys):
  assert train_entry.main(["--gin_file=quickstart.gin", "--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", *flags]) == 2
  err = capsys.readouterr().err
  assert message in err and "/nowhere/tok" in err, err


def test_sequence_parallel_binding_selects_the_sequence_parallel_rule_table():
  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top
  base = _configure(["optiml_175b.gin"], PATHS)
  assert loop.rules_for(base.partitioning) == partitioning.LOGICAL_AXIS_RULES
  sp = _configure(["optiml_175b.gin"], PATHS + ["--gin.PartitioningArgs.sequence_parallel=True"])
  assert loop.rules_for(sp.partitioning) == partitioning.SEQUENCE_PARALLEL_RULES
  assert sp.partitioning.sequence_parallel and ("length", "tensor") in loop.rules_for(sp.partitioning)


@pytest.mark.parametrize("module", ["optiml_jax.eval", "optiml_jax.plan"])
def test_other_entry_points_do_not_import_the_train_entry_point(module):
  # They share the gin registrations (gin_registry) and the config (trainer.config), not train.py.
  code = (f"import sys, {module}, optiml_jax.gin_registry, optiml_jax.trainer.config\n"
          "print('optiml_jax.train' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "False"


def test_every_entry_point_in_one_process_registers_each_configurable_once():
  code = ("import optiml_jax.train, optiml_jax.eval, optiml_jax.plan, optiml_jax.quickstart, gin\n"
          "gin.parse_config('ModelArgs.config = @model_config()\\nmodel_config.preset = \"tiny\"')\n"
          "print('ok')")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _toy_flags(tmp_path, model_dir, steps=6):
  catalog = tmp_path / "catalog"
  if not catalog.exists():
    assert bench.main(["toy", "--out", str(tmp_path / "toy"), "--catalog", str(catalog)]) == 0
  return [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={model_dir}", f"--gin.CATALOG_DIR={catalog}",
      f"--gin.TRAIN_STEPS={steps}", "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
      "--gin.model_config.max_position_embeddings=64", "--gin.OptimizerArgs.warmup_steps=2",
      "--gin.LoggingArgs.log_every=1", "--gin.CheckpointArgs.save_every=2", "--gin.LoggingArgs.tensorboard=False",
      "--gin.LoggingArgs.progress=False"
  ]


NOISE = ("Traceback", "Exception ignored", "Future exception", "TensorStore({")


@pytest.mark.slow  # three in-process runs of the toy bench: over a minute on 2 cores (tests/trainer/
# test_checkpoint_faults.py checks every fault, and the losses, on the synthetic stream in seconds)
def test_a_damaged_newest_checkpoint_warns_in_a_few_lines_and_resumes_or_stops_with_exit_1(tmp_path, capsys):
  run = tmp_path / "run"
  flags = _toy_flags(tmp_path, run)
  assert train_entry.main([*flags, "--gin.RunArgs.stop_at_step=4"]) == 0
  assert sorted(p.name for p in run.iterdir() if p.name.isdigit()) == ["2", "4"]
  data = max((p for p in (run / "4" / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # cut to half its size
  capsys.readouterr()

  gin.clear_config()
  assert train_entry.main([*flags, "--gin.CheckpointArgs.on_bad_checkpoint='stop'"]) == 1
  err = capsys.readouterr().err
  assert not any(noise in err for noise in NOISE), err[-3000:]
  error = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and error[0].startswith(f"error: checkpoint step 4 ({run / '4'}): params: tensor '"), err
  assert "older steps: [2]" in error[0] and "(details: " in error[0] and (run / "4").is_dir()

  gin.clear_config()
  assert train_entry.main(flags) == 0
  captured = capsys.readouterr()
  assert not any(noise in captured.err for noise in NOISE), captured.err[-3000:]
  warnings = [line for line in captured.err.splitlines() if line.startswith("WARNING ") and "/run/4" in line]
  assert len(warnings) == 2, captured.err[-3000:]
  assert f"checkpoint step 4 ({run / '4'}): params: tensor '" in warnings[0]
  assert "resuming from step 2" in warnings[1] and f"{run / '4.unrestorable'}" in warnings[1]
  summary = json.loads(captured.out.strip().splitlines()[-1])
  assert (summary["first_step"], summary["last_step"], summary["checkpoint_steps"]) == (2, 6, [4, 6])
  assert "unrestorable checkpoint set aside: step 4" in captured.out
  steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 7))


def _can_mount_tmpfs() -> bool:
  try:
    return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True,
                          timeout=30).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False


@pytest.mark.slow
def test_a_full_disk_during_a_save_exits_1_naming_step_and_path_and_the_rerun_resumes_to_identical_losses(tmp_path):
  """A real ENOSPC: MODEL_DIR on a small tmpfs (a private mount namespace) that a filler file leaves too little
  room for the next step's checkpoint."""
  if not _can_mount_tmpfs():
    pytest.skip("cannot mount a tmpfs here (unshare -rm; mount -t tmpfs)")
  disk = tmp_path / "disk"
  disk.mkdir()
  run = disk / "run"
  flags = _toy_flags(tmp_path, run) + [f"--gin.RunArgs.compilation_cache_dir={tmp_path / 'jax_cache'}"]
  command = " ".join(shlex.quote(f) for f in [sys.executable, "-m", "optiml_jax.train", *flags])
  # Steps 2 and 4 fit (about 40 MB each with the optimizer state); a filler then leaves 4 MB: step 6 cannot.
  script = (f"mount -t tmpfs -o size=160m tmpfs '{disk}' && cd '{REPO}' && "
            f"{command} --gin.RunArgs.stop_at_step=4 > '{tmp_path}/first.out' 2>&1; echo first=$?; "
            f"avail=$(df -k --output=avail '{disk}' | tail -1); "
            f"dd if=/dev/zero of='{disk}/filler' bs=1k count=$((avail - 4096)) 2>/dev/null; "
            f"{command} > '{tmp_path}/full.out' 2> '{tmp_path}/full.err'; echo full=$?; "
            f"ls '{run}' > '{tmp_path}/after_full.txt'; rm '{disk}/filler'; "
            f"{command} > '{tmp_path}/resumed.out' 2>&1; echo resumed=$?; "
            f"cp '{run}/metrics.jsonl' '{tmp_path}/metrics.jsonl'")
  result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=500)
  codes = dict(line.split("=") for line in result.stdout.split() if "=" in line)
  assert codes.get("first") == "0", (tmp_path / "first.out").read_text()[-3000:]
  err = (tmp_path / "full.err").read_text()
  assert codes["full"] == "1", err[-3000:]
  assert not any(noise in err for noise in NOISE), err[-3000:]
  error = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and error[0].startswith(f"error: step 6: the checkpoint could not be written to {run / '6'}: ")
  assert "No space left on device" in error[0], error
  assert sorted(n for n in (tmp_path / "after_full.txt").read_text().split() if n.isdigit()) == ["2", "4"]
  assert codes["resumed"] == "0", (tmp_path / "resumed.out").read_text()[-3000:]
  resumed = json.loads((tmp_path / "resumed.out").read_text().strip().splitlines()[-1])
  assert (resumed["first_step"], resumed["last_step"]) == (4, 6)

  reference = _run_cli(*[f.replace(str(run), str(tmp_path / "ref")) for f in flags], timeout=200)
  assert reference.returncode == 0, reference.stderr[-2000:]
  losses = lambda p: [(r["step"], r["loss"]) for r in map(json.loads, p.read_text().splitlines())]
  assert losses(tmp_path / "metrics.jsonl") == losses(tmp_path / "ref" / "metrics.jsonl")


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
  """The toy bench's catalog and its pre-tokenized cache (0-shot), built once for the tests that train from it."""
  pytest.importorskip("apache_beam", reason="the cache is built with Apache Beam (the test extra installs it)")
  root = tmp_path_factory.mktemp("toy_cache")
  assert bench.main(["toy", "--out", str(root / "toy"), "--catalog", str(root / "catalog")]) == 0
  assert bench.main([
      "cache",
      str(root / "catalog"), "--out",
      str(root / "cache"), "--direct_num_workers=1", "--direct_running_mode=in_memory"
  ]) == 0
  return root / "cache"


# slow: two runs (~16 s); the cached stream's exact resume is tested alone in data/test_cached_stream.py
@pytest.mark.slow
def test_a_run_from_the_bench_cache_resumes_to_the_uninterrupted_losses(tmp_path, toy_cache):
  flags = [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.CATALOG_DIR=None",
      f"--gin.CACHE_DIR={toy_cache}", "--gin.TRAIN_STEPS=8", "--gin.BATCH_SIZE=2",
      "--gin.model_config.max_position_embeddings=128", "--gin.LoggingArgs.log_every=1",
      "--gin.CheckpointArgs.save_every=4", "--gin.CheckpointArgs.async_checkpoints=False",
      "--gin.OptimizerArgs.warmup_steps=2", "--gin.LoggingArgs.tensorboard=False", "--gin.LoggingArgs.progress=False",
      f"--gin.RunArgs.compilation_cache_dir={tmp_path / 'jax_cache'}"
  ]
  first = _run_cli(*flags, timeout=180)
  assert first.returncode == 0, first.stderr[-3000:]
  metrics = tmp_path / "run" / "metrics.jsonl"
  uninterrupted = [json.loads(line) for line in metrics.read_text().splitlines()]
  shutil.rmtree(tmp_path / "run" / "8")  # as if the run had stopped after its step-4 checkpoint
  resumed = _run_cli(*flags, timeout=180)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  summary = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert (summary["first_step"], summary["last_step"]) == (4, 8)
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in uninterrupted] == [r["step"] for r in rows] == list(range(1, 9))
  assert [r["loss"] for r in rows] == [r["loss"] for r in uninterrupted]  # the same batches after the resume


def test_xla_flags_of_the_run_reach_xla(tmp_path, toy_cache):
  dump = tmp_path / "xla_dump"
  result = _run_cli("--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.CATALOG_DIR=None",
                    f"--gin.CACHE_DIR={toy_cache}", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=2",
                    "--gin.model_config.max_position_embeddings=128", "--gin.OptimizerArgs.warmup_steps=1",
                    "--gin.LoggingArgs.tensorboard=False", "--gin.LoggingArgs.progress=False",
                    f"--gin.RunArgs.xla_flags=['--xla_dump_to={dump}', '--xla_dump_hlo_as_text']", timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  assert any("train_step" in path.name for path in dump.iterdir()), sorted(p.name for p in dump.iterdir())[:10]


def _run_without_tf(env, module, *args, timeout=180):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def test_a_run_from_the_bench_cache_needs_neither_tensorflow_nor_seqio(tmp_path, toy_cache, without_tensorflow_env):
  probe = _run_without_tf(without_tensorflow_env, "optiml_jax.data.registry")  # the block itself: seqio refused
  assert probe.returncode == 1 and "ModuleNotFoundError: import of seqio halted" in probe.stderr, probe.stderr[-2000:]
  flags = [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.CATALOG_DIR=None",
      f"--gin.CACHE_DIR={toy_cache}", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=2",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}", "--gin.model_config.max_position_embeddings=64",
      "--gin.OptimizerArgs.warmup_steps=1", "--gin.CheckpointArgs.async_checkpoints=False",
      "--gin.LoggingArgs.progress=False"
  ]  # TensorBoard left on, as quickstart.gin has it: without TensorFlow, a warning and no events
  result = _run_without_tf(without_tensorflow_env, "optiml_jax.train", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert (summary["first_step"], summary["last_step"], summary["checkpoint_steps"]) == (0, 3, [3])
  assert (tmp_path / "run" / "3").is_dir() and (tmp_path / "run" / "config.json").is_file()
  # Nor matplotlib (GPU images lack it too): the run ends well, without its loss curve, and says so.
  assert not (tmp_path / "run" / "loss.png").exists() and "no loss.png" in result.stderr, result.stderr[-2000:]
  assert summary["loss_plot"] is None

  # A cache built before cache.json recorded the tokenizer: exit 2, naming it and the command that records it.
  old = tmp_path / "old_cache"
  shutil.copytree(toy_cache, old)
  manifest = json.loads((old / "cache.json").read_text())
  del manifest["tokenizer"]
  (old / "cache.json").write_text(json.dumps(manifest))
  result = _run_without_tf(without_tensorflow_env, "optiml_jax.train",
                           *[f.replace(str(toy_cache), str(old)) for f in flags])
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"error: DataArgs.cache_dir (CACHE_DIR): {old / 'cache.json'}: this cache was built before" in result.stderr
  assert f"python -m optiml_jax.bench cache {old / 'catalog.json'} --out {old}" in result.stderr
  assert "Traceback" not in result.stderr


def test_a_run_from_the_bench_cache_checks_its_tokenizer_and_the_embedding(tmp_path, toy_cache, tiny_tokenizer, capsys):
  flags = [
      "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.CATALOG_DIR=None",
      f"--gin.CACHE_DIR={toy_cache}"
  ]
  assert train_entry.main([*flags, f"--gin.DataArgs.tokenizer_dir='{tiny_tokenizer('smollm2')}'"]) == 2
  err = capsys.readouterr().err
  assert "DataArgs.cache_dir (CACHE_DIR)" in err and "tokenized with another tokenizer" in err, err
  gin.clear_config()
  assert train_entry.main([*flags, "--gin.model_config.vocab_size=330"]) == 2
  err = capsys.readouterr().err
  assert "vocab_size 330 does not cover the tokenizer in" in err and "50265" in err, err
  gin.clear_config()
  assert train_entry.main([*flags, "--gin.MIXTURE_OR_TASK_NAME='nope'"]) == 2
  assert "MIXTURE_OR_TASK_NAME" in capsys.readouterr().err
  assert not (tmp_path / "run").exists()


def _never_build(monkeypatch):
  """Fails the test if the run gets as far as building (and so compiling) its step."""
  monkeypatch.setattr(loop, "build_program", lambda *args, **kwargs: pytest.fail("the step was built"))


# slow: two in-process runs (~31 s); resume itself is in the default suite (SIGTERM test)
@pytest.mark.slow
def test_a_relative_model_dir_saves_and_resumes_under_its_absolute_path(tmp_path, monkeypatch, capsys):
  catalog_flags = _toy_flags(tmp_path, "unused", steps=4)  # builds the catalog under tmp_path
  monkeypatch.chdir(tmp_path)
  flags = [f for f in catalog_flags if not f.startswith("--gin.MODEL_DIR=")] + ["--gin.MODEL_DIR=run"]
  assert train_entry.main([*flags, "--gin.RunArgs.stop_at_step=2"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  run = tmp_path / "run"
  assert (summary["model_dir"], summary["checkpoint_steps"]) == (str(run), [2])
  assert summary["loss_plot"] == str(run / "loss.png") and (run / "config.json").is_file()
  gin.clear_config()
  monkeypatch.chdir(tmp_path / "toy")  # another working directory: the same relative path names another folder
  assert train_entry.main([*flags[:-1], f"--gin.MODEL_DIR={run}"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (summary["first_step"], summary["last_step"], summary["checkpoint_steps"]) == (2, 4, [2, 4])
  assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def _fake_run(model_dir, config, steps=("2",)):
  """A MODEL_DIR as a run of `config` leaves it (config.json, committed step folders), without training."""
  for step in steps:
    (model_dir / step / "params").mkdir(parents=True)
    (model_dir / step / "params" / "_METADATA").write_text("{}")
  (model_dir / "config.json").write_text(json.dumps(config.to_hf()), encoding="utf-8")
  return model_dir


def test_a_model_change_that_keeps_every_shape_exits_2_naming_the_fields_before_compiling(
    tmp_path, monkeypatch, capsys):
  flags = _toy_flags(tmp_path, tmp_path / "run")
  quickstart_model = _configure(["quickstart.gin"], flags[1:]).model.config
  run = _fake_run(tmp_path / "run", quickstart_model)
  before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
  _never_build(monkeypatch)
  gin.clear_config()
  assert train_entry.main([*flags, "--gin.model_config.num_attention_heads=8"]) == 2
  err = capsys.readouterr().err
  assert f"error: ModelArgs.config: the model differs from the one the run in {run} was trained with" in err
  assert "num_attention_heads: 8 configured, 4 there" in err and "Traceback" not in err
  assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # config.json not rewritten

  # The same from an initial checkpoint whose config.json describes another model (here: this run's).
  gin.clear_config()
  other = [f.replace(str(run), str(tmp_path / "new")) for f in flags]
  assert train_entry.main([*other, f"--gin.INITIAL_CHECKPOINT_PATH={run}",
                           "--gin.model_config.num_attention_heads=8"]) == 2
  err = capsys.readouterr().err
  assert "error: ModelArgs.initial_checkpoint_path (INITIAL_CHECKPOINT_PATH)" in err
  assert "num_attention_heads: 8 configured, 4 there" in err and not (tmp_path / "new").exists()


def test_a_model_dir_that_is_a_file_or_a_model_folder_exits_2_before_compiling(tmp_path, monkeypatch, capsys):
  _never_build(monkeypatch)
  afile = tmp_path / "afile"
  afile.write_text("keep")
  hf = tmp_path / "hf"
  hf.mkdir()
  for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
    (hf / name).write_text(name)
  converted = tmp_path / "converted"  # as `convert hf-to-orbax` writes it: config.json beside the params item
  (converted / "params").mkdir(parents=True)
  (converted / "config.json").write_text(json.dumps(registry.preset("tiny").to_hf()), encoding="utf-8")
  (converted / "params" / "_METADATA").write_text("{}")
  for model_dir, what in ((afile, "is a file"), (hf, "is a Hugging Face model folder"), (converted,
                                                                                         "is an Orbax checkpoint")):
    gin.clear_config()
    assert train_entry.main(["--gin_file=quickstart.gin", f"--gin.MODEL_DIR={model_dir}", "--gin.CATALOG_DIR=/c"]) == 2
    err = capsys.readouterr().err
    assert f"error: CheckpointArgs.model_dir (MODEL_DIR): {model_dir} {what}" in err, err
    assert what == "is a file" or "INITIAL_CHECKPOINT_PATH" in err
  assert afile.read_text() == "keep" and [p.read_text() for p in sorted(hf.iterdir())] == sorted(
      ["config.json", "merges.txt", "model.safetensors", "vocab.json"])


def test_a_mesh_that_does_not_fit_the_devices_exits_2_naming_the_binding_before_the_catalog_is_registered(
    tmp_path, monkeypatch, capsys):
  import jax  # pylint: disable=g-import-not-at-top

  from optiml_jax.data import registry as data_registry  # pylint: disable=g-import-not-at-top
  flags = _toy_flags(tmp_path, tmp_path / "run")
  _never_build(monkeypatch)
  monkeypatch.setattr(data_registry, "register_catalog", lambda *a, **k: pytest.fail("the catalog was registered"))
  devices = jax.device_count()
  assert train_entry.main([*flags, f"--gin.PartitioningArgs.mesh_shape=({devices + 1}, 1, 1)"]) == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == (f"error: PartitioningArgs.mesh_shape: make_mesh: data*fsdp*tensor = {devices + 1} "
                                  f"(data={devices + 1}, fsdp=1, tensor=1) but there are {devices} devices"), err
  assert not (tmp_path / "run").exists()


def test_a_missing_or_broken_catalog_or_task_file_exits_2_naming_catalog_dir_before_compiling(
    tmp_path, monkeypatch, capsys):
  _toy_flags(tmp_path, "unused")  # the toy catalog
  _never_build(monkeypatch)
  corrupt = tmp_path / "corrupt"
  corrupt.mkdir()
  (corrupt / "catalog.json").write_text("{not json")
  gone = tmp_path / "gone"
  gone.mkdir()
  catalog = json.loads((tmp_path / "catalog" / "catalog.json").read_text())
  missing = [catalog["tasks"][i]["path"] + ".gone" for i in (0, 5)]
  catalog["tasks"][0]["path"], catalog["tasks"][5]["path"] = missing
  (gone / "catalog.json").write_text(json.dumps(catalog))
  for catalog_dir, message in ((tmp_path / "nowhere", "no catalog here"), (corrupt, "not a catalog's JSON"),
                               (gone, f"2 of its {len(catalog['tasks'])} tasks' source files are missing: "
                                f"{missing[0]}, {missing[1]}")):
    gin.clear_config()
    assert train_entry.main(
        ["--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", f"--gin.CATALOG_DIR={catalog_dir}"]) == 2
    err = capsys.readouterr().err
    assert "error: DataArgs.catalog_dir (CATALOG_DIR): " in err and message in err and "Traceback" not in err, err
  assert not (tmp_path / "run").exists()
