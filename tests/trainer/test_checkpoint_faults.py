"""Storage faults of MODEL_DIR's checkpoints: a damaged or uncommitted newest step at resume, a save that fails.

Everything runs in this process on a tiny OPT with short rows and the synthetic stream (as tests/trainer/
test_loop.py), so compiled steps are shared. A run that resumes must end with the per-step losses of a run
that was never interrupted. The disk-full save is simulated by a file system that refuses Orbax's writes of
one step's temporary folder with ENOSPC (etils' local path class, through which Orbax writes its JSON and
commit files); tests/test_train_cli.py fills a real tmpfs where the machine allows it.
"""

import errno
import json
import os
import pathlib

from etils import epath
import pytest

from optiml_jax.models import opt as opt_lib
from optiml_jax.trainer import checkpointing
from optiml_jax.trainer import config as config_lib
from optiml_jax.trainer import loop
from optiml_jax.trainer import synthetic

SEQ_LEN, VOCAB = 32, 512
TINY = opt_lib.OPTConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, dropout=0.1)
TRAIN_STEPS = 8


def _config(model_dir, *, stop_at_step=None, save_every=2, keep=3, on_bad="skip", on_save_error="stop"):
  return config_lib.TrainConfig(
      data=config_lib.DataArgs("synthetic", {
          "inputs": SEQ_LEN // 2,
          "targets": SEQ_LEN // 2
      }, 4), model=config_lib.ModelArgs(TINY),
      checkpoint=config_lib.CheckpointArgs(str(model_dir), save_every=save_every, keep_checkpoints=keep,
                                           on_bad_checkpoint=on_bad, on_save_error=on_save_error),
      run=config_lib.RunArgs(TRAIN_STEPS, stop_at_step=stop_at_step),
      optimizer=config_lib.OptimizerArgs(learning_rate=1e-2, warmup_steps=1),
      logging=config_lib.LoggingArgs(log_every=1, progress=False, tensorboard=False))


def _run(model_dir, **kwargs):
  return loop.run(_config(model_dir, **kwargs), synthetic.factory(SEQ_LEN, VOCAB))


def _losses(model_dir):
  records = map(json.loads, (pathlib.Path(model_dir) / "metrics.jsonl").read_text().splitlines())
  return {r["step"]: r["loss"] for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The per-step losses of a run that was never interrupted."""
  model_dir = tmp_path_factory.mktemp("reference")
  _run(model_dir)
  losses = _losses(model_dir)
  assert sorted(losses) == list(range(1, TRAIN_STEPS + 1))
  return losses


def _data_files(item: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of an Orbax item (OCDBT `d/` folders), largest first."""
  files = [p for p in item.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, f"no data files under {item}"
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _truncate_params(step_dir: pathlib.Path) -> None:
  target = _data_files(step_dir / "params")[0]
  data = target.read_bytes()
  target.write_bytes(data[:len(data) // 2])


def _delete_opt_state_file(step_dir: pathlib.Path) -> None:
  _data_files(step_dir / "opt_state")[0].unlink()


def _remove_commit_marker(step_dir: pathlib.Path) -> None:
  (step_dir / "commit_success.txt").unlink()


def _corrupt_meta(step_dir: pathlib.Path) -> None:
  (step_dir / "meta" / "metadata").write_text('{"step": 6, "data": [', encoding="utf-8")


FAULTS = {
    "truncated params file": (_truncate_params, "params: tensor '"),
    "deleted opt_state file": (_delete_opt_state_file, "opt_state: "),
    "missing commit_success.txt": (_remove_commit_marker, "not committed (no commit_success.txt"),
    "corrupt meta": (_corrupt_meta, "meta: "),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_newest_step_is_set_aside_and_the_run_resumes_to_identical_losses(fault, reference, tmp_path, caplog):
  damage, reason = FAULTS[fault]
  first = _run(tmp_path, stop_at_step=6)
  assert first.checkpoint_steps == [2, 4, 6]
  damage(tmp_path / "6")
  before = sorted(str(p.relative_to(tmp_path / "6")) for p in (tmp_path / "6").rglob("*"))

  caplog.set_level("WARNING")
  resumed = _run(tmp_path)
  assert (resumed.first_step, resumed.last_step) == (4, TRAIN_STEPS)
  assert _losses(tmp_path) == reference  # steps 1-4 from the first run, 5-8 after resuming from step 4
  # The bad step is set aside with its files unchanged, never counted against keep_checkpoints (3) nor deleted.
  aside = tmp_path / "6.unrestorable"
  assert sorted(str(p.relative_to(aside)) for p in aside.rglob("*")) == before
  assert resumed.checkpoint_steps == [4, 6, 8]
  assert len(resumed.bad_checkpoints) == 1 and reason in resumed.bad_checkpoints[0]
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "step" in r.getMessage()]
  assert any(f"step 6 ({tmp_path / '6'}): " in w and reason in w for w in warnings), warnings
  assert any("resuming from step 4" in w and str(aside) in w for w in warnings), warnings
  assert all(len(w) < 600 and "\n" not in w for w in warnings)  # a few short lines, no library dump


def test_on_bad_checkpoint_stop_names_the_step_and_moves_nothing(tmp_path):
  _run(tmp_path, stop_at_step=6)
  _truncate_params(tmp_path / "6")
  with pytest.raises(checkpointing.UnrestorableCheckpointError) as error:
    _run(tmp_path, on_bad="stop")
  message = str(error.value)
  assert message.startswith(f"checkpoint step 6 ({tmp_path / '6'}): params: tensor '")
  assert "older steps: [2, 4]" in message and "on_bad_checkpoint='skip'" in message and "\n" not in message
  assert sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit()) == ["2", "4", "6"]


def test_when_no_step_restores_nothing_is_moved_and_training_does_not_restart(tmp_path):
  _run(tmp_path, stop_at_step=4, save_every=4)
  _corrupt_meta(tmp_path / "4")
  with pytest.raises(checkpointing.UnrestorableCheckpointError, match="no checkpoint in .* can be restored: step 4"):
    _run(tmp_path, save_every=4)
  assert (tmp_path / "4").is_dir() and not (tmp_path / "4.unrestorable").exists()


def test_non_finite_values_read_back_are_damage(tmp_path):
  """A checkpoint is never written with NaN/inf, so one that holds them was damaged at rest."""
  _run(tmp_path, stop_at_step=4, save_every=2)
  model = loop.make_model(TINY)
  tx, _ = loop.optimizer_lib.make_optimizer(learning_rate=1e-2, warmup_steps=1, total_steps=TRAIN_STEPS)
  layout = loop.state_lib.state_layout(model, tx, loop.partitioning.make_mesh(-1, 1, 1), SEQ_LEN)
  ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=2, async_save=False)
  state, meta = ckpt.restore(4, layout.abstract)
  ckpt.close()
  # Rewrite step 4 with a NaN, bypassing the save-time refusal, as a bit flip at rest would leave it.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  params = jax.tree_util.tree_map(np.array, state.params)  # writable copies
  leaf = jax.tree_util.tree_leaves(params)[0]
  leaf.flat[0] = np.nan
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  raw = ocp.CheckpointManager(str(tmp_path), item_names=checkpointing.ITEMS)
  raw.delete(4)
  raw.save(
      4, args=ocp.args.Composite(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(state.opt_state),
                                 meta=ocp.args.JsonSave(meta)), force=True)
  raw.wait_until_finished()
  raw.close()
  reopened = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=2)
  _, meta = reopened.restore_latest(layout.abstract)
  reopened.close()
  assert meta["step"] == 2
  assert "holds NaN/inf" in reopened.bad_steps[0].reason and reopened.bad_steps[0].step == 4


class _FullDisk:
  """Refuses, with ENOSPC, every text write of etils' local paths inside the folders of one step being saved."""

  def __init__(self, monkeypatch, model_dir: pathlib.Path, step: int):
    self.prefixes = (str(model_dir / str(step)) + os.sep, str(model_dir / f"{step}.orbax-checkpoint-tmp"))
    self.refused: list[str] = []
    cls = type(epath.Path(str(model_dir)))
    original = cls.write_text

    def write_text(path, *args, **kwargs):
      if str(path).startswith(self.prefixes):
        self.refused.append(str(path))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
      return original(path, *args, **kwargs)

    monkeypatch.setattr(cls, "write_text", write_text)


def test_a_full_disk_during_a_save_stops_the_run_naming_step_and_path_and_never_costs_a_step(
    reference, tmp_path, monkeypatch):
  disk = _FullDisk(monkeypatch, tmp_path, 6)
  with pytest.raises(checkpointing.CheckpointSaveError) as error:
    _run(tmp_path, keep=2)  # asynchronous saves: the failure of step 6 is raised by the next save or the end
  assert disk.refused
  assert error.value.step == 6 and error.value.path == str(tmp_path / "6")
  message = str(error.value)
  assert message.startswith(f"step 6: the checkpoint could not be written to {tmp_path / '6'}: ")
  assert "No space left on device" in message and "\n" not in message and len(message) < 600
  # Step 6 never committed and nothing was deleted for it: keep_checkpoints=2 still holds steps 2 and 4.
  names = sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit())
  assert [n for n in names if "orbax-checkpoint-tmp" not in n] == ["2", "4"], names

  monkeypatch.undo()  # space freed: the same command resumes from step 4, never from the uncommitted step 6
  resumed = _run(tmp_path, keep=2)
  assert (resumed.first_step, resumed.last_step, resumed.checkpoint_steps) == (4, TRAIN_STEPS, [6, 8])
  assert not resumed.bad_checkpoints and _losses(tmp_path) == reference
  assert not [p for p in tmp_path.iterdir() if "orbax-checkpoint-tmp" in p.name]  # the failed save's folder is gone


def test_on_save_error_retry_trains_on_and_saves_at_the_next_save_step(reference, tmp_path, monkeypatch, caplog):
  _FullDisk(monkeypatch, tmp_path, 4)
  caplog.set_level("WARNING")
  summary = _run(tmp_path, on_save_error="retry")
  assert summary.failed_saves == [4] and summary.checkpoint_steps == [2, 6, 8]
  assert "failed saves (not checkpointed): steps [4]" in summary.describe()
  assert any(
      "step 4: the checkpoint could not be written" in r.getMessage() and "on_save_error='retry'" in r.getMessage()
      for r in caplog.records)
  assert _losses(tmp_path) == reference


def test_on_save_error_retry_still_fails_the_run_when_its_last_save_fails(tmp_path, monkeypatch):
  _FullDisk(monkeypatch, tmp_path, TRAIN_STEPS)
  with pytest.raises(checkpointing.CheckpointSaveError, match=f"step {TRAIN_STEPS}: .*the run's last save failed"):
    _run(tmp_path, on_save_error="retry")
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "4", "6"]
