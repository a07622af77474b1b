"""Tests of `python -m optiml_jax.eval`: a trainer's MODEL_DIR and a Hugging Face baseline on the toy bench."""

import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optiml_jax import bench
from optiml_jax import convert
from optiml_jax import eval as eval_entry
from optiml_jax.models import opt
from optiml_jax.trainer import checkpointing

TASKS = ["sni:task030_toy_entail_color", "sni:task001_toy_add_small", "sni:nope"]
COMMON = [
    "--gin_file=eval.gin", "--gin.MAX_INSTANCES=2", "--gin.evaluate.max_new_tokens=3", "--gin.evaluate.progress=False",
    "--gin.evaluate.batch_size=4"
]

CONFIG = opt.OPTConfig.preset("tiny", dropout=0.0)  # what gin/models/opt_tiny.gin configures
_INIT = jax.jit(lambda key: opt.OPT(CONFIG).init(key, jnp.ones((1, 4), jnp.int32))["params"])


@pytest.fixture(autouse=True)
def clean_gin():
  """Each run starts from a clean gin configuration, as a new process would (a binding of one test, such as
  opt_model.dropout, would otherwise be refused again in the next)."""
  gin.clear_config()
  yield
  gin.clear_config()


def _params(seed):
  return CONFIG, jax.device_get(_INIT(jax.random.PRNGKey(seed)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_cli")
  assert bench.main(["toy", "--out", str(root / "toy"), "--catalog", str(root / "catalog")]) == 0
  ckpt = checkpointing.Checkpointer(str(root / "run"), save_interval_steps=1, async_save=False)
  for step in (100, 200):
    _, params = _params(step)
    state = checkpointing.TrainState(step=np.int32(step), params=params, opt_state={"count": np.zeros((), np.int32)})
    ckpt.save(step, state, {"data": {}}, force=True)
  ckpt.close()
  (root / "run" / "300").mkdir()  # a partial step: no params item
  config, params = _params(7)
  convert.save_hf(config, params, root / "hf_base")
  return root


def _run(setup, out, *flags):
  return eval_entry.main(COMMON + [f"--gin.CATALOG_DIR={setup / 'catalog'}", f"--gin.EVAL_OUTPUT_DIR={out}", *flags])


def test_latest_step_of_a_model_dir_with_a_hugging_face_baseline_and_two_shots(setup, tmp_path, capsys):
  out = tmp_path / "out"
  code = _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run'}", f"--gin.TASKS={TASKS!r}", "--gin.SHOTS=[0, 2]",
              f"--gin.BASELINE_PATH={setup / 'hf_base'}")
  assert code == 0
  captured = capsys.readouterr()
  assert "| level | group | tasks | model 0-shot | baseline 0-shot | Δ |" in captured.out
  assert "300: partial checkpoint" in captured.err and "1 task evaluation(s) failed" in captured.err
  report = json.loads((out / "metrics.json").read_text())
  assert report["model"]["step"] == 200 and report["model"]["format"] == "orbax"
  assert list(report["levels"]) == ["held_out_category", "held_out_instances"]  # sni:nope is in no level
  for name in TASKS[:2]:
    task = report["tasks"][name]
    assert set(task["shots"]) == {"0", "2"}
    for result in task["shots"].values():
      assert result["error"] is None and result["metric"] == "rougeL" and result["num_instances"] == 2
      assert set(result["metrics"]) == {"rougeL", "exact_match"}
  assert report["tasks"]["sni:task001_toy_add_small"]["level"] == "held_out_instances"
  assert "absent from the catalog" in report["errors"][0]["error"] and report["errors"][0]["task"] == "sni:nope"
  assert report["baseline"]["model"]["format"] == "hf"
  level = report["levels"]["held_out_instances"]["2"]["score"]
  base = report["baseline"]["levels"]["held_out_instances"]["2"]["score"]
  assert report["deltas"]["levels"]["held_out_instances"]["2"] == pytest.approx(level - base)
  assert (out / "baseline" / "metrics.json").is_file()
  for level in ("held_out_category", "held_out_instances"):
    assert (out / f"{level}.png").stat().st_size > 1000
  assert report["tasks"]["sni:nope"]["level"] == "unknown" and not report["notes"]
  assert "## Errors" in (out / "report.md").read_text()
  lines = (out / "inferences" / "sni:task001_toy_add_small.2shot-000200.jsonl").read_text().splitlines()
  assert len(lines) == 2 and "prediction" in json.loads(lines[0])  # seqio's JSONLogger


def test_every_step_of_a_model_dir_and_an_earlier_report_as_baseline(setup, tmp_path):
  out = tmp_path / "all"
  code = _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run'}", "--gin.CHECKPOINT_STEPS='all'",
              "--gin.TASKS=sni:task030_toy_entail_color")
  assert code == 0
  assert (out / "step_100" / "metrics.json").is_file() and (out / "step_200" / "metrics.json").is_file()
  assert set(json.loads((out / "steps.json").read_text())) == {"100", "200"}
  assert (out / "steps.md").read_text().startswith("| step | held_out_category 0-shot |")
  again = tmp_path / "again"
  code = _run(setup, again, f"--gin.CHECKPOINT_PATH={setup / 'run' / '100'}",
              "--gin.TASKS=sni:task030_toy_entail_color", f"--gin.BASELINE_PATH={out / 'step_200'}")
  assert code == 0
  report = json.loads((again / "metrics.json").read_text())
  assert report["model"]["step"] == 100 and report["baseline"]["model"]["step"] == 200
  # The earlier report is labelled as the baseline (evaluate.baseline_label), not by its own label ("model").
  assert report["model"]["label"] == "model" and report["baseline"]["model"]["label"] == "baseline"
  assert "| model 0-shot | baseline 0-shot | Δ |" in (again / "report.md").read_text()


def test_bad_input_gives_clear_messages_and_exit_codes(setup, tmp_path, capsys):
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={tmp_path / 'missing'}") == 1
  assert "checkpoint path not found" in capsys.readouterr().err
  assert eval_entry.main(["--gin_file=eval.gin", f"--gin.EVAL_OUTPUT_DIR={tmp_path}"]) == 2
  assert "CHECKPOINT_PATH" in capsys.readouterr().err
  code = eval_entry.main(COMMON + [
      f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", f"--gin.EVAL_OUTPUT_DIR={tmp_path}",
      f"--gin.CATALOG_DIR={tmp_path / 'no_catalog'}"
  ])
  assert code == 2 and "no catalog here" in capsys.readouterr().err
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", "--gin.TASKS=['sni:nope']") == 2
  assert "absent from the catalog" in capsys.readouterr().err
  # A binding gin would drop (eval.gin's evaluate.model is @model_config()): named with what to bind, nothing written.
  out = tmp_path / "unread"
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", "--gin.opt_model.dropout=0.3") == 2
  assert ("opt_model.dropout: this run never calls opt_model (evaluate.model = @model_config()), so the binding would "
          "be ignored; bind model_config.dropout instead") in capsys.readouterr().err
  assert not out.exists()


def test_tokenizer_settings_that_cannot_work_exit_2_before_any_model_runs(setup, tmp_path, tiny_tokenizer, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}",
              f"--gin.TOKENIZER_DIR='{tmp_path / 'no_tokenizer'}'") == 2
  assert "evaluate.tokenizer_dir (TOKENIZER_DIR)" in capsys.readouterr().err
  # A baseline that carries another tokenizer than the model (OPT's, by default) cannot share its Tasks.
  other = tmp_path / "hf_other"
  shutil.copytree(setup / "hf_base", other)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(tiny_tokenizer("smollm2") / name, other / name)
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={setup / 'run'}", f"--gin.BASELINE_PATH={other}",
              "--gin.TASKS=sni:task030_toy_entail_color") == 2
  err = capsys.readouterr().err
  assert "carries another tokenizer" in err and "BASELINE_PATH" in err
  assert not (tmp_path / "o").exists()
  # A model made for another tokenizer (its EOS ids say so) is not silently read with OPT's, the fallback.
  from optiml_jax.models import llama_config  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  llama = llama_config.LlamaConfig.preset("llama-tiny", bos_token_id=50000, eos_token_id=50001)  # not OPT's ids
  params = jax.jit(lambda k: registry.make_model(llama).init(k, jnp.ones((1, 4), jnp.int32))["params"])(
      jax.random.PRNGKey(0))
  convert.save_hf(llama, jax.device_get(params), tmp_path / "llama_no_tokenizer")
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={tmp_path / 'llama_no_tokenizer'}",
              "--gin.TASKS=sni:task030_toy_entail_color") == 2
  assert "set TOKENIZER_DIR" in capsys.readouterr().err
  # llama-tiny is made for OPT's tokenizer (its ids): without tokenizer files it evaluates with that one.
  tiny = llama_config.LlamaConfig.preset("llama-tiny")
  convert.save_hf(tiny, jax.device_get(params), tmp_path / "llama_tiny_opt_ids")
  assert _run(setup, tmp_path / "ok", f"--gin.CHECKPOINT_PATH={tmp_path / 'llama_tiny_opt_ids'}",
              "--gin.TASKS=sni:task030_toy_entail_color") == 0


def _damage_latest_params(run) -> None:
  """Cuts the largest array data file of step 200's `params` to half its size (an interrupted copy)."""
  data = max((p for p in (run / "200" / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


def test_a_damaged_step_is_listed_with_a_one_line_reason_and_the_others_are_evaluated(setup, tmp_path, capsys):
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(setup / "run", run)
  _damage_latest_params(run)
  out = tmp_path / "all"
  code = _run(setup, out, f"--gin.CHECKPOINT_PATH={run}", "--gin.CHECKPOINT_STEPS='all'",
              "--gin.TASKS=sni:task030_toy_entail_color")
  assert code == 0
  err = capsys.readouterr().err
  for noise in ("Traceback", "Exception ignored", "Future exception", "TensorStore({"):
    assert noise not in err, err[-3000:]
  assert (out / "step_100" / "metrics.json").is_file() and not (out / "step_200").exists()
  assert set(json.loads((out / "steps.json").read_text())) == {"100"}
  skipped = (out / "steps.md").read_text().split("## Checkpoints skipped")[1].strip().splitlines()
  bad = [line for line in skipped if "/200/" in line]
  assert len(bad) == 1 and bad[0].startswith(
      f"- {run / '200' / 'params'}: cannot read the checkpoint's tensor '"), skipped
  assert bad[0].endswith("; skipped") and len(bad[0]) < 600
  assert any("300: partial checkpoint" in line for line in skipped)
  assert f"warning: {run / '200' / 'params'}: cannot read the checkpoint's tensor '" in err

  # 'latest': the damaged step 200 gives way to step 100, and the report says why.
  out = tmp_path / "latest"
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={run}", "--gin.TASKS=sni:task030_toy_entail_color") == 0
  report = json.loads((out / "metrics.json").read_text())
  assert report["model"]["step"] == 100
  assert any(
      p.startswith(f"{run / '200' / 'params'}: cannot read the checkpoint's tensor '")
      for p in report["settings"]["checkpoint_problems"])
  markdown = (out / "report.md").read_text()
  assert "## Checkpoints skipped" in markdown and "/200/params: cannot read the checkpoint's tensor '" in markdown

  # A step without Orbax's commit marker (the others have one) is not a checkpoint: listed, never read.
  (run / "100" / "commit_success.txt").unlink()
  out = tmp_path / "uncommitted"
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={run}", "--gin.CHECKPOINT_STEPS='all'",
              "--gin.TASKS=sni:task030_toy_entail_color") == 1
  err = capsys.readouterr().err
  assert "100: not committed (no commit_success.txt" in err and "Traceback" not in err


BIGBENCH_TASKS = ("bigbench:anachronisms", "bigbench:entailed_polarity", "bigbench:winowhy")


@pytest.mark.slow
def test_real_smollm2_accuracies_on_bigbench_equal_transformers_scoring(shared_dir, smollm2_hf_dir, tmp_path):
  """`python -m optiml_jax.eval` on SmolLM2-135M-Instruct (its own tokenizer, found in its folder) over real
  BIG-bench tasks gives the accuracies that transformers' PyTorch model gives on the same rows."""
  import seqio  # pylint: disable=g-import-not-at-top
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  catalog = tmp_path / "catalog"
  assert bench.main([
      "build", "--config", "optiml_bench.yaml", "--bigbench_dir",
      str(shared_dir / "data" / "bigbench"), "--no_progress", "--out",
      str(catalog)
  ]) == 0
  out, n = tmp_path / "out", 12
  assert eval_entry.main([
      "--gin_file=eval.gin", f"--gin.CHECKPOINT_PATH={smollm2_hf_dir}", f"--gin.EVAL_OUTPUT_DIR={out}",
      f"--gin.CATALOG_DIR={catalog}", f"--gin.TASKS={list(BIGBENCH_TASKS)!r}", f"--gin.MAX_INSTANCES={n}",
      "--gin.evaluate.progress=False", "--gin.evaluate.batch_size=8"
  ]) == 0
  report = json.loads((out / "metrics.json").read_text())
  assert report["settings"]["tokenizer_dir"] == str(smollm2_hf_dir)

  model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_hf_dir))
  for name in BIGBENCH_TASKS:
    rows = seqio.TaskRegistry.get(f"{name}.score_eval").get_dataset(sequence_length=None, split="validation",
                                                                    shuffle=False).as_numpy_iterator()
    options: dict[int, list[tuple[float, bool]]] = {}
    for row in rows:
      instance = int(row["idx"][0])
      if instance >= n:
        break
      # Our tokens are transformers' tokens of the same text (SmolLM2 adds no BOS).
      prompt = row["inputs_pretokenized"].decode()
      assert list(row["inputs"]) == tokenizer(prompt, add_special_tokens=False).input_ids
      ids = torch.tensor([list(row["inputs"]) + list(row["targets"])])
      with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), -1)
      start = len(row["inputs"])
      score = sum(float(logprobs[start + i - 1, t]) for i, t in enumerate(row["targets"]))
      options.setdefault(instance, []).append((score, bool(row["is_correct"])))
    assert len(options) == n
    correct = [max(o)[1] for o in options.values()]
    near_ties = sum(1 for o in options.values() if len(o) > 1 and np.diff(sorted(s for s, _ in o))[-1] < 2e-3)
    ours = report["tasks"][name]["shots"]["0"]
    assert ours["error"] is None and ours["num_instances"] == n and ours["metric"] == "accuracy", ours
    assert ours["score"] == pytest.approx(100 * np.mean(correct), abs=100 * near_ties / n + 1e-9), (name, correct)


def test_evaluating_from_the_bench_cache_gives_the_catalog_run_s_scores(setup, tmp_path, tiny_tokenizer, capsys):
  pytest.importorskip("apache_beam", reason="the cache is built with Apache Beam (the test extra installs it)")
  tasks = "sni:task030_toy_entail_color,sni:task001_toy_add_small"
  assert bench.main([
      "cache",
      str(setup / "catalog"), "--out",
      str(tmp_path / "cache"), "--tasks", tasks, "--shots", "0,2", "--direct_num_workers=1",
      "--direct_running_mode=in_memory"
  ]) == 0
  flags = [f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", f"--gin.TASKS={tasks.split(',')!r}", "--gin.SHOTS=[0, 2]"]
  assert _run(setup, tmp_path / "catalog_run", *flags) == 0
  # CACHE_DIR alone: the cache's copy of the catalog, and the Tasks read its shards.
  assert eval_entry.main(
      COMMON + [f"--gin.CACHE_DIR={tmp_path / 'cache'}", f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'c'}", *flags]) == 0

  def scores(out):  # every figure of every task and shot, timings aside
    tasks = json.loads((out / "metrics.json").read_text())["tasks"]
    return {
        (n, k): {
            f: v for f, v in r.items() if f != "seconds"
        } for n, t in tasks.items() for k, r in t["shots"].items()
    }

  assert scores(tmp_path / "c") == scores(tmp_path / "catalog_run")
  # A cache of another tokenizer is refused before any model runs.
  capsys.readouterr()
  assert eval_entry.main(COMMON + [
      f"--gin.CACHE_DIR={tmp_path / 'cache'}", f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'other'}", *flags,
      f"--gin.TOKENIZER_DIR='{tiny_tokenizer('smollm2')}'"
  ]) == 2
  assert "CACHE_DIR" in capsys.readouterr().err


def test_a_corrupt_catalog_json_exits_2_naming_catalog_dir_in_one_line(setup, tmp_path, capsys):
  bad = tmp_path / "bad_catalog"
  bad.mkdir()
  (bad / "catalog.json").write_text("{bad")
  code = eval_entry.main(COMMON + [
      f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", f"--gin.EVAL_OUTPUT_DIR={tmp_path / 'o'}",
      f"--gin.CATALOG_DIR={bad}"
  ])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.splitlines()[-1].startswith(f"error: CATALOG_DIR: {bad / 'catalog.json'}: not a catalog's JSON")
  for noise in ("Traceback", "In call to configurable"):  # gin's note on errors of `evaluate` is not printed
    assert noise not in err, err
  assert not (tmp_path / "o").exists()


def test_an_output_path_through_a_file_exits_2_before_any_model_is_read(setup, tmp_path, capsys, monkeypatch):
  from optiml_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

  def no_model(*args, **kwargs):
    raise AssertionError("a model was read")

  monkeypatch.setattr(evaluator, "load_checkpoint", no_model)  # what eval reads a checkpoint with
  afile = tmp_path / "afile"
  afile.write_text("mine")
  for out, reason in ((afile, "exists and is not a folder"), (afile / "sub", f"{afile} is a file, not a folder")):
    code = _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}", "--gin.TASKS=sni:task030_toy_entail_color")
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1] == f"error: EVAL_OUTPUT_DIR {out}: {reason}" + (
        "; name a new or existing folder" if out == afile else ""), err
  assert afile.read_text() == "mine"


@pytest.mark.parametrize("flag,message", [
    ("--gin.evaluate.batch_size=0", "evaluate.batch_size: expected a positive number of rows per batch, got 0"),
    ("--gin.evaluate.dtype='float17'", "evaluate.dtype: expected a floating-point compute dtype"),
    ("--gin.evaluate.dtype='int32'", "evaluate.dtype: expected a floating-point compute dtype"),
    ("--gin.SHOTS=[-1]", "SHOTS (evaluate.shots): expected a list of numbers of demonstrations >= 0"),
    ("--gin.CHECKPOINT_STEPS='lastest'", "CHECKPOINT_STEPS (evaluate.checkpoint_steps): expected 'latest', 'all' or "
     "a list of steps (e.g. [100, 200]); got 'lastest'"),
    (f"--gin.evaluate.mesh_shape=({jax.device_count() + 1}, 1, 1)",
     f"evaluate.mesh_shape: make_mesh: data*fsdp*tensor = {jax.device_count() + 1}"),
])
def test_a_setting_evaluate_cannot_use_exits_2_naming_it_and_leaves_the_earlier_report(
    setup, tmp_path, capsys, monkeypatch, flag, message):
  from optiml_jax.evaluation import evaluator  # pylint: disable=g-import-not-at-top

  def no_model(*args, **kwargs):
    raise AssertionError("a model was read")

  monkeypatch.setattr(evaluator, "load_checkpoint", no_model)
  out = tmp_path / "out"
  out.mkdir()
  (out / "metrics.json").write_text("{}")  # an earlier evaluation's report
  (out / "report.md").write_text("earlier")
  code = _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run'}", "--gin.TASKS=sni:task030_toy_entail_color", flag)
  err = capsys.readouterr().err
  assert code == 2 and err.splitlines()[-1].startswith(f"error: {message}"), err
  assert "Traceback" not in err
  assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.md"]
  assert (out / "report.md").read_text() == "earlier"


def test_a_single_step_number_is_a_list_of_one_step(setup, tmp_path):
  out = tmp_path / "one"
  code = _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run'}", "--gin.CHECKPOINT_STEPS=100",
              "--gin.TASKS=sni:task030_toy_entail_color")
  assert code == 0 and json.loads((out / "metrics.json").read_text())["model"]["step"] == 100


def test_evaluating_into_an_earlier_evaluation_s_folder_replaces_it_as_a_whole(setup, tmp_path, capsys):
  out = tmp_path / "out"
  color, add = "sni:task030_toy_entail_color", "sni:task001_toy_add_small"
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run'}", "--gin.CHECKPOINT_STEPS='all'",
              f"--gin.TASKS={color}") == 0
  assert {p.name for p in out.iterdir()} == {"step_100", "step_200", "steps.md", "steps.json"}
  (out / "notes.txt").write_text("mine")
  # One checkpoint now, with another task and the folder's own step 200 as baseline (read before it goes).
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={setup / 'run' / '100'}", f"--gin.TASKS={add}",
              f"--gin.BASELINE_PATH={out / 'step_200'}") == 0
  assert {p.name for p in out.iterdir()
         } == {"metrics.json", "report.md", "held_out_instances.png", "inferences", "notes.txt"}
  report = json.loads((out / "metrics.json").read_text())
  assert list(report["tasks"]) == [add] and report["baseline"]["model"]["step"] == 200
  assert sorted(p.name for p in (out / "inferences").iterdir()) == [f"{add}-000100.jsonl", f"{add}-metrics.jsonl"]
  # A run whose checkpoint cannot be read (after it began writing) leaves the folder as it was, nothing of its own.
  import shutil  # pylint: disable=g-import-not-at-top
  damaged = tmp_path / "damaged"
  shutil.copytree(setup / "hf_base", damaged)
  (damaged / "model.safetensors").write_bytes(b"not safetensors")
  before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={damaged}", f"--gin.TASKS={color}") == 1
  assert "cannot read the checkpoint" in capsys.readouterr().err
  assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  assert not list(out.glob(".eval-*"))


def test_staged_output_replaces_only_an_evaluation_s_own_files_and_rolls_back_a_failed_swap(tmp_path, monkeypatch):
  import os  # pylint: disable=g-import-not-at-top
  out = tmp_path / "new" / "out"
  with pytest.raises(RuntimeError), eval_entry.staged_output(out) as work:
    (work / "metrics.json").write_text("{}")
    raise RuntimeError("a task crashed the run")
  assert not (tmp_path / "new").exists()  # the folders made for the run went with it

  out = tmp_path / "out"
  (out / "step_5").mkdir(parents=True)
  for name in ("steps.md", "report.md", "held_out_task.png", "notes.txt"):
    (out / name).write_text("earlier")

  def contents():
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}

  before = contents()
  replace = os.replace
  calls = []

  def flaky(source, target):
    calls.append(source)
    if len(calls) == 6:  # the 4 earlier outputs moved aside, 1 of the 2 new ones in: a rename fails
      raise OSError("disk gone")
    replace(source, target)

  monkeypatch.setattr(os, "replace", flaky)
  with pytest.raises(OSError, match="disk gone"), eval_entry.staged_output(out) as work:
    for name in ("metrics.json", "report.md"):
      (work / name).write_text("new")
  assert contents() == before and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
  monkeypatch.setattr(os, "replace", replace)
  with eval_entry.staged_output(out) as work:
    (work / "report.md").write_text("new")
  assert contents() == {"notes.txt": "earlier", "report.md": "new"}


def test_a_chat_model_is_evaluated_in_its_own_chat_template(setup, tmp_path, chat_tokenizer, capsys):
  import seqio  # pylint: disable=g-import-not-at-top

  from optiml_jax.data import chat  # pylint: disable=g-import-not-at-top
  from optiml_jax.data import vocab  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import llama_config  # pylint: disable=g-import-not-at-top
  from optiml_jax.models import registry  # pylint: disable=g-import-not-at-top
  config = llama_config.LlamaConfig.preset("llama-tiny", vocab_size=330, bos_token_id=1, eos_token_id=2)
  params = jax.jit(lambda k: registry.make_model(config).init(k, jnp.ones((1, 4), jnp.int32))["params"])(
      jax.random.PRNGKey(0))
  model = tmp_path / "chat_model"
  convert.save_hf(config, jax.device_get(params), model)
  for path in chat_tokenizer.iterdir():  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    (model / path.name).write_bytes(path.read_bytes())
  out = tmp_path / "chat"
  assert _run(setup, out, f"--gin.CHECKPOINT_PATH={model}", f"--gin.TASKS={TASKS[:2]!r}", "--gin.SHOTS=[0, 2]",
              "--gin.evaluate.chat_template=True") == 0
  report = json.loads((out / "metrics.json").read_text())
  assert report["settings"]["chat_template"] == str(model)
  assert f"prompts: each the user turn of the chat template of {model}" in (out / "report.md").read_text()
  for name in TASKS[:2]:
    assert all(r["error"] is None and r["num_instances"] == 2 for r in report["tasks"][name]["shots"].values())
  # The Tasks this evaluation registered read each prompt as the user turn and each answer as the assistant's.
  fmt = chat.ChatFormat.from_tokenizer(model, vocab.load(model))
  for task in ("sni:task001_toy_add_small", "sni:task001_toy_add_small.2shot"):
    example = next(
        seqio.TaskRegistry.get(task).get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
    inputs, targets = list(example["inputs"]), list(example["targets"])
    assert inputs[:len(fmt.head)] == list(fmt.head) and inputs[-len(fmt.tail):] == list(fmt.tail)
    assert targets == fmt.answer(vocab.load(model).encode(example["targets_pretokenized"].decode().strip()))

  # A tokenizer without a template (OPT's, the fallback of a checkpoint that carries none), or prompts from a cache
  # (plain ones), cannot be read in a chat format: exit 2 before any model runs, naming the setting.
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={setup / 'hf_base'}",
              "--gin.evaluate.chat_template=True") == 2
  assert "evaluate.chat_template: the tokenizer is OPT's, which has no chat template" in capsys.readouterr().err
  assert _run(setup, tmp_path / "o", f"--gin.CHECKPOINT_PATH={model}", f"--gin.CACHE_DIR='{tmp_path}'",
              "--gin.evaluate.chat_template=True") == 2
  assert "CACHE_DIR holds plain prompts" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_compilation_cache_dir_keeps_the_compiled_programs_for_the_next_command(setup, tmp_path,
                                                                                persistent_cache_settings):
  cache = tmp_path / "jax_cache"
  code = _run(setup, tmp_path / "out", f"--gin.CHECKPOINT_PATH={setup / 'run'}", f"--gin.TASKS={TASKS[:2]!r}",
              f"--gin.evaluate.compilation_cache_dir='{cache}'")
  assert code == 0
  assert jax.config.jax_compilation_cache_dir == str(cache)
  kept = [p for p in cache.iterdir() if p.is_file()]
  assert len(kept) >= 2, kept  # at least the scoring and the decoding programs
