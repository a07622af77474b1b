"""Tests for `sources.iter_all` and `sources.reopen` across every file-based format."""

import itertools
import json
import pathlib

import pytest

from optiml_jax.data import records
from optiml_jax.data import sources


def _write_local_sources(root: pathlib.Path) -> dict[str, pathlib.Path]:
  folders = {name: root / name for name in ("crossfit", "cot", "text")}
  for folder in folders.values():
    folder.mkdir()
  (folders["crossfit"] / "glue-mrpc.jsonl").write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n")
  (folders["crossfit"] / "broken.jsonl").write_text("{oops\n")
  (folders["cot"] / "gsm8k.jsonl").write_text(json.dumps({"question": "q", "rationale": "r.", "answer": "1"}) + "\n")
  (folders["text"] / "c4.txt").write_text("one\n\ntwo\n")
  return folders


def test_iter_all_walks_every_source_in_order(shared_dir, tmp_path):
  folders = _write_local_sources(tmp_path)
  data = shared_dir / "data"
  results = list(
      sources.iter_all(sni_dir=data / "natural-instructions", p3_dir=data / "p3", bigbench_dir=data / "bigbench",
                       jsonl_dirs=[("crossfit", folders["crossfit"])], cot_dir=folders["cot"],
                       text_dir=folders["text"]))
  tasks = [r for r in results if isinstance(r, records.TaskSource)]
  skipped = [r for r in results if isinstance(r, records.Skipped)]
  order = [benchmark for benchmark, _ in itertools.groupby(t.benchmark for t in tasks)]
  assert order == ["sni", "promptsource", "bigbench", "crossfit", "reasoning", "pretraining"]
  counts = {b: sum(t.benchmark == b for t in tasks) for b in order}
  assert counts["sni"] == 291 and counts["bigbench"] == 85
  assert counts["crossfit"] == counts["reasoning"] == counts["pretraining"] == 1
  assert str(folders["crossfit"] / "broken.jsonl") in {s.path for s in skipped}
  assert len({t.name for t in tasks}) == len(tasks)  # Names are unique across benchmarks.


def test_reopen_reads_the_same_task(shared_dir, tmp_path):
  folders = _write_local_sources(tmp_path)
  data = shared_dir / "data"
  originals = [
      next(sources.sni.iter_tasks(data / "natural-instructions")),
      next(sources.promptsource.iter_tasks(data / "p3")),
      next(sources.bigbench.iter_tasks(data / "bigbench")),
      sources.jsonl.read_task(folders["crossfit"] / "glue-mrpc.jsonl", "crossfit"),
      next(sources.cot.iter_tasks(folders["cot"])),
      next(sources.text.iter_tasks(folders["text"])),
  ]
  assert sorted(t.format for t in originals) == ["bigbench", "cot", "jsonl", "p3", "sni", "text"]
  for original in originals:
    again = sources.reopen(original.format, original.path, original.benchmark)
    assert again == original
    assert list(again.instances()) == list(original.instances())


def test_reopen_rejects_bad_requests(tmp_path):
  with pytest.raises(ValueError, match="unknown source format 'csv'"):
    sources.reopen("csv", tmp_path / "x.csv", "t5")
  with pytest.raises(ValueError, match="takes no options"):
    sources.reopen("jsonl", tmp_path / "x.jsonl", "t5", data_dir="/tmp")
  with pytest.raises(ValueError, match="pairs"):
    list(sources.iter_all(jsonl_dirs=[str(tmp_path)]))
