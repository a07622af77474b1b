"""Tests of `python -m optiml_jax.answer` and the eval command's two-machine mode (`evaluation/requests.py`).

An evaluation recorded (`record_requests=True`), answered by `optiml_jax.answer` in a process where TensorFlow
and seqio cannot be imported, and replayed (CHECKPOINT_PATH and BASELINE_PATH the answers folders) must give the
report a direct evaluation of the same checkpoints gives: same scores, same predictions in the inference logs.
"""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from optiml_jax import answer
from optiml_jax import bench
from optiml_jax import convert
from optiml_jax import eval as eval_entry
from optiml_jax.evaluation import requests
from optiml_jax.models import opt

REPO = pathlib.Path(__file__).resolve().parents[1]
# Generation and multiple choice (rank classification), at every level of the toy bench.
TASKS = [
    "sni:task030_toy_entail_color", "sni:task031_toy_entail_place", "sni:task005_toy_add_large",
    "sni:task017_toy_movie_sentiment"
]
COMMON = [
    "--gin_file=eval.gin", "--gin.MAX_INSTANCES=3", "--gin.evaluate.max_new_tokens=4", "--gin.evaluate.progress=False",
    "--gin.evaluate.batch_size=4", "--gin.SHOTS=[0, 2]", f"--gin.TASKS={TASKS!r}"
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("answer_cli")
  assert bench.main(["toy", "--out", str(root / "toy"), "--catalog", str(root / "catalog")]) == 0
  config = opt.OPTConfig.preset("tiny", dropout=0.0)
  init = jax.jit(lambda key: opt.OPT(config).init(key, jnp.ones((1, 4), jnp.int32))["params"])
  for name, seed in (("tuned", 1), ("base", 2)):
    convert.save_hf(config, jax.device_get(init(jax.random.PRNGKey(seed))), root / name)
  return root


def _eval(setup, out, checkpoint, *flags):
  return eval_entry.main(COMMON + [
      f"--gin.CATALOG_DIR={setup / 'catalog'}", f"--gin.EVAL_OUTPUT_DIR={out}", f"--gin.CHECKPOINT_PATH={checkpoint}",
      *flags
  ])


def _answer_without_tf(env, *argv):
  return subprocess.run([sys.executable, "-m", "optiml_jax.answer", *map(str, argv)], capture_output=True, text=True,
                        cwd=REPO, env=env, check=False, timeout=600)


def _scores(report):
  """Every metric value of every task and shots, with its instance and truncation counts."""
  out = {}
  for name, task in report["tasks"].items():
    for k, r in task["shots"].items():
      out.update({(name, k, metric): value for metric, value in r["metrics"].items()})
      out[(name, k, "instances")], out[(name, k, "truncated")] = r["num_instances"], r["num_truncated"]
  return out


# ~80 s on 2 cores: slow, so the default suite stays under 20 minutes (CI runs it with --runslow).
@pytest.mark.slow
def test_recorded_answered_without_tensorflow_and_replayed_equals_the_direct_evaluation(
    setup, tmp_path, capsys, without_tensorflow_env):
  direct = tmp_path / "direct"
  assert _eval(setup, direct, setup / "tuned", f"--gin.BASELINE_PATH={setup / 'base'}") == 0
  capsys.readouterr()

  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "tuned", "--gin.evaluate.record_requests=True") == 0
  captured = capsys.readouterr()
  assert "recorded in" in captured.out
  # The placeholders the recorder answered with score nothing: each task says what was recorded instead.
  assert "(0-shot, held_out_category): 3 instance(s) recorded" in captured.err and "rougeL =" not in captured.err
  assert not (recorded / "metrics.json").exists() and not (recorded / "inferences").exists()
  index = requests.recorded(recorded / "requests")
  kinds = sorted(entry["kind"] for entry in index.values())
  assert kinds == ["predict"] * 4 + ["score"] * 4  # 4 tasks x 2 shots, each one call of the model

  for name in ("tuned", "base"):
    done = _answer_without_tf(without_tensorflow_env, recorded / "requests", "--checkpoint", setup / name, "--out",
                              tmp_path / f"{name}_answers", "--batch_size", "4", "--no_progress")
    assert done.returncode == 0, done.stderr
    assert "8 answer(s)" in done.stdout
  state = json.loads((tmp_path / "tuned_answers" / requests.ANSWERS_FILE).read_text())
  assert state["model"]["checkpoint"] == str(setup / "tuned") and set(state["answers"]) == set(index)

  replayed = tmp_path / "replayed"
  assert _eval(setup, replayed, tmp_path / "tuned_answers", f"--gin.BASELINE_PATH={tmp_path / 'base_answers'}") == 0
  want = json.loads((direct / "metrics.json").read_text())
  got = json.loads((replayed / "metrics.json").read_text())
  assert _scores(got) == pytest.approx(_scores(want))
  assert _scores(got["baseline"]) == pytest.approx(_scores(want["baseline"]))
  assert got["levels"] == want["levels"]
  assert got["model"]["checkpoint"] == str(setup / "tuned") and got["model"]["answers"] == str(
      tmp_path / "tuned_answers")
  assert got["model"]["num_params"] == want["model"]["num_params"]
  assert got["settings"]["inference"]["examples"] == want["settings"]["inference"]["examples"]
  for log in sorted((direct / "inferences").glob("*-[0-9]*.jsonl")):
    replay_log = replayed / "inferences" / log.name
    assert [json.loads(x) for x in replay_log.read_text().splitlines()
           ] == [json.loads(x) for x in log.read_text().splitlines()], log.name


def test_answering_resumes_and_refuses_another_model_s_folder(setup, tmp_path, capsys):
  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "base", "--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]",
               "--gin.evaluate.record_requests=True") == 0
  out = tmp_path / "answers"
  argv = [str(recorded / "requests"), "--checkpoint", str(setup / "base"), "--out", str(out), "--no_progress"]
  assert answer.main(argv) == 0
  first = (out / requests.ANSWERS_FILE).read_text()
  assert answer.main(argv) == 0  # nothing left to answer: the folder is kept as it is
  assert "1 answered before" in capsys.readouterr().out
  assert json.loads((out / requests.ANSWERS_FILE).read_text()) == json.loads(first)
  assert answer.main([str(recorded / "requests"), "--checkpoint", str(setup / "tuned"), "--out", str(out)]) == 2
  assert "answers of another model" in capsys.readouterr().err


def test_compilation_cache_dir_keeps_the_answering_programs_for_the_next_model(setup, tmp_path,
                                                                               persistent_cache_settings):
  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "base", "--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]",
               "--gin.evaluate.record_requests=True") == 0
  cache = tmp_path / "jax_cache"
  argv = [str(recorded / "requests"), "--checkpoint", str(setup / "base"), "--out", str(tmp_path / "answers")]
  assert answer.main([*argv, "--no_progress", "--compilation_cache_dir", str(cache)]) == 0
  assert [p for p in cache.iterdir() if p.is_file()]  # what the tuned model's answering will load


def test_bad_folders_and_changed_requests_give_clear_errors(setup, tmp_path, capsys):
  assert answer.main([str(tmp_path / "none"), "--checkpoint", str(setup / "base"), "--out", str(tmp_path / "a")]) == 2
  assert "no requests recorded here" in capsys.readouterr().err
  assert answer.main([str(tmp_path), "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "a")]) == 1
  assert "missing" in capsys.readouterr().err

  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "base", "--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]",
               "--gin.evaluate.record_requests=True") == 0
  assert _eval(setup, tmp_path / "r", setup / "base", "--gin.evaluate.record_requests=True",
               f"--gin.BASELINE_PATH={setup / 'tuned'}") == 2
  assert "unset BASELINE_PATH" in capsys.readouterr().err
  (key,) = requests.recorded(recorded / "requests")
  damaged = recorded / "requests" / f"{key}.npz"
  damaged.write_bytes(damaged.read_bytes()[:-10])
  assert answer.main([str(recorded / "requests"), "--checkpoint",
                      str(setup / "base"), "--out",
                      str(tmp_path / "a")]) == 2
  assert f"{key}.npz: unreadable" in capsys.readouterr().err

  # Answers to one task replayed for another: that task fails with a message naming the answers folder.
  fresh = tmp_path / "fresh"
  assert _eval(setup, fresh, setup / "base", "--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]",
               "--gin.evaluate.record_requests=True") == 0
  assert answer.main(
      [str(fresh / "requests"), "--checkpoint",
       str(setup / "base"), "--out",
       str(tmp_path / "b"), "--no_progress"]) == 0
  assert _eval(setup, tmp_path / "other", tmp_path / "b", "--gin.TASKS=['sni:task017_toy_movie_sentiment']",
               "--gin.SHOTS=[0]") == 0
  err = capsys.readouterr().err
  assert "no answer to this score request" in err and str(tmp_path / "b") in err


def _fake_requests(folder, max_length=None, max_new_tokens=None):
  """A requests folder's index (what is checked before a model is read); its requests are never answered here.
  Format 1 (no context) unless `max_length`; a predict request of `max_new_tokens` beside the score request."""
  folder.mkdir(parents=True)
  index = {"0" * 32: {"kind": "score", "examples": 1, "settings": {}}}
  if max_new_tokens is not None:
    index["1" * 32] = {"kind": "predict", "examples": 1, "settings": {"max_new_tokens": max_new_tokens, "eos_ids": [2]}}
  written = {"format_version": 1, "requests": index}
  if max_length is not None:
    written.update(format_version=requests.REQUESTS_FORMAT_VERSION, max_length=max_length)
  (folder / requests.REQUESTS_FILE).write_text(json.dumps(written))
  return folder


def test_unusable_out_folders_exit_2_before_any_model_is_read(setup, tmp_path, capsys, monkeypatch):
  from optiml_jax.checkpoints import loading  # pylint: disable=g-import-not-at-top

  def no_model(*args, **kwargs):
    raise AssertionError("a model was read")

  monkeypatch.setattr(loading, "load_checkpoint", no_model)
  recorded = _fake_requests(tmp_path / "rec")
  index = (recorded / requests.REQUESTS_FILE).read_text()
  afile = tmp_path / "afile"
  afile.write_text("mine")
  other = tmp_path / "other_answers"
  other.mkdir()
  (other / requests.ANSWERS_FILE).write_text(
      json.dumps({
          "format_version": requests.FORMAT_VERSION,
          "model": {
              "checkpoint": str(setup / "tuned"),
              "step": None,
              "format": "hf",
              "config": {}
          },
          "settings": {},
          "answers": {}
      }))
  for out, reason in ((afile, "exists and is not a folder"), (afile / "sub", f"{afile} is a file, not a folder"),
                      (recorded, "is the requests folder"), (other, "holds the answers of another model")):
    code = answer.main([str(recorded), "--checkpoint", str(setup / "base"), "--out", str(out), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith(f"error: --out {out}: {reason}"), err
    assert "Traceback" not in err
  assert afile.read_text() == "mine" and (recorded / requests.REQUESTS_FILE).read_text() == index
  assert sorted(p.name for p in recorded.iterdir()) == [requests.REQUESTS_FILE]


@pytest.mark.parametrize("flags,message", [
    (["--batch_size", "0"], "argument --batch_size: expected a positive number of rows per batch, got '0'"),
    (["--dtype", "float17"], "argument --dtype: expected a floating-point compute dtype"),
    (["--dtype", "int8"], "argument --dtype: expected a floating-point compute dtype"),
])
def test_an_unusable_batch_size_or_dtype_is_a_usage_error_before_anything_is_read_or_written(
    setup, tmp_path, capsys, flags, message):
  recorded = _fake_requests(tmp_path / "rec")
  out = tmp_path / "answers"
  with pytest.raises(SystemExit) as exit_info:
    answer.main([str(recorded), "--checkpoint", str(setup / "base"), "--out", str(out), "--no_progress", *flags])
  assert exit_info.value.code == 2 and message in capsys.readouterr().err
  assert not out.exists()


def test_a_mesh_that_does_not_fit_the_devices_exits_2_naming_mesh_shape_before_the_model_is_read(
    setup, tmp_path, capsys, monkeypatch):
  from optiml_jax.checkpoints import loading  # pylint: disable=g-import-not-at-top

  def no_model(*args, **kwargs):
    raise AssertionError("a model was read")

  monkeypatch.setattr(loading, "load_checkpoint", no_model)
  recorded = _fake_requests(tmp_path / "rec")
  code = answer.main([
      str(recorded), "--checkpoint",
      str(setup / "base"), "--out",
      str(tmp_path / "answers"), "--no_progress", "--mesh_shape", f"{jax.device_count() + 1},1,1"
  ])
  err = capsys.readouterr().err
  assert code == 2 and err.splitlines()[-1].startswith(
      f"error: --mesh_shape: make_mesh: data*fsdp*tensor = {jax.device_count() + 1}"), err


def test_a_model_that_cannot_embed_the_requests_ids_exits_2_before_its_params_are_read(
    setup, tmp_path, capsys, monkeypatch):
  """Requests of OPT's tokenizer (ids up to 50k) answered by a 512-row model gave NaN scores and exit 0."""
  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "base", "--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]",
               "--gin.evaluate.record_requests=True") == 0
  small = opt.OPTConfig.preset("tiny", dropout=0.0, vocab_size=512)
  params = jax.device_get(opt.OPT(small).init(jax.random.PRNGKey(3), jnp.ones((1, 4), jnp.int32))["params"])
  convert.save_hf(small, params, tmp_path / "small_vocab")
  largest, _ = requests.largest_token_id(recorded / "requests")
  assert largest >= 512
  from optiml_jax.checkpoints import loading  # pylint: disable=g-import-not-at-top

  def no_params(*args, **kwargs):
    raise AssertionError("the params were read")

  monkeypatch.setattr(loading, "load_checkpoint", no_params)
  out = tmp_path / "answers"
  code = answer.main(
      [str(recorded / "requests"), "--checkpoint",
       str(tmp_path / "small_vocab"), "--out",
       str(out), "--no_progress"])
  err = capsys.readouterr().err
  assert code == 2, err
  assert f"--checkpoint {tmp_path / 'small_vocab'}" in err and str(recorded / "requests") in err, err
  assert "vocab_size 512 cannot embed" in err and f"go up to {largest}" in err, err
  assert not (out / requests.ANSWERS_FILE).exists()


def test_a_checkpoint_without_config_json_is_told_what_to_do_on_this_command_line(setup, tmp_path, capsys):
  step = tmp_path / "run" / "7"
  _, params = convert.load_hf(setup / "base")
  convert.save_orbax(params, step)  # a trainer step copied without its MODEL_DIR's config.json
  code = answer.main([str(_fake_requests(tmp_path / "rec")), "--checkpoint", str(step), "--out", str(tmp_path / "a")])
  err = capsys.readouterr().err
  assert code == 1 and "no config.json beside the checkpoint" in err and "copy that model's config.json" in err, err
  assert "evaluate.model" not in err and "gin file" not in err and "config=" not in err


def test_recording_into_requests_of_another_tokenizer_exits_2(setup, tmp_path, capsys, tiny_tokenizer):
  recorded = tmp_path / "recorded"
  flags = ["--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]", "--gin.evaluate.record_requests=True"]
  assert _eval(setup, recorded, setup / "base", *flags) == 0
  listing = sorted(p.name for p in (recorded / "requests").iterdir())
  assert _eval(setup, recorded, setup / "base", *flags) == 0  # the same tokenizer: a rerun keeps what it recorded
  assert sorted(p.name for p in (recorded / "requests").iterdir()) == listing
  capsys.readouterr()
  assert _eval(setup, recorded, setup / "base", *flags, f"--gin.TOKENIZER_DIR='{tiny_tokenizer('smollm2')}'") == 2
  err = capsys.readouterr().err
  assert "EVAL_OUTPUT_DIR" in err and "recorded with another tokenizer" in err, err
  assert sorted(p.name for p in (recorded / "requests").iterdir()) == listing


@pytest.mark.parametrize(
    "recorded,flags,message",
    [
        # The requests were recorded for a context of 24: answering at another gave a report of another evaluation.
        (dict(max_length=24), ["--max_length", "16"], "--max_length 16: the requests in {rec} were recorded for a "
         "context of 24 tokens"),
        # A context too short for a predict request stopped after the model was read, and after answering others.
        (dict(max_new_tokens=3), ["--max_length", "3"], "--max_length 3: the predict request 1111"),
        (dict(max_length=24, max_new_tokens=24), [], "the recorded context (max_length in {rec}/requests.json) 24: the "
         "predict request 1111"),
        (dict(), ["--max_length", "4096"], "--max_length: max_length must be in [1, 2048] (the model's context)"),
    ])
def test_a_context_other_than_the_recorded_one_or_too_short_exits_2_before_the_params_are_read(
    setup, tmp_path, capsys, monkeypatch, recorded, flags, message):
  from optiml_jax.checkpoints import loading  # pylint: disable=g-import-not-at-top

  def no_params(*args, **kwargs):
    raise AssertionError("the params were read")

  monkeypatch.setattr(loading, "load_checkpoint", no_params)
  rec = _fake_requests(tmp_path / "rec", **recorded)
  out = tmp_path / "answers"
  code = answer.main([str(rec), "--checkpoint", str(setup / "base"), "--out", str(out), "--no_progress", *flags])
  err = capsys.readouterr().err
  assert code == 2 and err.splitlines()[-1].startswith(f"error: {message.format(rec=rec)}"), err
  assert not out.exists()


def test_resuming_into_answers_made_with_another_context_exits_2_naming_out(setup, tmp_path, capsys, monkeypatch):
  """A run stopped at --max_length 3, then resumed without it, listed its earlier answers under the new context."""
  from optiml_jax.checkpoints import discovery  # pylint: disable=g-import-not-at-top
  from optiml_jax.checkpoints import loading  # pylint: disable=g-import-not-at-top

  def no_params(*args, **kwargs):
    raise AssertionError("the params were read")

  monkeypatch.setattr(loading, "load_checkpoint", no_params)
  (checkpoint,), _ = discovery.find_checkpoints(str(setup / "base"), "latest")
  out = tmp_path / "answers"
  out.mkdir()
  (out / requests.ANSWERS_FILE).write_text(
      json.dumps({
          "format_version": requests.FORMAT_VERSION,
          "model": {
              "checkpoint": checkpoint.path,
              "step": checkpoint.step,
              "format": checkpoint.format,
              "config": {}
          },
          "settings": {
              "batch_size": 32,
              "max_length": 3,
              "share_prompts": True
          },
          "answers": {}
      }))
  rec = _fake_requests(tmp_path / "rec")
  code = answer.main([str(rec), "--checkpoint", str(setup / "base"), "--out", str(out), "--no_progress"])
  err = capsys.readouterr().err
  assert code == 2 and err.splitlines()[-1].startswith(
      f"error: --out {out}: holds answers made with other settings: max_length 3 (this run: 2048)"), err


def test_a_recording_s_max_length_is_answered_and_replayed_at_it(setup, tmp_path, capsys):
  """Recorded with evaluate.max_length=24, the requests were answered with the model's whole context and replayed as
  the results of an evaluation at 24 (nothing cut), with no word said."""
  flags = ["--gin.TASKS=['sni:task031_toy_entail_place']", "--gin.SHOTS=[0]", "--gin.evaluate.max_length=24"]
  recorded = tmp_path / "recorded"
  assert _eval(setup, recorded, setup / "base", *flags, "--gin.evaluate.record_requests=True") == 0
  assert requests.recorded_max_length(recorded / "requests") == 24
  out = tmp_path / "answers"
  assert answer.main(
      [str(recorded / "requests"), "--checkpoint",
       str(setup / "base"), "--out",
       str(out), "--no_progress"]) == 0
  state = json.loads((out / requests.ANSWERS_FILE).read_text())
  assert state["settings"]["max_length"] == 24
  assert sum(a["stats"]["truncated"] for a in state["answers"].values()) > 0  # the toy prompts are longer than 24
  capsys.readouterr()
  assert _eval(setup, tmp_path / "unset", out, *flags[:2]) == 2  # evaluate.max_length unset: the model's 2048
  err = capsys.readouterr().err
  assert "evaluate.max_length: unset, the model's whole context of 2048 tokens, but the answers in" in err, err
  assert "set evaluate.max_length=24" in err
  assert _eval(setup, tmp_path / "replayed", out, *flags) == 0
  report = json.loads((tmp_path / "replayed" / "metrics.json").read_text())
  assert report["settings"]["max_length"] == 24 and report["settings"]["inference"]["truncated"] > 0
