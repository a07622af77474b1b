"""End-to-end runs of t5x's own entry points with gin/t5x/: `python -m t5x.train` (5 steps and a resume, for a
tiny OPT and a tiny Llama), `t5x.eval` (rank-classification scores checked against our model) and `t5x.infer`
(greedy decoding checked against ours, for both families), plus checkpoints converted both ways.

Needs t5x: importable already, or checkouts of t5x, airio and jestimator under $OPTIML_T5X_DIR (docs/t5x.md,
"Installing t5x from source"); skipped otherwise. The t5x runs are subprocesses of 15-60 s on two CPU cores, so they are
marked slow (`pytest --runslow`); the gin files of every size are checked without --runslow.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io
from optiml_jax.data import bench_config
from optiml_jax.data import catalog
from optiml_jax.data import formatting
from optiml_jax.data import sources
from optiml_jax.data import toybench
from optiml_jax.data import vocab as vocab_lib
from optiml_jax.data.sources import sni
from optiml_jax.evaluation import evaluator
from optiml_jax.interop import t5x_checkpoints
from optiml_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[2]
T5X_ENV = "OPTIML_T5X_DIR"
T5X_CHECKOUTS = ("t5x", "airio", "jestimator")
MC_TASK = "crossfit:quiz_mc"
GEN_TASK = "sni:task005_toy_add_large"
EOS = 2
TINY = registry.preset("tiny", dropout=0.0)  # gin/t5x/models/opt_tiny.gin
SMALL_LENGTHS = "{'inputs': 96, 'targets': 32}"


def _t5x_pythonpath() -> str | None:
  """PYTHONPATH for subprocesses that import t5x, or None when t5x is not available."""
  root = os.environ.get(T5X_ENV)
  if root:
    paths = [os.path.join(root, name) for name in T5X_CHECKOUTS]
    if all(os.path.isdir(os.path.join(p, name)) for p, name in zip(paths, T5X_CHECKOUTS)):
      return os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])
  if importlib.util.find_spec("t5x") is not None:
    return os.environ.get("PYTHONPATH", "")
  return None


PYTHONPATH = _t5x_pythonpath()
pytestmark = pytest.mark.skipif(
    PYTHONPATH is None, reason=f"t5x is not importable: set {T5X_ENV} to a folder "
    "holding checkouts of t5x, airio and jestimator (docs/t5x.md)")

# Parses a training gin file as `t5x.train` does and builds the train state's shapes and partitioning
# (jax.eval_shape: nothing is allocated).
_PROBE = """
import json, sys
from t5x import train as train_script
sys.modules["__main__"] = train_script  # t5x's run configs `import __main__ as train_script`
import gin, jax, numpy as np
from t5x import gin_utils, utils

@gin.configurable
def probe(model=gin.REQUIRED, partitioner=gin.REQUIRED, batch_size=gin.REQUIRED, lengths=gin.REQUIRED,
          steps=gin.REQUIRED):
  init = utils.TrainStateInitializer(model.optimizer_def, model.get_initial_variables,
                                     {"decoder_input_tokens": (batch_size, sum(lengths.values()))}, partitioner,
                                     {"decoder_input_tokens": np.int32})
  config = model.module.config
  layers = init.train_state_axes.params["layers"]
  mlp_in = layers["fc1"] if "fc1" in layers else layers["mlp"]["gate_proj"]  # OPT's, a Llama's
  return {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(init.global_train_state_shape.params)),
          "expected": config.num_params(), "layers": config.num_hidden_layers, "family": config.family,
          "num_partitions": gin.query_parameter("%NUM_PARTITIONS"),
          "mlp_in": [str(a) for a in mlp_in["kernel"]],
          "optimizer": type(model.optimizer_def).__name__, "batch_size": batch_size, "steps": steps}

for gin_file in sys.argv[3:]:
  gin.clear_config()
  bindings = ["MODEL_DIR = '/unused'", "CATALOG_DIR = '/unused'", "INITIAL_CHECKPOINT_PATH = '/unused'",
              "TOKENIZER_DIR = '/unused'", "include %r" % sys.argv[2],
              "probe.model = %MODEL", "probe.partitioner = @partitioning.PjitPartitioner()",
              "probe.batch_size = %BATCH_SIZE", "probe.lengths = %TASK_FEATURE_LENGTHS",
              "probe.steps = %TRAIN_STEPS"]
  gin_utils.parse_gin_flags([sys.argv[1]], [gin_file], bindings, finalize_config=False)
  print("PROBE", gin_file, json.dumps(probe()))
"""


def _run_t5x(entry: str, gin_files: list[str], bindings: dict[str, str], cwd: pathlib.Path, log: pathlib.Path) -> str:
  """Runs `python -m t5x.<entry>` from `cwd` (not the t5x checkout) and returns its log; fails on rc != 0."""
  args = [sys.executable, "-m", f"t5x.{entry}", f"--gin_search_paths={REPO / 'gin'}"]
  args += [f"--gin_file={f}" for f in gin_files]
  args += [f"--gin.{k}={v}" for k, v in bindings.items()]
  env = dict(os.environ, PYTHONPATH=PYTHONPATH, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
  text = done.stdout + done.stderr
  log.write_text(text, encoding="utf-8")
  assert done.returncode == 0, f"t5x.{entry} failed (log: {log}):\n{text[-4000:]}"
  return text


def _quote(value) -> str:
  return json.dumps(str(value))


def _train_losses(log: str) -> dict[int, float]:
  pattern = r"\[(\d+)\] collection=train .*?\bloss=([-+0-9.eEnaif]+)"
  return {int(step): float(loss) for step, loss in re.findall(pattern, log)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  """Toy SNI tasks plus a multiple-choice JSONL task, cataloged with tasks/optiml_bench.yaml."""
  root = tmp_path_factory.mktemp("t5x_bench")
  sni_dir = toybench.write(root / "sni", seed=0, num_instances=60)
  jsonl_dir = root / "crossfit"
  jsonl_dir.mkdir()
  rows = [{
      "src": f"Quiz {i}: which colour is item number {i} painted in?",
      "tgt": ["red", "blue", "green"][i % 3],
      "options": ["red", "blue", "green"]
  } for i in range(40)]
  (jsonl_dir / "quiz_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  config = bench_config.load_config(REPO / "tasks" / "optiml_bench.yaml")
  built = catalog.build(config, sources.iter_all(sni_dir=sni_dir, jsonl_dirs=[("crossfit", jsonl_dir)]),
                        sni.read_split(sni_dir))
  built.save(root / "catalog")
  return root / "catalog"


# The probe's vocabulary: a few ids, so no tokenizer folder is read (nothing is tokenized).
_PROBE_VOCABULARY = """
from __gin__ import dynamic_registration
import seqio
VOCABULARY = @seqio.PassThroughVocabulary()
seqio.PassThroughVocabulary.size = 3
seqio.PassThroughVocabulary.eos_id = 2
"""


def test_recipe_gin_files_build_sharded_train_states_for_every_size(tmp_path):
  files = ["t5x/optiml_1.3b.gin", "t5x/optiml_30b.gin", "t5x/optiml_175b.gin", "t5x/optiml_smollm2_135m.gin"]
  env = dict(os.environ, PYTHONPATH=PYTHONPATH, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")  # 'data' and 'model' of 8 CPU devices
  (tmp_path / "probe_vocabulary.gin").write_text(_PROBE_VOCABULARY, encoding="utf-8")
  done = subprocess.run(
      [sys.executable, "-c", _PROBE,
       str(REPO / "gin"),
       str(tmp_path / "probe_vocabulary.gin"), *files], cwd=tmp_path, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  found = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"^PROBE (\S+) (.*)$", done.stdout, re.M)}
  assert set(found) == set(files)
  expected = {
      "t5x/optiml_1.3b.gin": ("opt", 24, 1, 256, 4000),
      "t5x/optiml_30b.gin": ("opt", 48, 4, 256, 4000),
      "t5x/optiml_175b.gin": ("opt", 96, 8, 128, 8000),
      "t5x/optiml_smollm2_135m.gin": ("llama", 30, 1, 256, 4000),
  }
  for name, (family, layers, model_axis, batch_size, steps) in expected.items():
    got = found[name]
    assert got["family"] == family, name
    assert got["params"] == got["expected"] and got["layers"] == layers, name
    assert got["num_partitions"] == model_axis, name  # (on CPU t5x builds a trivial mesh whatever this is)
    assert got["mlp_in"] == ["None", "data", "model"], name  # layers, embed (FSDP), mlp (tensor)
    assert (got["optimizer"], got["batch_size"], got["steps"]) == ("OptaxWrapper", batch_size, steps), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory, bench):
  """`python -m t5x.train --gin_file=t5x/optiml_tiny.gin`: 5 steps of the tiny OPT from scratch."""
  work = tmp_path_factory.mktemp("t5x_train")
  model_dir = work / "model"
  log = _run_t5x("train", ["t5x/optiml_tiny.gin"], {
      "MODEL_DIR": _quote(model_dir),
      "CATALOG_DIR": _quote(bench)
  }, work, work / "train.log")
  return model_dir, log


@pytest.mark.slow
def test_train_runs_five_steps_and_checkpoints(trained):
  model_dir, log = trained
  losses = _train_losses(log)
  assert 5 in losses, "no loss logged at step 5"
  assert math.isfinite(losses[5]) and 0 < losses[5] < math.log(TINY.vocab_size) + 1
  assert (model_dir / "checkpoint_5" / "state").is_dir()


@pytest.mark.slow
def test_train_resumes_from_its_latest_checkpoint(trained, bench, tmp_path):
  model_dir, _ = trained
  log = _run_t5x("train", ["t5x/optiml_tiny.gin"], {
      "MODEL_DIR": _quote(model_dir),
      "CATALOG_DIR": _quote(bench),
      "TRAIN_STEPS": "7"
  }, tmp_path, tmp_path / "resume.log")
  assert re.search(r"Restoring checkpoint from \S*checkpoint_5", log)
  assert "Not restoring param=state/param_states" not in log  # the optimizer state is restored too
  losses = _train_losses(log)
  assert 7 in losses and math.isfinite(losses[7])
  assert (model_dir / "checkpoint_7" / "state").is_dir()


@pytest.mark.slow
def test_train_on_a_mixture_registered_by_a_module_the_gin_file_imports(bench, tmp_path):
  (tmp_path / "my_tasks.py").write_text(
      "from optiml_jax.data import registry\n"
      f"registry.register_catalog({str(bench)!r})\n"
      "registry.add_mixture('sni_quiz', ['sni', 'crossfit:quiz_mc'], shares={'sni': 1, 'crossfit': 3})\n",
      encoding="utf-8")
  (tmp_path / "my_run.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "import my_tasks\n"
      "include 't5x/optiml_tiny.gin'\n"
      "TRAIN_MIXTURE = 'sni_quiz'\n"
      "TRAIN_STEPS = 2\n", encoding="utf-8")
  model_dir = tmp_path / "model"
  log = _run_t5x("train", [str(tmp_path / "my_run.gin")], {
      "MODEL_DIR": _quote(model_dir),
      "CATALOG_DIR": _quote(bench)
  }, tmp_path, tmp_path / "mine.log")
  assert "Initializing dataset for task 'sni_quiz'" in log
  assert 2 in _train_losses(log) and (model_dir / "checkpoint_2").is_dir()


@pytest.mark.slow
def test_t5x_checkpoint_imports_into_what_our_evaluator_loads(trained, tmp_path):
  model_dir, _ = trained
  params, step = t5x_checkpoints.read_t5x_params(model_dir / "checkpoint_5")
  assert step == 5
  out = t5x_checkpoints.import_t5x(model_dir / "checkpoint_5", tmp_path / "ours", TINY)
  [checkpoint], problems = evaluator.find_checkpoints(out)  # what `python -m optiml_jax.eval` loads
  config, restored = evaluator.load_checkpoint(checkpoint)
  assert not problems and config.num_hidden_layers == TINY.num_hidden_layers
  assert layout.flatten(restored).keys() == layout.flatten(params).keys()
  for key, value in layout.flatten(restored).items():
    np.testing.assert_array_equal(value, layout.flatten(params)[key])


@jax.jit
def _log_probs(params, tokens):
  return jax.nn.log_softmax(registry.make_model(TINY).apply({"params": params}, tokens, enable_dropout=False), axis=-1)


@pytest.mark.slow
def test_eval_scores_rank_classification_as_our_model_does(trained, bench, tmp_path):
  model_dir, _ = trained
  out = tmp_path / "eval"
  _run_t5x(
      "eval", ["t5x/models/opt_tiny.gin", "t5x/eval.gin"], {
          "CHECKPOINT_PATH": _quote(model_dir / "checkpoint_5"),
          "EVAL_OUTPUT_DIR": _quote(out),
          "CATALOG_DIR": _quote(bench),
          "EVAL_TASKS": repr([MC_TASK, GEN_TASK]),
          "TASK_FEATURE_LENGTHS": SMALL_LENGTHS,
          "utils.DatasetConfig.batch_size": "8"
      }, tmp_path, tmp_path / "eval.log")  # MAX_DECODE_STEPS stays 256: more than a row holds
  results = out / "inference_eval"
  generated = json.loads((results / f"{GEN_TASK}.gen-metrics.jsonl").read_text().splitlines()[-1])
  assert {"rougeL", "exact_match"} <= set(generated) and generated["step"] == 5
  metrics = [json.loads(line) for line in (results / f"{MC_TASK}.score_eval-metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 5
  rows = [json.loads(line) for line in (results / f"{MC_TASK}.score_eval-000005.jsonl").read_text().splitlines()]
  assert len(rows) == 20 * 3  # 20 evaluation instances x 3 candidates
  params, _ = t5x_checkpoints.read_t5x_params(model_dir / "checkpoint_5")
  best = {}
  for row in rows:  # our model's log-likelihood of the candidate after [</s>] + prompt
    inputs, targets = row["input"]["inputs"], row["input"]["targets"]
    tokens = np.zeros((1, 128), np.int32)
    sequence = [EOS] + inputs + targets
    tokens[0, :len(sequence) - 1] = sequence[:-1]
    log_probs = np.asarray(_log_probs(params, jnp.asarray(tokens)))[0]
    ours = sum(log_probs[len(inputs) + i, t] for i, t in enumerate(targets))
    np.testing.assert_allclose(row["score"], ours, rtol=1e-4, atol=1e-3)
    key = row["input"]["idx"][0]
    if key not in best or ours > best[key][0]:
      best[key] = (ours, row["input"]["is_correct"])
  assert metrics[-1]["accuracy"] == pytest.approx(100.0 * np.mean([c for _, c in best.values()]))


@pytest.mark.slow
def test_a_tiny_llama_trains_five_steps_and_its_checkpoint_imports(bench, tmp_path):
  """`python -m t5x.train --gin_file=t5x/optiml_llama_tiny.gin`, then the checkpoint as our evaluator loads it."""
  model_dir = tmp_path / "model"
  log = _run_t5x("train", ["t5x/optiml_llama_tiny.gin"], {
      "MODEL_DIR": _quote(model_dir),
      "CATALOG_DIR": _quote(bench)
  }, tmp_path, tmp_path / "train.log")
  losses = _train_losses(log)
  config = registry.preset("llama-tiny")
  assert 5 in losses and math.isfinite(losses[5]) and 0 < losses[5] < math.log(config.vocab_size) + 1
  out = t5x_checkpoints.import_t5x(model_dir / "checkpoint_5", tmp_path / "ours", config)
  [checkpoint], problems = evaluator.find_checkpoints(out)
  restored_config, restored = evaluator.load_checkpoint(checkpoint)
  assert not problems and restored_config.family == "llama"
  params, _ = t5x_checkpoints.read_t5x_params(model_dir / "checkpoint_5")
  assert "gate_proj" in params["layers"]["mlp"]
  for key, value in layout.flatten(restored).items():
    np.testing.assert_array_equal(value, layout.flatten(params)[key])


# Our own random tiny models; a large initializer scale makes their logits peaked, so greedy choices are far from
# ties. (t5x model gin file, config)
EXPORTED = {
    "opt": ("t5x/models/opt_tiny.gin", registry.preset("tiny", dropout=0.0, init_std=0.5)),
    "llama": ("t5x/models/llama_tiny.gin", registry.preset("llama-tiny", initializer_range=0.5)),
}
EXPORTED_CONFIG = EXPORTED["opt"][1]


def _export(work: pathlib.Path, config) -> tuple:
  """(params, t5x checkpoint folder) of a random model of `config` saved by us and exported to t5x's layout."""
  model = registry.make_model(config)
  init = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 8), jnp.int32), enable_dropout=False))
  params = jax.tree.map(np.asarray, init(jax.random.PRNGKey(3))["params"])
  ours = orbax_io.save_orbax(params, work / "ours", config)
  return params, t5x_checkpoints.export_t5x(ours, work / "t5x", step=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(params, t5x checkpoint folder) of a random tiny OPT."""
  return _export(tmp_path_factory.mktemp("t5x_export"), EXPORTED_CONFIG)


@pytest.fixture(scope="module")
def exported_llama(tmp_path_factory):
  """(params, t5x checkpoint folder) of a random tiny Llama."""
  return _export(tmp_path_factory.mktemp("t5x_export_llama"), EXPORTED["llama"][1])


@pytest.mark.slow
def test_finetune_recipe_starts_from_an_exported_checkpoint_with_fresh_optimizer_state(bench, exported, tmp_path):
  params, checkpoint = exported
  model_dir = tmp_path / "model"
  tiny = {
      "OPT_PRESET": "'tiny'",
      "ACTIVATION_DTYPE": "'float32'",
      "DROPOUT_RATE": "0.0",
      "REMAT_POLICY": "'none'",
      "FSDP": "False",
      "NUM_PARTITIONS": "1",
      "TASK_FEATURE_LENGTHS": SMALL_LENGTHS,
      "BATCH_SIZE": "4",
      "TRAIN_STEPS": "2",
      "WARMUP_STEPS": "1"
  }  # the 1.3B recipe file, on the tiny model
  log = _run_t5x("train", ["t5x/optiml_1.3b.gin"], {
      "MODEL_DIR": _quote(model_dir),
      "CATALOG_DIR": _quote(bench),
      "INITIAL_CHECKPOINT_PATH": _quote(checkpoint),
      **tiny
  }, tmp_path, tmp_path / "finetune.log")
  assert re.search(r"Restoring checkpoint from \S*t5x_export\S*checkpoint_0", log)
  assert "Not restoring param=state/param_states" in log  # Adam's moments start fresh
  assert 2 in _train_losses(log) and math.isfinite(_train_losses(log)[2])
  started, _ = t5x_checkpoints.read_t5x_params(model_dir / "checkpoint_0")  # t5x saves the restored state
  for key, value in layout.flatten(started).items():
    np.testing.assert_array_equal(value, layout.flatten(params)[key])


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(EXPORTED))
def test_infer_decodes_an_exported_checkpoint_greedily(bench, family, request, tmp_path):
  params, checkpoint = request.getfixturevalue("exported" if family == "opt" else "exported_llama")
  model_gin, config = EXPORTED[family]
  out = tmp_path / "infer"
  _run_t5x(
      "infer", [model_gin, "t5x/infer.gin"], {
          "CHECKPOINT_PATH": _quote(checkpoint),
          "INFER_OUTPUT_DIR": _quote(out),
          "CATALOG_DIR": _quote(bench),
          "INFER_TASKS": repr([GEN_TASK]),
          "TASK_FEATURE_LENGTHS": SMALL_LENGTHS,
          "MAX_DECODE_STEPS": "4",
          "utils.RestoreCheckpointConfig.dtype": "'float32'",
          "utils.DatasetConfig.batch_size": "16"
      }, tmp_path, tmp_path / "infer.log")
  [predictions] = list(out.glob(f"{GEN_TASK}*-predict.jsonl-00000-of-00001"))
  rows = [json.loads(line) for line in predictions.read_text().splitlines()]
  assert len(rows) == 60 and sum(bool(row["prediction"]) for row in rows) > 30
  vocabulary = vocab_lib.OPTVocabulary()

  @jax.jit
  def logits_at(tokens, position):
    return registry.make_model(config).apply({"params": params}, tokens, enable_dropout=False)[0, position]

  for row in rows[:8]:  # our greedy decoding of the same prompt, without a cache
    source, target = row["inputs"]["inputs_pretokenized"], row["inputs"]["targets_pretokenized"]
    prompt = vocabulary.encode(formatting.token_texts(source, target)[0])
    tokens = [EOS] + prompt
    for _ in range(4):
      padded = jnp.asarray([tokens + [0] * (128 - len(tokens))], jnp.int32)
      tokens.append(int(jnp.argmax(logits_at(padded, len(tokens) - 1))))
      if tokens[-1] == EOS:
        break
    assert row["prediction"] == vocabulary.decode(tokens[len(prompt) + 1:]), row
