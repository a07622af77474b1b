"""`python -m optiml_jax.reproduce`: the task pick, the claim table, and the whole flow (bench, base evaluation,
tuning, tuned evaluation against the base) on a tiny random Llama with its own tokenizer and the toy bench; the
same flow on the real SmolLM2-135M-Instruct over ../shared (slow)."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import bench
from optiml_jax import convert
from optiml_jax import reproduce
from optiml_jax.data import catalog as catalog_lib
from optiml_jax.evaluation import report as report_lib
from optiml_jax.models import llama
from optiml_jax.models import llama_config
from optiml_jax.reproduction import bundle as bundle_lib
from optiml_jax.reproduction import claim as claim_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_catalog(shared_dir, tmp_path_factory):
  """The bench of `make reproduce` built from ../shared/data (a few seconds)."""
  out = tmp_path_factory.mktemp("reproduce_catalog")
  data = shared_dir / "data"
  assert bench.main([
      "build", "--config", reproduce.BENCH_CONFIG, "--sni_dir",
      str(data / "natural-instructions"), "--p3_dir",
      str(data / "p3"), "--bigbench_dir",
      str(data / "bigbench"), "--no_progress", "--out",
      str(out)
  ]) == 0
  return catalog_lib.load(out)


def test_the_gpu_setting_decodes_the_picked_tasks_answers_whole(sample_catalog):
  # Greedy decoding stops at max_new_tokens: a reference longer than that caps the task's ROUGE-L for both models
  # alike (P3's wiki_bio_comprehension, a level-3 pick, has references of ~145 tokens; 16 of its 20 were cut at 64).
  from optiml_jax.data import registry  # pylint: disable=g-import-not-at-top
  setting = reproduce.SETTINGS["gpu"]
  picked = claim_lib.pick_tasks(sample_catalog, setting.tasks_per_level)
  entries = {e.name: e for e in sample_catalog.tasks}
  trained = {e.category for e in sample_catalog.tasks if e.role == catalog_lib.TRAIN and e.rate > 0}
  assert picked["held_out_task"] and all(entries[n].category in trained for n in picked["held_out_task"])
  vocabulary = registry.default_vocabulary()
  lengths = []
  for name in (n for names in picked.values() for n in names if entries[n].kind == "generation"):
    examples = registry.iter_examples(entries[name], registry.reopen_task(entries[name]), "validation", 0, vocabulary)
    lengths += [len(ex["targets"]) for _, ex in zip(range(setting.max_instances), examples)]
  cut = sum(n > setting.max_new_tokens for n in lengths)
  assert lengths and cut <= len(lengths) // 50, f"{cut} of {len(lengths)} references longer than the decoding"


def _read_params(folder):
  _, params = convert.load_hf(folder)
  return params


@pytest.fixture
def tiny_base(tmp_path, chat_tokenizer):
  """(base model folder: a random tiny Llama with a SmolLM2-style tokenizer and chat template, its params, the toy
  SNI folder)."""
  tokenizer = chat_tokenizer
  config = llama_config.LlamaConfig.preset("llama-tiny", vocab_size=330, eos_token_id=2, bos_token_id=1)
  params = jax.jit(lambda key: llama.Llama(config).init(key, jnp.ones((1, 4), jnp.int32))["params"])(
      jax.random.PRNGKey(0))
  base = tmp_path / "base_model"
  convert.save_hf(config, jax.device_get(params), base)
  for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    (base / name).write_bytes((tokenizer / name).read_bytes())
  assert bench.main(["toy", "--out", str(tmp_path / "toy")]) == 0
  return base, jax.device_get(params), tmp_path / "toy"


def _tiny_flags(out, base, toy):
  return [
      "--out",
      str(out), "--setting", "cpu", "--data_dir",
      str(out / "none"), "--sni_dir",
      str(toy), "--config", "toybench.yaml", "--base_model",
      str(base), "--tasks_per_level", "2", "--max_instances", "2",
      "--train_flag=--gin.model_config.preset='llama-tiny'", "--train_flag=--gin.model_config.vocab_size=330",
      "--train_flag=--gin.TRAIN_STEPS=2", "--train_flag=--gin.OptimizerArgs.warmup_steps=1",
      "--train_flag=--gin.CheckpointArgs.save_every=2",
      "--train_flag=--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 32}",
      "--train_flag=--gin.LoggingArgs.progress=False"
  ]


def _check_claim(out):
  """Every level with tasks has both models (and the base in its chat template), 0- and 5-shot, and a first-answer
  row beside each ROUGE-L row."""
  tasks = json.loads((out / "tasks.json").read_text())
  claim = json.loads((out / "report" / "claim.json").read_text())
  for level, names in tasks.items():
    if not names:
      continue
    assert len(names) <= 2
    for cells in claim["table"][level].values():  # both models, 0- and 5-shot, every level evaluated
      assert set(cells) == {"0", "5"} and all(c["base"] is not None and c["tuned"] is not None for c in cells.values())
      assert all(c["chat"] is not None and c["delta_chat"] == c["tuned"] - c["chat"] for c in cells.values())
    # Generation is also scored on each prediction's first answer, from the evaluations' inference logs.
    assert ("generation" in claim["table"][level]) == (claim_lib.FIRST_ANSWER in claim["table"][level])
  assert any("generation" in kinds for kinds in claim["table"].values())
  chat = json.loads((out / reproduce.CHAT_DIR / "metrics.json").read_text())
  assert chat["settings"]["chat_template"] and chat["model"]["label"] == "base, chat"
  assert "| base, chat 0-shot |" in (out / "report" / "claim.md").read_text()
  return claim


# ~110 s on 2 cores with the chat baseline: slow, so the default suite stays under 20 minutes (CI runs it with
# --runslow); the pieces of the flow (claim table, first answers, chat baseline) stay in the default suite.
@pytest.mark.slow
def test_the_whole_flow_on_a_tiny_llama_writes_a_base_vs_tuned_report(tiny_base):
  base, params, toy = tiny_base
  out = base.parent / "out"
  assert reproduce.main(_tiny_flags(out, base, toy)) == 0
  _check_claim(out)
  assert "ROUGE-L, first answer" in (out / "report" / "claim.md").read_text()
  report = json.loads((out / "report" / "metrics.json").read_text())
  assert report["model"]["label"] == "tuned" and report["baseline"]["model"]["label"] == "base"
  assert (out / "report" / "loss.png").is_file() and (out / "report" / "claim.md").is_file()
  assert (out / "report" / "held_out_category.png").is_file()
  _assert_trained(params, out / "model")
  # The base evaluations (and the tuned one, and training) share one compilation cache: compiled once per shape.
  for folder in ("base", reproduce.CHAT_DIR):
    command = json.loads((out / folder / reproduce.EVAL_STAMP).read_text())["command"]
    assert f"--gin.evaluate.compilation_cache_dir='{out.resolve() / 'jax_cache'}'" in command, command


def _assert_trained(base, model_dir, weight_decay=0.1):
  """The tuned checkpoint in `model_dir` moved every parameter by more than AdamW's weight decay (recipe.gin's 0.1)
  alone would: with no gradient reaching a parameter (loss weights all zero, say), the steps at learning rates
  lr_t still scale it by prod(1 - lr_t * weight_decay), so "differs from the base" alone says nothing of the
  training signal."""
  from optiml_jax.checkpoints import orbax_io  # pylint: disable=g-import-not-at-top
  _, tuned = orbax_io.restore_orbax(str(model_dir))
  rates = [json.loads(line)["learning_rate"] for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  decay = np.prod([1.0 - lr * weight_decay for lr in rates])
  assert any(rates)
  # A gradient step of Adam moves a parameter by ~lr (~1e-4), against float32 rounding of ~1e-7 of its size.
  moved = jax.tree_util.tree_map(
      lambda b, t: float(np.max(np.abs(np.asarray(t, np.float64) - np.asarray(b, np.float64) * decay))), base, tuned)
  scale = jax.tree_util.tree_map(lambda b: float(np.max(np.abs(b))), base)
  for path, delta in jax.tree_util.tree_leaves_with_path(moved):
    assert delta > 1e-5 * max(jax.tree_util.tree_leaves(scale)), f"{jax.tree_util.keystr(path)} moved by decay only"


# 160 s on 2 cores with the chat baseline: slow, so the default suite stays under 20 minutes (CI runs it with
# --runslow).
@pytest.mark.slow
def test_the_flow_over_two_machines_runs_the_model_without_tensorflow(tiny_base, tmp_path, without_tensorflow_env):
  base, _, toy = tiny_base
  out = tmp_path / "out"
  flags = _tiny_flags(out, base, toy)
  assert reproduce.main(["--stage", "prepare", *flags]) == 0
  info = json.loads((out / "bundle" / bundle_lib.BUNDLE_FILE).read_text())
  assert info["model"] is None and info["sizes"]["dtype"] == "float32"  # --base_model: no wheel in the bundle

  device_out = tmp_path / "device_machine"
  command = [
      sys.executable, "-m", "optiml_jax.reproduce", "--stage", "device", "--bundle",
      str(out / "bundle"), "--out",
      str(device_out), "--base_model",
      str(base), "--results",
      str(tmp_path / "results.tar.gz")
  ]
  done = subprocess.run(command, cwd=tmp_path, env=without_tensorflow_env, capture_output=True, text=True, timeout=900,
                        check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert "device stages done" in done.stdout
  answers = sorted((device_out / "device" / "tuned_answers").glob("*.npz"))  # one file a request
  mtimes = [path.stat().st_mtime_ns for path in answers]
  assert answers
  # The same command again (as after a call cut short) finishes from what is there: no answer is made twice, and
  # the report says the device's time is the last attempt's.
  again = subprocess.run(command, cwd=tmp_path, env=without_tensorflow_env, capture_output=True, text=True, timeout=900,
                         check=False)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "resumed from" in again.stdout + again.stderr
  assert [path.stat().st_mtime_ns for path in answers] == mtimes

  assert reproduce.main(["--stage", "finish", "--out", str(out), "--results", str(tmp_path / "results.tar.gz")]) == 0
  claim = _check_claim(out)
  assert claim["setting"] == "cpu" and set(
      claim["device"]["seconds"]) == {"model", "base_answers", reproduce.CHAT_ANSWERS, "training", "tuned_answers"}
  title = (out / "report" / "claim.md").read_text().splitlines()[0]
  assert "over two machines; the device stage resumed an interrupted attempt" in title and claim["device"]["resumed"]
  report = json.loads((out / "report" / "metrics.json").read_text())
  assert report["model"]["answers"].endswith("tuned_answers") and report["baseline"]["model"]["label"] == "base"
  assert (out / "report" / "loss.png").is_file()


class _FakeStages:
  """Stands in for the stages' child processes (`reproduce._run`), recording each stage run: an evaluation writes its
  metrics.json, training saves a step folder (as a run cut short, or finished, leaves; with `steps`), and the tuned
  evaluation or answers stop the run there (exit status 1), before anything reads a report."""

  def __init__(self, monkeypatch, steps=True):
    self.stages = []
    self.steps = steps
    monkeypatch.setattr(reproduce, "_run", self)

  def __call__(self, stage, command):
    self.stages.append(stage)
    flags = dict(a.split("=", 1) for a in command if a.startswith("--gin.") and "=" in a)
    if stage.startswith("base evaluation"):
      pathlib.Path(flags["--gin.EVAL_OUTPUT_DIR"]).mkdir(parents=True, exist_ok=True)
      (pathlib.Path(flags["--gin.EVAL_OUTPUT_DIR"]) / report_lib.METRICS_FILE).write_text("{}")
    elif stage == "training" and self.steps:
      (pathlib.Path(flags["--gin.MODEL_DIR"]) / "2").mkdir(parents=True, exist_ok=True)
    elif stage in ("tuned evaluation", "tuned answers"):
      raise reproduce.ReproduceError("stopped after training")

  def run(self, argv):
    """The stages `reproduce.main(argv)` ran, and its exit status."""
    self.stages = []
    return reproduce.main(argv), self.stages


def test_a_rerun_resumes_its_own_training_and_refuses_another_runs_steps(tiny_base, tmp_path, monkeypatch, capsys):
  # OUT/model with steps is resumed by the trainer, which then ignores INITIAL_CHECKPOINT_PATH: a rerun with another
  # base model (or command, or data) would report the new base against a model tuned from the old one.
  base, _, toy = tiny_base
  out = tmp_path / "out"
  other = tmp_path / "other_base"
  shutil.copytree(base, other)
  fake = _FakeStages(monkeypatch)
  assert fake.run(_tiny_flags(
      out, base, toy)) == (1, ["base evaluation", "base evaluation, chat template", "training", "tuned evaluation"])
  # The same run again (as after one killed during training) resumes it.
  assert fake.run(_tiny_flags(out, base, toy))[1] == ["training", "tuned evaluation"]
  assert "the same training" in capsys.readouterr().out
  model_dir = out.resolve() / "model"
  for flags, what in ((_tiny_flags(out, other, toy), f"--gin.INITIAL_CHECKPOINT_PATH={other} now"),
                      (_tiny_flags(out, base, toy) + ["--train_flag=--gin.TRAIN_STEPS=3"], "--gin.TRAIN_STEPS=3 now")):
    code, stages = fake.run(flags)
    error = capsys.readouterr().err
    assert code == 1 and not stages, stages  # stopped before the base evaluation: OUT/base is left as it was
    assert f"{model_dir} holds the steps of another training run" in error and what in error, error
    assert "Use a new --out, or remove" in error
  # The base model rewritten in place: the same command, other weights.
  config = json.loads((base / "config.json").read_text())
  (base / "config.json").write_text(json.dumps({**config, "rope_theta": 5000.0}))
  code, stages = fake.run(_tiny_flags(out, base, toy))
  assert code == 1 and not stages and "the base model's files" in capsys.readouterr().err
  # Steps without a record (an older version's run): refused too, since nothing says what they were trained from.
  (out / reproduce.TRAINING_STAMP).unlink()
  code, stages = fake.run(_tiny_flags(out, other, toy))
  assert code == 1 and not stages and "no record of what it was trained from" in capsys.readouterr().err
  # A new --out trains the other base model.
  assert fake.run(_tiny_flags(tmp_path / "out2", other, toy))[1][-2:] == ["training", "tuned evaluation"]


def test_the_base_evaluation_is_reused_only_for_the_same_catalog_and_model_files(tiny_base, tmp_path, monkeypatch):
  # The evaluation's command names OUT/catalog and the base model by path: a bench rebuilt from other data, or a
  # model rewritten in place, keeps the command; its scores would be the old data's or the old model's.
  base, _, toy = tiny_base
  out = tmp_path / "out"
  fake = _FakeStages(monkeypatch, steps=False)  # no training steps, which would stop a run with another catalog
  evaluations = ["base evaluation", "base evaluation, chat template"]
  assert fake.run(_tiny_flags(out, base, toy))[1][:2] == evaluations
  assert fake.run(_tiny_flags(out, base, toy))[1][:2] == ["training", "tuned evaluation"]  # reused
  # The same tasks from another copy of the sources: the same evaluation command, another catalog.json.
  shutil.copytree(toy, tmp_path / "toy_copy")
  assert fake.run(_tiny_flags(out, base, tmp_path / "toy_copy"))[1][:2] == evaluations
  # The base model's weights rewritten in place (same path, same size).
  weights = base / "model.safetensors"
  data = bytearray(weights.read_bytes())
  data[-1] ^= 1
  weights.write_bytes(bytes(data))
  assert fake.run(_tiny_flags(out, base, tmp_path / "toy_copy"))[1][:2] == evaluations
  # An older version's stamp (the command alone): evaluated again.
  for folder in ("base", reproduce.CHAT_DIR):
    stamp = out / folder / reproduce.EVAL_STAMP
    stamp.write_text(json.dumps(json.loads(stamp.read_text())["command"]))
  assert fake.run(_tiny_flags(out, base, tmp_path / "toy_copy"))[1][:2] == evaluations


def test_the_device_stage_resumes_its_own_training_and_refuses_another_runs_steps(tiny_base, tmp_path, monkeypatch,
                                                                                  capsys):
  base, _, _ = tiny_base
  other = tmp_path / "other_base"
  shutil.copytree(base, other)

  def bundle(folder, cache_text):
    (folder / "cache").mkdir(parents=True)
    (folder / "cache" / "shard.bin").write_text(cache_text)
    (folder / "requests").mkdir()
    bundle_lib.tar(folder / bundle_lib.BUNDLE_DATA, {"cache": folder / "cache", "requests": folder / "requests"})
    info = {
        "format_version": bundle_lib.BUNDLE_VERSION,
        "setting": "cpu",
        "sizes": reproduce.dataclasses.asdict(reproduce.SETTINGS["cpu"]),
        "tasks": {},
        "train_flags": [],
        "model": None,
    }
    (folder / bundle_lib.BUNDLE_FILE).write_text(json.dumps(info))
    return ["--stage", "device", "--bundle", str(folder), "--out", str(tmp_path / "device_out")]

  first, changed = bundle(tmp_path / "bundle", "rows"), bundle(tmp_path / "bundle2", "other rows")
  fake = _FakeStages(monkeypatch)
  assert fake.run(first + ["--base_model", str(base)]) == (1, ["base answers", "training", "tuned answers"])
  assert fake.run(first + ["--base_model", str(base)])[1] == ["base answers", "training", "tuned answers"]
  for argv, what in ((first + ["--base_model", str(other)], f"--gin.INITIAL_CHECKPOINT_PATH={other.resolve()} now"),
                     (changed + ["--base_model", str(base)], "the training cache")):
    code, stages = fake.run(argv)
    error = capsys.readouterr().err
    assert code == 1 and not stages, stages  # stopped before the base's answers
    assert f"{tmp_path / 'device_out' / 'device' / 'model'} holds the steps of another training run" in error, error
    assert what in error, error


def test_a_train_flag_train_would_refuse_exits_2_before_any_stage_runs(tiny_base, tmp_path, monkeypatch, capsys):
  # A typo in --train_flag was found by train itself, after the bench and the base evaluation (minutes).
  base, _, toy = tiny_base
  fake = _FakeStages(monkeypatch)
  monkeypatch.setattr(reproduce.bench, "main", lambda argv: pytest.fail("the bench was built"))
  out = tmp_path / "out"
  refused = [
      ("--gin.TRAIN_STEP=3", "did you mean TRAIN_STEPS?"),  # a mistyped macro
      ("--gin.OptimizerArgs.learning_rat=0.1", "learning_rat"),  # an unknown binding
      ("--gin.OptimizerArgs.warmup_steps=5", "OptimizerArgs.warmup_steps"),  # past the 2 steps: TrainConfig's check
  ]
  for flag, message in refused:
    code, stages = fake.run(_tiny_flags(out, base, toy) + [f"--train_flag={flag}"])
    err = capsys.readouterr().err
    assert code == 2 and not stages, stages
    assert err.startswith("error: --train_flag: the training command would stop at once: ") and message in err, err
    assert not out.exists()
  # The same flags for the device stage are checked by prepare, before the bundle carries them.
  code, stages = fake.run(_tiny_flags(out, base, toy) + ["--stage", "prepare", "--train_flag=--gin.TRAIN_STEP=3"])
  assert code == 2 and "did you mean TRAIN_STEPS?" in capsys.readouterr().err and not out.exists()


def test_the_flags_of_the_tiny_runs_pass_the_train_flag_check(tiny_base, tmp_path):
  base, _, toy = tiny_base
  args = reproduce.parse_args(_tiny_flags(tmp_path / "out", base, toy))
  setting = reproduce.SETTINGS["cpu"]
  for data in ({"catalog_dir": tmp_path / "catalog"}, {"cache_dir": tmp_path / "cache"}):
    reproduce.check_train_flags(
        reproduce._train_command(  # pylint: disable=protected-access
            setting.gin_file, tmp_path / "model", base, tmp_path / "jax_cache", args.train_flag, **data))


@pytest.mark.parametrize("stage", ["all", "prepare", "device"])
def test_an_out_that_is_a_file_is_an_error_naming_it(tmp_path, monkeypatch, capsys, stage):
  _FakeStages(monkeypatch)
  afile = tmp_path / "afile"
  afile.write_text("mine")
  for out, reason in ((afile, "is a file; name a folder"), (afile / "sub", f"cannot be a folder: {afile} is a file")):
    code = reproduce.main(["--out", str(out), "--setting", "cpu", "--stage", stage])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines()[-1].startswith(f"error: --out {out}: {reason}"), err
  assert afile.read_text() == "mine"


def test_the_size_overrides_take_positive_numbers_only(capsys):
  args = reproduce.parse_args(["--setting", "cpu", "--tasks_per_level", "1", "--max_instances", "7"])
  _, setting = reproduce._setting(args)  # pylint: disable=protected-access
  assert (setting.tasks_per_level, setting.max_instances) == (1, 7)
  # 0 fell back to the setting's default, and -1 was passed on (pick_tasks' slice [:-1]: all tasks but one).
  for flag, counted in (("--tasks_per_level", "tasks"), ("--max_instances", "instances")):
    for value in ("0", "-1", "two"):
      with pytest.raises(SystemExit) as stopped:
        reproduce.parse_args([flag, value])
      message = f"{flag}: expected a positive number of {counted}, got '{value}'"
      assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_chat_baseline_runs_only_where_the_base_model_has_a_chat_template(tmp_path, capsys):
  args = reproduce.parse_args([])
  assert args.chat_baseline and not reproduce.parse_args(["--no-chat_baseline"]).chat_baseline
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
  assert not reproduce._chat_baseline(args, tmp_path)  # pylint: disable=protected-access
  assert "no chat template" in capsys.readouterr().out
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
  assert reproduce._chat_baseline(args, tmp_path)  # pylint: disable=protected-access
  (tmp_path / "tokenizer_config.json").unlink()
  (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
  assert reproduce._chat_baseline(args, tmp_path)  # pylint: disable=protected-access
  assert not reproduce._chat_baseline(reproduce.parse_args(["--no-chat_baseline"]), tmp_path)  # pylint: disable=protected-access


def test_the_device_stage_names_every_missing_module_before_it_starts(tmp_path, monkeypatch, capsys):
  # As on an accelerator image that lacks the small wheels: the stage stops at once, naming all of them.
  monkeypatch.setitem(sys.modules, "gguf", None)
  monkeypatch.setitem(sys.modules, "accelerate", None)
  bundle = tmp_path / "bundle"
  bundle.mkdir()
  info = {"format_version": bundle_lib.BUNDLE_VERSION, "model": {"wheel": "w.whl", "parts": [], "sha256": ""}}
  (bundle / bundle_lib.BUNDLE_FILE).write_text(json.dumps(info))
  out = tmp_path / "out"
  assert reproduce.main(["--stage", "device", "--bundle", str(bundle), "--out", str(out)]) == 1
  error = capsys.readouterr().err
  assert "cannot run the device stage: gguf (" in error and "; accelerate (" in error, error
  assert "pip download --no-deps -d WHEELS gin-config gguf accelerate psutil" in error
  assert not (out / "device").exists()  # nothing unpacked
  # With the model's folder given, the stage needs none of the conversion's modules.
  reproduce.check_modules(reproduce.DEVICE_MODULES)


@pytest.mark.slow
def test_the_whole_flow_on_the_real_smollm2(shared_dir, smollm2_hf_dir, tmp_path):
  out = tmp_path / "out"
  code = reproduce.main([
      "--out",
      str(out), "--setting", "cpu", "--data_dir",
      str(shared_dir / "data"), "--base_model",
      str(smollm2_hf_dir), "--tasks_per_level", "1", "--max_instances", "2", "--train_flag=--gin.TRAIN_STEPS=2",
      "--train_flag=--gin.OptimizerArgs.warmup_steps=1", "--train_flag=--gin.CheckpointArgs.save_every=2",
      "--train_flag=--gin.BATCH_SIZE=2", "--train_flag=--gin.LoggingArgs.progress=False"
  ])
  assert code == 0
  claim = json.loads((out / "report" / "claim.json").read_text())
  assert set(claim["table"]) == {"held_out_category", "held_out_task", "held_out_instances"}
  report = json.loads((out / "report" / "metrics.json").read_text())
  for level in claim["table"]:  # both models, 0- and 5-shot, at every level
    assert set(report["levels"][level]) == {"0", "5"} and set(report["baseline"]["levels"][level]) == {"0", "5"}
  # SmolLM2's folder carries its chat template: the base is also read in it, a column of every cell.
  assert all("chat" in c for kinds in claim["table"].values() for cells in kinds.values() for c in cells.values())
  assert json.loads((out / reproduce.CHAT_DIR / "metrics.json").read_text())["settings"]["chat_template"]
  _, base = convert.load_hf(smollm2_hf_dir)
  _assert_trained(base, out / "model")
