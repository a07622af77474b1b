"""Tests of optiml_jax.checkpoints.discovery: which kind of checkpoint a path is, its params item, its steps."""

import pathlib

import pytest

from optiml_jax.checkpoints import discovery
from optiml_jax.checkpoints import layout


def _item(folder: pathlib.Path, marker: str = "_METADATA") -> pathlib.Path:
  """An Orbax-looking item: a folder holding one of the files Orbax writes into every item."""
  folder.mkdir(parents=True)
  (folder / marker).write_text("{}")
  return folder


def _model_dir(root: pathlib.Path) -> pathlib.Path:
  """A trainer MODEL_DIR: steps 100 and 200 complete, 300 without params, 400 with an empty params item,
  an unfinished Orbax save under its temporary name, and the model's config.json."""
  for step in (100, 200):
    _item(root / str(step) / "params")
    (root / str(step) / "opt_state").mkdir()
  (root / "300" / "opt_state").mkdir(parents=True)
  (root / "400" / "params").mkdir(parents=True)
  _item(root / "500.orbax-checkpoint-tmp-123" / "params")
  (root / "config.json").write_text("{}")
  return root


def test_kind_of_every_layout(tmp_path):
  run = _model_dir(tmp_path / "run")
  saved = _item(tmp_path / "saved" / "params", marker="manifest.ocdbt").parent
  (saved / "config.json").write_text("{}")
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  assert discovery.kind_of(run) == discovery.MODEL_DIR
  assert discovery.kind_of(run / "200") == discovery.ORBAX
  assert discovery.kind_of(run / "200" / "params") == discovery.PARAMS_ITEM_KIND
  assert discovery.kind_of(run / "300") == discovery.PARTIAL_STEP
  assert discovery.kind_of(run / "400") == discovery.PARTIAL_STEP
  assert discovery.kind_of(saved) == discovery.ORBAX
  assert discovery.kind_of(hf) == discovery.HF
  (hf / "model.safetensors").unlink()  # config.json alone: read as Hugging Face, whose reader names the weights
  assert discovery.kind_of(hf) == discovery.HF and not discovery.is_hf_folder(hf)
  assert discovery.is_hf_folder(saved) is False and discovery.is_orbax_item(saved / "params")
  with pytest.raises(discovery.CheckpointError, match="not found"):
    discovery.kind_of(tmp_path / "nowhere")
  with pytest.raises(discovery.CheckpointError, match="expected a folder"):
    discovery.kind_of(run / "config.json")
  (tmp_path / "empty").mkdir()
  with pytest.raises(discovery.CheckpointError, match="no checkpoint here"):
    discovery.kind_of(tmp_path / "empty")


def test_steps_of_a_model_dir(tmp_path):
  run = _model_dir(tmp_path / "run")
  assert [p.name for p in discovery.step_folders(run)] == ["100", "200", "300", "400"]
  assert discovery.complete_steps(run) == {100: run / "100", 200: run / "200"}
  assert discovery.step_of(run / "200") == 200 and discovery.step_of(run) is None


def test_find_params_item_and_where_config_json_is_looked_for(tmp_path):
  run = _model_dir(tmp_path / "run")
  assert discovery.find_params_item(run) == (run / "200" / "params", [run / "200", run])
  assert discovery.find_params_item(run / "100") == (run / "100" / "params", [run / "100", run])
  assert discovery.find_params_item(run / "100" / "params") == (run / "100" / "params",
                                                                [run / "100" / "params", run / "100", run])
  with pytest.raises(discovery.CheckpointError, match=r"400: partial checkpoint \(its 'params' item is empty\)"):
    discovery.find_params_item(run / "400")
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(discovery.CheckpointError, match="no Orbax 'params' item here"):
    discovery.find_params_item(hf)
  # The converter and the trainer catch ConversionError: discovery's errors are ConversionErrors too.
  assert issubclass(discovery.CheckpointError, layout.ConversionError)


def test_find_checkpoints_in_every_layout(tmp_path):
  with pytest.raises(discovery.CheckpointError, match="not found"):
    discovery.find_checkpoints(tmp_path / "nowhere")
  run = _model_dir(tmp_path / "run")
  found, problems = discovery.find_checkpoints(run)
  assert [(c.step, c.format) for c in found] == [(200, "orbax")]
  assert len(problems) == 2 and "300: partial checkpoint" in problems[0] and "400: partial" in problems[1]
  assert [c.step for c in discovery.find_checkpoints(run, "all")[0]] == [100, 200]
  found, problems = discovery.find_checkpoints(run, [100, 400])
  assert [c.step for c in found] == [100] and "step 400 not found" in problems[-1]
  with pytest.raises(discovery.CheckpointError, match=r"none of the steps \[300\]"):
    discovery.find_checkpoints(run, [300])
  with pytest.raises(discovery.CheckpointError, match="'latest', 'all' or a list"):
    discovery.find_checkpoints(run, "first")
  assert discovery.find_checkpoints(run / "200")[0] == [discovery.Checkpoint(str(run / "200"), "orbax", 200)]
  with pytest.raises(discovery.CheckpointError, match=r"partial checkpoint \(step folder without a 'params'"):
    discovery.find_checkpoints(run / "300")
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  assert discovery.find_checkpoints(tmp_path / "hf")[0] == [discovery.Checkpoint(str(tmp_path / "hf"), "hf")]
  partial_run = tmp_path / "partial_run"
  (partial_run / "5").mkdir(parents=True)
  with pytest.raises(discovery.CheckpointError, match="every step folder is partial"):
    discovery.find_checkpoints(partial_run)


def test_tokenizer_folder_is_the_checkpoint_s_own_or_its_model_dir_s(tmp_path):
  run = _model_dir(tmp_path / "run")
  assert discovery.tokenizer_folder(run) is None  # a MODEL_DIR of a run that tokenized with OPT's default
  (run / "tokenizer.json").write_text("{}")
  for path in (run, run / "200", run / "200" / "params"):  # a step and its params item look up to MODEL_DIR
    assert discovery.tokenizer_folder(path) == run.absolute()
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  assert discovery.tokenizer_folder(hf) is None
  (hf / "vocab.json").write_text("{}")
  assert discovery.tokenizer_folder(hf) is None  # OPT's files come in pairs
  (hf / "merges.txt").write_text("")
  assert discovery.tokenizer_folder(hf) == hf.absolute()
  # A folder with its own config.json never borrows the tokenizer of the folder around it.
  saved = _item(run / "export" / "params").parent
  (saved / "config.json").write_text("{}")
  assert discovery.tokenizer_folder(saved) is None
  assert discovery.tokenizer_folder(tmp_path / "missing") is None
