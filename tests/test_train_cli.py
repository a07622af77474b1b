"""`python -m optiml_jax.train`: every gin file builds its config; configuration errors exit 2 before any
compilation; SIGTERM checkpoints and exits 0, and the same command resumes to the same losses as a run that
was never stopped."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import gin
import pytest

from optiml_jax import bench
from optiml_jax import gin_utils
from optiml_jax import train as train_entry
from optiml_jax.models import opt as opt_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = REPO / "gin"
# Files of other entry points (evaluation, t5x) live in gin/ too; these are the trainer's.
RUN_FILES = ["quickstart.gin", "optiml_1.3b.gin", "optiml_30b.gin", "optiml_175b.gin"]
MODEL_FILES = sorted(p.name for p in (GIN_DIR / "models").glob("opt_*.gin"))
TRAINER_FILES = RUN_FILES + ["recipe.gin"] + [f"models/{name}" for name in MODEL_FILES]
PATHS = ["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/data/catalog", "--gin.INITIAL_CHECKPOINT_PATH=/ckpt/opt"]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _configure(files, flags=()):
  args = train_entry.parse_flags([f"--gin_file={f}" for f in files] + list(flags))
  return train_entry.configure(args.gin_file, args.gin_bindings, args.gin_search_paths)


@pytest.mark.parametrize("name", RUN_FILES)
def test_every_run_file_builds_its_config(name):
  config = _configure([name], PATHS)
  assert config.model_dir == "/runs/x" and isinstance(config.model, opt_lib.OPTConfig)
  assert config.seq_len <= config.model.max_position_embeddings
  rows_per_pass = config.batch_size // config.num_microbatches
  data, fsdp, tensor = config.mesh_shape
  if -1 not in config.mesh_shape:  # pod-slice meshes: the batch divides over data x fsdp, heads over tensor
    assert rows_per_pass % (data * fsdp) == 0 and config.model.num_attention_heads % tensor == 0
    assert config.model.vocab_size % tensor == 0 and config.model.hidden_size % fsdp == 0
  if name.startswith("optiml_"):
    size = name[len("optiml_"):-len(".gin")]
    assert config.model == opt_lib.OPTConfig.preset(
        f"opt-{size}", dtype="bfloat16", param_dtype="float32", scan_layers=True,
        remat_policy=config.model.remat_policy, dropout=0.1, attention_dropout=0.0)
    assert config.optimizer == train_entry.loop.OptimizerArgs()  # the paper's figures are the defaults
    assert config.seq_len == 2048 and config.initial_checkpoint_path == "/ckpt/opt"
  expected = {"optiml_30b.gin": (4000, 256, 64), "optiml_175b.gin": (8000, 128, 256)}
  if name in expected:
    steps, batch, chips = expected[name]
    assert (config.train_steps, config.batch_size, data * fsdp * tensor) == (steps, batch, chips)


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_builds_its_preset(name):
  config = _configure(["recipe.gin", f"models/{name}"], PATHS + ["--gin.TRAIN_STEPS=100", "--gin.BATCH_SIZE=8"])
  preset = "tiny" if name == "opt_tiny.gin" else "opt-" + name[len("opt_"):-len(".gin")]
  assert (config.model.hidden_size, config.model.num_hidden_layers) == (
      opt_lib.OPTConfig.preset(preset).hidden_size, opt_lib.OPTConfig.preset(preset).num_hidden_layers)


@pytest.mark.parametrize("name", TRAINER_FILES)
def test_every_binding_is_commented(name):
  for number, line in enumerate((GIN_DIR / name).read_text().splitlines(), 1):
    if re.match(r"^\s*[\w./%]+\s*=", line) or line.startswith("include "):
      assert "#" in line, f"gin/{name}:{number}: binding without a comment: {line}"


def _run_cli(*flags, timeout=120):
  return subprocess.run([sys.executable, "-m", "optiml_jax.train", *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout)


def test_unknown_binding_exits_2_naming_it_before_anything_is_built(tmp_path):
  started = time.time()
  result = _run_cli("--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path}/run",
                    "--gin.CATALOG_DIR=/nowhere", "--gin.train.learning_rat=0.1")
  assert result.returncode == 2, result.stderr
  assert "learning_rat" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()
  assert time.time() - started < 60


@pytest.mark.parametrize("flags,message", [
    ([], "MODEL_DIR"),  # a required macro left unset
    (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.TASK_FEATURE_LENGTHS={'inputs': 4000, 'targets': 512}"],
     "max_position_embeddings=2048"),
    (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.train.nan_policy='ignore'"], "train.nan_policy"),
    (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.opt_model.preset='opt-7b'"], "opt-7b"),
    (["--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c", "--gin.train.batch_size=%BATCH"], "%BATCH"),
])
def test_configuration_errors_exit_2_naming_the_binding(flags, message, capsys):
  assert train_entry.main(["--gin_file=quickstart.gin", *flags]) == 2
  err = capsys.readouterr().err
  assert message in err, err


def test_a_run_file_names_the_macro_it_still_needs(capsys):
  assert train_entry.main(["--gin_file=optiml_30b.gin", "--gin.MODEL_DIR=/runs/x", "--gin.CATALOG_DIR=/c"]) == 2
  assert "INITIAL_CHECKPOINT_PATH" in capsys.readouterr().err


def test_check_bindings_follows_references_and_macros():
  gin.parse_config("train.model = @opt_model()\nopt_model.preset = %PRESET\nPRESET = %gin.REQUIRED")
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_utils.check_bindings("train", train_entry.train_config)
  message = str(error.value)
  assert "opt_model.preset needs the macro PRESET" in message
  assert "train.model_dir is required" in message


def test_sigterm_checkpoints_and_the_same_command_resumes_to_identical_losses(tmp_path):
  catalog = tmp_path / "catalog"
  assert bench.main(["toy", "--out", str(tmp_path / "toy"), "--catalog", str(catalog)]) == 0
  flags = ["--gin_file=quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}", f"--gin.CATALOG_DIR={catalog}",
           "--gin.TRAIN_STEPS=30", "--gin.BATCH_SIZE=2", "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 16}",
           "--gin.opt_model.max_position_embeddings=64", "--gin.opt_model.dropout=0.1",
           "--gin.OptimizerArgs.warmup_steps=2", "--gin.train.log_every=1", "--gin.train.save_every=1000",
           "--gin.train.tensorboard=False", "--gin.train.progress=False"]
  cache = [f"--gin.train.compilation_cache_dir={tmp_path / 'jax_cache'}"]
  metrics = tmp_path / "run" / "metrics.jsonl"
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

  # The same command never stopped (another MODEL_DIR): the same loss at every step.
  reference = _run_cli(*[f.replace(str(tmp_path / "run"), str(tmp_path / "ref")) for f in flags], *cache,
                       timeout=150)
  assert reference.returncode == 0, reference.stderr[-2000:]
  losses = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
  assert losses(tmp_path / "run") == losses(tmp_path / "ref")
  assert [step for step, _ in losses(tmp_path / "run")] == list(range(1, 31))


def test_sequence_parallel_binding_selects_the_sequence_parallel_rule_table():
  from optiml_jax.models import partitioning  # pylint: disable=g-import-not-at-top
  base = _configure(["optiml_175b.gin"], PATHS)
  assert train_entry.rules_for(base) == partitioning.LOGICAL_AXIS_RULES
  sp = _configure(["optiml_175b.gin"], PATHS + ["--gin.train.sequence_parallel=True"])
  assert train_entry.rules_for(sp) == partitioning.SEQUENCE_PARALLEL_RULES
  assert sp.sequence_parallel and ("length", "tensor") in train_entry.rules_for(sp)
