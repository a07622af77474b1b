"""Tests of optiml_jax.interop.t5x_checkpoints: t5x's checkpoint_<step>/state <-> our Orbax folders, for a tiny
OPT and a tiny Llama.

Needs orbax only (t5x's layout is written here directly); tests/interop/test_t5x_cli.py converts checkpoints
that t5x itself wrote.
"""

import json
import os
import pathlib
import subprocess
import sys

from etils.epath import gpath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from optiml_jax.checkpoints import layout
from optiml_jax.checkpoints import orbax_io
from optiml_jax.interop import t5x_checkpoints
from optiml_jax.models import registry

CONFIG = registry.preset("tiny", vocab_size=128, max_position_embeddings=32)
LLAMA = registry.preset("llama-tiny", vocab_size=128, max_position_embeddings=32)


def _init(config, seed):
  model = registry.make_model(config)
  init = jax.jit(lambda rng: model.init(rng, jnp.ones((1, 8), jnp.int32), enable_dropout=False))
  return jax.tree.map(np.asarray, init(jax.random.PRNGKey(seed))["params"])


@pytest.fixture(scope="module")
def params():
  return _init(CONFIG, 1)


@pytest.fixture(scope="module")
def llama_params():
  return _init(LLAMA, 1)


def _assert_same(a, b):
  flat_a, flat_b = layout.flatten(dict(a)), layout.flatten(dict(b))
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    assert np.asarray(flat_a[key]).dtype == np.asarray(flat_b[key]).dtype, key
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg="/".join(key))


def _write_t5x_layout(model_dir: pathlib.Path, step: int, params) -> pathlib.Path:
  """A checkpoint as t5x's OrbaxCheckpointManagerInterface writes it, optimizer state included."""
  adam = {
      "count": np.asarray(step, np.int32),
      "mu": jax.tree.map(np.zeros_like, params),
      "nu": jax.tree.map(np.ones_like, params)
  }
  state = {
      "target": params,
      "state": {
          "step": np.asarray(step, np.int32),
          "param_states": {
              "1": {
                  "0": adam,
                  "2": {
                      "count": np.asarray(step, np.int32)
                  }
              }
          }
      }
  }
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(model_dir, options=options, item_names=("state",)) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
  return model_dir / f"checkpoint_{step}"


def test_import_reads_the_parameters_and_step_of_a_t5x_checkpoint(tmp_path, params):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 7, params)
  read, step = t5x_checkpoints.read_t5x_params(checkpoint)
  assert step == 7
  _assert_same(read, params)
  out = t5x_checkpoints.import_t5x(checkpoint, tmp_path / "ours", CONFIG)
  config, restored = orbax_io.restore_orbax(out)
  assert config.hidden_size == CONFIG.hidden_size and config.scan_layers
  _assert_same(restored, params)
  assert json.loads((out / "config.json").read_text())["vocab_size"] == 128


def test_state_item_is_found_from_model_dir_step_folder_or_item(tmp_path, params):
  _write_t5x_layout(tmp_path / "t5x", 3, params)
  latest = _write_t5x_layout(tmp_path / "t5x", 12, params)
  assert t5x_checkpoints.find_state_item(tmp_path / "t5x") == latest / "state"
  assert t5x_checkpoints.find_state_item(latest) == latest / "state"
  assert t5x_checkpoints.find_state_item(latest / "state") == latest / "state"
  with pytest.raises(layout.ConversionError, match="not a t5x checkpoint"):
    t5x_checkpoints.find_state_item(tmp_path)
  with pytest.raises(layout.ConversionError, match="not found"):
    t5x_checkpoints.find_state_item(tmp_path / "missing")


def test_import_refuses_a_config_that_does_not_match(tmp_path, params):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 1, params)
  wider = registry.preset("tiny", vocab_size=256, max_position_embeddings=32)
  with pytest.raises(layout.ConversionError, match="embed_tokens/embedding: expected shape"):
    t5x_checkpoints.import_t5x(checkpoint, tmp_path / "ours", wider)
  assert not (tmp_path / "ours").exists()


def test_import_refuses_an_out_that_is_or_holds_the_t5x_checkpoint_before_reading_it(
    tmp_path, params, capsys, monkeypatch):
  """`import T5X/checkpoint_7 T5X --overwrite` would replace the t5x MODEL_DIR, checkpoint included, with our folder;
  `import T5X T5X/checkpoint_7` would replace the latest step it read. Refused (exit 2), with or without
  --overwrite, before anything is read."""
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 7, params)

  def listing():
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

  before = listing()
  monkeypatch.setattr(t5x_checkpoints, "read_t5x_params", lambda *_: pytest.fail("read before the usage check"))
  overrides = json.dumps({"vocab_size": 128, "max_position_embeddings": 32})
  cases = [
      (checkpoint, tmp_path / "t5x", f"{tmp_path / 't5x'}: holds the source {checkpoint}"),
      (tmp_path / "t5x", checkpoint, f"{checkpoint}: holds the source {checkpoint / 'state'}"),
      (checkpoint / "state", checkpoint / "state", f"{checkpoint / 'state'}: is the source"),
  ]
  for source, out, message in cases:
    for overwrite in ([], ["--overwrite"]):
      argv = ["import", str(source), str(out), "--preset", "tiny", "--overrides", overrides] + overwrite
      capsys.readouterr()
      assert t5x_checkpoints.main(argv) == 2, argv
      assert capsys.readouterr().err.startswith(f"error: {message}")
      assert listing() == before
  with pytest.raises(layout.ConversionError, match="holds the source"):  # the library refuses it too
    t5x_checkpoints.import_t5x(checkpoint, tmp_path / "t5x", CONFIG, overwrite=True)
  # --overrides with --config would be dropped (the config.json gives every field): refused, nothing written.
  config_json = tmp_path / "config.json"
  config_json.write_text("{}")
  capsys.readouterr()
  argv = ["import", str(checkpoint), str(tmp_path / "new"), "--config", str(config_json), "--overrides", overrides]
  assert t5x_checkpoints.main(argv) == 2
  assert capsys.readouterr().err.startswith("error: --overrides: replaces fields of a --preset's config")
  assert listing() == sorted(before + ["config.json"])


def test_export_then_import_is_bitwise_and_export_keeps_no_optimizer_state(tmp_path, params):
  ours = orbax_io.save_orbax(params, tmp_path / "ours", CONFIG)
  written = t5x_checkpoints.export_t5x(ours, tmp_path / "t5x", step=4)
  assert written == tmp_path / "t5x" / "checkpoint_4"
  tree = ocp.PyTreeCheckpointHandler().metadata(written / "state")
  tree = getattr(tree, "tree", tree)
  assert set(tree) == {"target", "state"} and set(tree["state"]) == {"step"}
  read, step = t5x_checkpoints.read_t5x_params(tmp_path / "t5x")
  assert step == 4
  _assert_same(read, params)
  with pytest.raises(layout.ConversionError, match="already exists"):
    t5x_checkpoints.export_t5x(ours, tmp_path / "t5x", step=4)


def test_export_writes_a_step_below_the_latest_one_in_out_dir_or_says_it_did_not(tmp_path, params, capsys, monkeypatch):
  """Exporting `--step 0` into a t5x MODEL_DIR that holds checkpoint_4000: Orbax's CheckpointManager skips a step not
  above its latest, which printed 'wrote .../checkpoint_0' for a folder that was never made."""
  ours = orbax_io.save_orbax(params, tmp_path / "ours", CONFIG)
  t5x_checkpoints.export_t5x(ours, tmp_path / "t5x", step=4000)
  capsys.readouterr()
  assert t5x_checkpoints.main(["export", str(ours), str(tmp_path / "t5x"), "--step", "0"]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 't5x' / 'checkpoint_0'}"
  assert sorted(p.name for p in (tmp_path / "t5x").iterdir()) == ["checkpoint_0", "checkpoint_4000"]
  read, step = t5x_checkpoints.read_t5x_params(tmp_path / "t5x" / "checkpoint_0")
  assert step == 0
  _assert_same(read, params)

  # Should Orbax still write nothing, the command says so instead of "wrote".
  monkeypatch.setattr(ocp.CheckpointManager, "save", lambda *args, **kwargs: False)
  assert t5x_checkpoints.main(["export", str(ours), str(tmp_path / "t5x"), "--step", "7"]) == 2
  captured = capsys.readouterr()
  assert "wrote" not in captured.out
  assert captured.err.startswith(f"error: {tmp_path / 't5x' / 'checkpoint_7'}: Orbax's CheckpointManager did not")


def test_t5x_path_keeps_a_bucket_url_and_makes_a_local_path_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(t5x_checkpoints.t5x_path("gs://my-bucket/opt-t5x")) == "gs://my-bucket/opt-t5x"
  assert str(t5x_checkpoints.t5x_path("s3://b/x/checkpoint_3")) == "s3://b/x/checkpoint_3"
  assert t5x_checkpoints.t5x_path("t5x/checkpoint_3") == tmp_path / "t5x" / "checkpoint_3"
  assert t5x_checkpoints.t5x_path(tmp_path / "t5x") == tmp_path / "t5x"


def test_a_bucket_url_goes_to_orbax_as_it_is_never_to_a_local_gs_folder(tmp_path, params, capsys, monkeypatch):
  """docs/t5x.md's `export ORBAX gs://BUCKET/...`: pathlib made the URL the local folder `<cwd>/gs:/BUCKET/...`,
  which Orbax began to fill before failing (exit 1, a traceback). No bucket is reached here: epath's `exists` and
  `is_dir` of gs:// paths are replaced, first by a bucket that cannot be reached, then by an empty one."""
  ours = orbax_io.save_orbax(params, tmp_path / "ours", CONFIG)
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  url = "gs://my-bucket/opt-t5x"
  local_exists, local_is_dir = gpath.PosixGPath.exists, gpath.PosixGPath.is_dir

  def on_gs(local, answer):

    def method(path):
      return answer(path) if str(path).startswith("gs://") else local(path)

    return method

  def unreachable(path):
    raise RuntimeError(f"Could not resolve host: www.googleapis.com when reading metadata of {path}")  # not OSError

  monkeypatch.setattr(gpath.PosixGPath, "exists", on_gs(local_exists, unreachable))
  monkeypatch.setattr(gpath.PosixGPath, "is_dir", on_gs(local_is_dir, unreachable))
  capsys.readouterr()
  assert t5x_checkpoints.main(["export", str(ours), url]) == 2
  assert capsys.readouterr().err.startswith(f"error: {url}/checkpoint_0: cannot be reached: Could not resolve host")
  assert t5x_checkpoints.main(["import", f"{url}/checkpoint_0", str(tmp_path / "back"), "--preset", "tiny"]) == 2
  assert capsys.readouterr().err.startswith(f"error: {url}/checkpoint_0: cannot be reached: Could not resolve host")
  assert not any(cwd.iterdir()) and not (tmp_path / "back").exists()

  # A reachable, empty bucket: Orbax's CheckpointManager is given the URL itself.
  monkeypatch.setattr(gpath.PosixGPath, "exists", on_gs(local_exists, lambda path: False))
  given = []

  class Manager:  # records its folder; writes nothing, so export says so

    def __init__(self, directory, **kwargs):
      del kwargs
      given.append(directory)

    def __enter__(self):
      return self

    def __exit__(self, *exc_info):
      return False

    def save(self, *args, **kwargs):
      del args, kwargs
      return False

    def wait_until_finished(self):
      pass

  monkeypatch.setattr(ocp, "CheckpointManager", Manager)
  assert t5x_checkpoints.main(["export", str(ours), url, "--step", "5"]) == 2
  assert capsys.readouterr().err.startswith(f"error: {url}/checkpoint_5: Orbax's CheckpointManager did not write")
  assert [str(d) for d in given] == [url]
  assert not any(cwd.iterdir())


def test_export_stacks_unscanned_layers_in_layer_order(tmp_path):
  config = registry.preset("tiny", vocab_size=128, max_position_embeddings=32, num_hidden_layers=11, scan_layers=False)
  unscanned = _init(config, 2)
  assert "layers_10" in unscanned
  ours = orbax_io.save_orbax(unscanned, tmp_path / "ours", config)
  read, _ = t5x_checkpoints.read_t5x_params(t5x_checkpoints.export_t5x(ours, tmp_path / "t5x"))
  assert "layers_0" not in read and read["layers"]["fc1"]["kernel"].shape == (11, 64, 256)
  for i in range(11):
    np.testing.assert_array_equal(read["layers"]["fc1"]["kernel"][i], unscanned[f"layers_{i}"]["fc1"]["kernel"])
  _assert_same(t5x_checkpoints.stack_layers(read), read)  # stacked trees pass through


def test_command_line(tmp_path, params, capsys):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 2, params)
  overrides = json.dumps({"vocab_size": 128, "max_position_embeddings": 32})
  assert t5x_checkpoints.main(
      ["import", str(checkpoint),
       str(tmp_path / "ours"), "--preset", "tiny", "--overrides", overrides]) == 0
  assert "wrote" in capsys.readouterr().out
  _assert_same(orbax_io.restore_orbax(tmp_path / "ours")[1], params)
  assert t5x_checkpoints.main(["import",
                               str(checkpoint),
                               str(tmp_path / "again"), "--config",
                               str(tmp_path / "ours")]) == 0
  assert t5x_checkpoints.main(["export", str(tmp_path / "ours"), str(tmp_path / "back"), "--step", "9"]) == 0
  _assert_same(t5x_checkpoints.read_t5x_params(tmp_path / "back")[0], params)
  assert t5x_checkpoints.main(["import", str(checkpoint), str(tmp_path / "bad"), "--preset", "tiny"]) == 2
  assert "expected shape" in capsys.readouterr().err


def test_bad_json_is_an_error_naming_the_config_file_or_the_flag(tmp_path, params, capsys):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 2, params)
  broken = tmp_path / "hf" / "config.json"
  broken.parent.mkdir()
  broken.write_text('{"model_type": "opt", \n', encoding="utf-8")
  capsys.readouterr()
  for config in (broken, broken.parent):  # the file, or the folder holding it
    assert t5x_checkpoints.main(["import", str(checkpoint), str(tmp_path / "out"), "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {broken}: cannot read JSON: Expecting property name")
  argv = ["import", str(checkpoint), str(tmp_path / "out"), "--preset", "tiny", "--overrides", "{vocab_size: 128}"]
  assert t5x_checkpoints.main(argv) == 2
  assert capsys.readouterr().err.startswith("error: --overrides: not JSON (Expecting property name enclosed in double "
                                            "quotes: line 1 column 2 (char 1)): '{vocab_size: 128}'")
  assert not (tmp_path / "out").exists()


def test_a_llama_goes_both_ways_bitwise_and_its_unscanned_layers_stack(tmp_path, llama_params):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 3, llama_params)
  out = t5x_checkpoints.import_t5x(checkpoint, tmp_path / "ours", LLAMA)
  config, restored = orbax_io.restore_orbax(out)
  assert config == LLAMA and config.family == "llama"
  _assert_same(restored, llama_params)
  with pytest.raises(layout.ConversionError, match="expected shape"):
    t5x_checkpoints.import_t5x(checkpoint, tmp_path / "opt", CONFIG)  # an OPT config does not fit a Llama tree
  read, step = t5x_checkpoints.read_t5x_params(t5x_checkpoints.export_t5x(out, tmp_path / "back", step=3))
  assert step == 3
  _assert_same(read, llama_params)
  unscanned_config = registry.preset("llama-tiny", vocab_size=128, num_hidden_layers=3, scan_layers=False)
  unscanned = _init(unscanned_config, 4)
  ours = orbax_io.save_orbax(unscanned, tmp_path / "unscanned", unscanned_config)
  read, _ = t5x_checkpoints.read_t5x_params(t5x_checkpoints.export_t5x(ours, tmp_path / "stacked"))
  assert read["layers"]["mlp"]["gate_proj"]["kernel"].shape == (3, 64, 160)
  for i in range(3):
    np.testing.assert_array_equal(read["layers"]["self_attn"]["k_proj"]["kernel"][i],
                                  unscanned[f"layers_{i}"]["self_attn"]["k_proj"]["kernel"])


def test_command_line_takes_any_family_preset(tmp_path, llama_params, capsys):
  checkpoint = _write_t5x_layout(tmp_path / "t5x", 2, llama_params)
  overrides = json.dumps({"vocab_size": 128, "max_position_embeddings": 32})
  assert t5x_checkpoints.main(
      ["import", str(checkpoint),
       str(tmp_path / "ours"), "--preset", "llama-tiny", "--overrides", overrides]) == 0
  config, restored = orbax_io.restore_orbax(tmp_path / "ours")
  assert config.family == "llama"
  _assert_same(restored, llama_params)
  assert t5x_checkpoints.main(["import",
                               str(checkpoint),
                               str(tmp_path / "again"), "--config",
                               str(tmp_path / "ours")]) == 0
  assert orbax_io.restore_orbax(tmp_path / "again")[0] == config
  capsys.readouterr()
  assert t5x_checkpoints.main(["import", str(checkpoint), str(tmp_path / "bad"), "--preset", "llama-9b"]) == 2
  assert "unknown model preset 'llama-9b'" in capsys.readouterr().err


def test_the_package_does_not_import_t5x_off_the_t5x_path():
  """Only gin/t5x/ files import `interop.t5x_model` (which imports t5x); nothing else pulls t5x in, even where
  t5x is importable ($OPTIML_T5X_DIR checkouts are put on the path when set)."""
  root = os.environ.get("OPTIML_T5X_DIR")
  paths = [os.path.join(root, name) for name in ("t5x", "airio", "jestimator")] if root else []
  code = ("import sys\n"
          "import optiml_jax.train, optiml_jax.eval, optiml_jax.convert, optiml_jax.bench\n"
          "import optiml_jax.interop.t5x_tasks, optiml_jax.interop.t5x_checkpoints\n"
          "print(sorted(m for m in sys.modules if m == 't5x' or m.startswith('t5x.')))\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "[]"
