"""Tests for the bench command line (`python -m optiml_jax.bench`), run in subprocesses."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest
import yaml

from optiml_jax import resources
from optiml_jax.data import toybench

REPO = pathlib.Path(__file__).resolve().parents[1]


def bench(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "optiml_jax.bench", *map(str, args)], cwd=cwd, capture_output=True,
                        text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  return toybench.write(tmp_path_factory.mktemp("toy") / "bench")


def test_build_and_show_real_data(shared_dir, tmp_path):
  data = shared_dir / "data"
  out = tmp_path / "catalog"
  result = bench("build", "--config", "tasks/optiml_bench.yaml", "--sni_dir", data / "natural-instructions", "--p3_dir",
                 data / "p3", "--bigbench_dir", data / "bigbench", "--out", out)
  assert result.returncode == 0, result.stderr
  assert "benchmark" in result.stdout and "held_out_category" in result.stdout
  assert "reading tasks" in result.stderr  # the progress bar
  assert "skipped " in result.stderr and "trec" in result.stderr  # empty P3 templates in the sample
  catalog_json = json.loads((out / "catalog.json").read_text(encoding="utf-8"))
  assert {t["benchmark"] for t in catalog_json["tasks"]} == {"sni", "promptsource", "bigbench"}
  assert catalog_json["skipped"] and catalog_json["leakage"]
  assert catalog_json["config"]["name"] == "optiml_bench"
  shown = bench("show", out)
  assert shown.returncode == 0
  table = lambda text: text[:text.index("\nwrote ")] if "\nwrote " in text else text.rstrip("\n")
  assert table(shown.stdout) == table(result.stdout)


def test_strict_bad_file_and_custom_jsonl(toy_dir, tmp_path):
  bad_dir = tmp_path / "sni"
  (bad_dir / "tasks").mkdir(parents=True)
  (bad_dir / "splits").symlink_to(toy_dir / "splits")
  for name in toybench.task_names()[:3] + toybench.task_names()[-5:]:
    (bad_dir / "tasks" / f"{name}.json").write_bytes((toy_dir / "tasks" / f"{name}.json").read_bytes())
  (bad_dir / "tasks" / "task999_broken.json").write_bytes(b'{"Definition": ["x"], "Instances": [\xff\xfe')
  jsonl_dir = tmp_path / "crossfit"
  jsonl_dir.mkdir()
  (jsonl_dir / "copy_of_sni.jsonl").write_text(
      json.dumps({
          "src": "3 + 4",
          "tgt": "7",
          "dataset": "toy_add_small"
      }) + "\n", encoding="utf-8")
  (jsonl_dir / "unique.jsonl").write_text(
      "".join(json.dumps({
          "src": f"q{i}",
          "tgt": f"a{i}"
      }) + "\n" for i in range(10)), encoding="utf-8")
  config = yaml.safe_load(toybench.CONFIG_PATH.read_text(encoding="utf-8"))
  config["benchmarks"]["crossfit"] = {"share": 10}
  config["dedup"]["secondary"] = ["crossfit"]
  config_path = tmp_path / "toy_plus_crossfit.yaml"
  config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
  args = [
      "build", "--config", config_path, "--sni_dir", bad_dir, "--jsonl_dir", f"crossfit={jsonl_dir}", "--no_progress"
  ]

  strict = bench(*args, "--strict", "--out", tmp_path / "strict_out")
  assert strict.returncode == 1
  assert "task999_broken.json" in strict.stderr and "nothing written" in strict.stderr
  assert not (tmp_path / "strict_out").exists()

  lenient = bench(*args, "--out", tmp_path / "out")
  assert lenient.returncode == 0, lenient.stderr
  data = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
  assert [s["path"].endswith("task999_broken.json") for s in data["skipped"]] == [True]
  names = {t["name"] for t in data["tasks"]}
  assert "crossfit:unique" in names and "crossfit:copy_of_sni" not in names
  assert any(d["name"] == "crossfit:copy_of_sni" and "duplicate dataset" in d["reason"] for d in data["dropped"])
  assert len(data["missing_split_tasks"]["train"]) == 25 - 3
  assert "listed task(s) absent from the checkout" in lenient.stdout


@pytest.mark.parametrize("change, flags, message", [
    ({
        "benchmarks": {
            "sni": {
                "share": 100
            },
            "foo": {
                "share": 1
            }
        }
    }, [], "benchmarks.foo: unknown benchmark"),
    ({
        "rates": {
            "method": "magic"
        }
    }, [], "rates.method"),
    ({}, ["--jsonl_dir", "t5=DIR"], "benchmarks.t5: not declared"),
    ({}, ["--p3_dir", "/nonexistent/p3"], "benchmarks.promptsource: not declared"),
])
def test_bad_config_or_flags_exit_2_and_write_nothing(toy_dir, tmp_path, change, flags, message):
  config = yaml.safe_load(toybench.CONFIG_PATH.read_text(encoding="utf-8"))
  config.update(change)
  config_path = tmp_path / "bad.yaml"
  config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
  flags = [f.replace("DIR", str(toy_dir)) for f in flags]
  result = bench("build", "--config", config_path, "--sni_dir", toy_dir, *flags, "--out", tmp_path / "out")
  assert result.returncode == 2
  assert message in result.stderr and str(config_path) in result.stderr
  assert not (tmp_path / "out").exists()


def test_missing_source_folder_and_no_source(tmp_path):
  result = bench("build", "--config", toybench.CONFIG_PATH, "--sni_dir", tmp_path / "nope", "--out", tmp_path / "o")
  assert result.returncode == 2 and "source folder not found" in result.stderr
  result = bench("build", "--config", toybench.CONFIG_PATH, "--out", tmp_path / "o")
  assert result.returncode == 2 and "no source given" in result.stderr
  result = bench("show", tmp_path)
  assert result.returncode == 2 and "no catalog here" in result.stderr


def test_cache_refuses_a_misspelling_of_its_own_option_instead_of_handing_it_to_beam(tmp_path):
  result = bench("cache", tmp_path / "catalog", "--out", tmp_path / "cache", "--tokenizer-dir", tmp_path / "tok")
  assert result.returncode == 2
  assert "unrecognized argument --tokenizer-dir: did you mean --tokenizer_dir?" in result.stderr
  assert not (tmp_path / "cache").exists()


def test_toy_command_writes_bench_and_catalog(tmp_path):
  result = bench("toy", "--out", tmp_path / "toy", "--catalog", tmp_path / "catalog")
  assert result.returncode == 0, result.stderr
  assert len(list((tmp_path / "toy" / "tasks").glob("*.json"))) == len(toybench.TASKS)
  data = json.loads((tmp_path / "catalog" / "catalog.json").read_text(encoding="utf-8"))
  assert {t["role"] for t in data["tasks"]} == {"train", "held_out_task", "held_out_category"}


def test_relative_folders_are_recorded_as_absolute_paths(tmp_path):
  # The catalog is read later from other working directories (the trainer, eval, every pod worker).
  result = bench("toy", "--out", "toy", "--catalog", "catalog", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  data = json.loads((tmp_path / "catalog" / "catalog.json").read_text(encoding="utf-8"))
  assert all(pathlib.Path(t["path"]).is_absolute() for t in data["tasks"])
  assert all(pathlib.Path(t["path"]).is_file() for t in data["tasks"])


def test_an_output_folder_holding_anything_else_is_refused_before_the_sources_are_read(toy_dir, tmp_path):
  """--out is replaced as a whole: a folder of notes, the source checkout itself or a file must survive a typo."""
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "notes.txt").write_text("important")
  args = ["build", "--config", toybench.CONFIG_PATH, "--sni_dir", toy_dir, "--no_progress", "--out"]
  for out, message in ((notes, "holds files that are not a catalog's (notes.txt)"),
                       (toy_dir, "holds files that are not a catalog's (splits, tasks)"),
                       (notes / "notes.txt", "is a file"), (notes / "notes.txt" / "catalog",
                                                            "is a file, not a folder")):
    result = bench(*args, out)
    assert result.returncode == 2 and f"error: --out: {out}" in result.stderr and message in result.stderr, out
    assert "reading tasks" not in result.stderr and "skipped" not in result.stderr  # refused before reading
  assert (notes / "notes.txt").read_text() == "important" and (toy_dir / "tasks").is_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
  # An earlier catalog is replaced, and the files are readable by others as the umask says (a shared bench).
  for _ in range(2):
    result = subprocess.run([sys.executable, "-m", "optiml_jax.bench", *map(str, args), tmp_path / "catalog"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False,
                            preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
  assert stat.S_IMODE((tmp_path / "catalog").stat().st_mode) == 0o755
  assert stat.S_IMODE((tmp_path / "catalog" / "catalog.json").stat().st_mode) == 0o644


def test_toy_refuses_an_output_that_is_not_a_toy_bench_and_its_catalog_in_the_same_folder(tmp_path):
  result = bench("toy", "--out", tmp_path / "t", "--catalog", tmp_path / "t")
  assert result.returncode == 2 and "--catalog and --out are the same folder" in result.stderr
  assert not (tmp_path / "t").exists()
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "data.jsonl").write_text("{}")
  result = bench("toy", "--out", tmp_path / "mine")
  assert result.returncode == 2 and "holds files that are not the toy bench's (data.jsonl)" in result.stderr
  result = bench("toy", "--out", tmp_path / "mine" / "data.jsonl" / "toy")
  assert result.returncode == 2 and "data.jsonl is a file, not a folder" in result.stderr
  assert [p.name for p in (tmp_path / "mine").iterdir()] == ["data.jsonl"]
  for _ in range(2):  # an earlier toy bench and its catalog are replaced (make quickstart run twice)
    result = bench("toy", "--out", tmp_path / "toy", "--catalog", tmp_path / "catalog")
    assert result.returncode == 0, result.stderr
  assert len(list((tmp_path / "toy" / "tasks").glob("*.json"))) == len(toybench.TASKS)


def test_a_source_folder_with_no_task_in_it_is_an_error(toy_dir, tmp_path):
  empty = tmp_path / "crossfit"
  empty.mkdir()
  config = yaml.safe_load(toybench.CONFIG_PATH.read_text(encoding="utf-8"))
  config["benchmarks"]["crossfit"] = {"share": 10}
  config_path = tmp_path / "with_crossfit.yaml"
  config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
  result = bench("build", "--config", config_path, "--sni_dir", toy_dir, "--jsonl_dir", f"crossfit={empty}",
                 "--no_progress", "--out", tmp_path / "out")
  assert result.returncode == 2, result.stderr
  assert f"no task found in --jsonl_dir crossfit={empty}" in result.stderr and "--sni_dir" not in result.stderr
  assert not (tmp_path / "out").exists()


def test_a_config_that_trains_on_the_sni_train_split_needs_the_split(toy_dir, tmp_path):
  config_path = tmp_path / "split_only.yaml"
  config_path.write_text(
      yaml.safe_dump({
          "extends": str(toybench.CONFIG_PATH),
          "held_out": {
              "sni_test_split": False,
              "sni_train": "split"
          }
      }), encoding="utf-8")
  result = bench("build", "--config", config_path, "--sni_dir", toy_dir, "--sni_split", "defualt", "--no_progress",
                 "--out", tmp_path / "out")
  assert result.returncode == 2 and "SNI split folder not found" in result.stderr
  assert "needs SNI's split (held_out.sni_train: split)" in result.stderr and not (tmp_path / "out").exists()


def test_show_into_a_reader_that_stops_early_is_no_error(tmp_path):
  assert bench("toy", "--out", tmp_path / "toy", "--catalog", tmp_path / "catalog").returncode == 0
  shown = subprocess.Popen([sys.executable, "-m", "optiml_jax.bench", "show",
                            str(tmp_path / "catalog"), "--tasks"], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
  shown.stdout.close()  # `| head -0`: the reader is gone before the first line
  _, stderr = shown.communicate(timeout=120)
  assert shown.returncode == 0 and not stderr, stderr.decode()


# ---------------------------------------------------------------------------------------------------------------
# FLAN and T5 from TFDS, promptsource's original-task metadata, dataset aliases.

_FLAN_PY = '''"""Templates for FLAN."""

PATTERNS = {
    "rte": [
        ("{premise}\\n\\nCan we infer the following?\\n{hypothesis}\\n\\n{options_}", "{answer}"),
        ("Generate a context and a hypothesis.", "Context: {premise}\\n\\nHypothesis: {hypothesis}"),
    ],
}
'''


def test_build_flan_and_t5_from_tfds(tmp_path, monkeypatch, capsys):
  tfds = pytest.importorskip("tensorflow_datasets")
  from optiml_jax import bench as bench_cli  # pylint: disable=g-import-not-at-top
  from optiml_jax.data.sources import tfds as tfds_source  # pylint: disable=g-import-not-at-top
  # Mock data stands in for prepared datasets (it serves examples without files in the data folder).
  monkeypatch.setattr(tfds_source, "is_prepared", lambda *args, **kwargs: True)
  flan_file = tmp_path / "templates.py"
  flan_file.write_text(_FLAN_PY, encoding="utf-8")
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  args = ["build", "--config", "tasks/optiml_bench.yaml", "--tfds_data_dir", data_dir, "--no_progress"]
  with tfds.testing.mock_data(num_examples=30, max_value=2, policy=tfds.testing.MockPolicy.USE_CODE):
    code = bench_cli.main([
        *map(str, args), "--tfds_datasets", "glue/rte,super_glue/boolq,glue/cola,cnn_dailymail", "--flan_dir",
        str(flan_file), "--out",
        str(tmp_path / "out")
    ])
  out = capsys.readouterr()
  assert code == 0, out.err
  assert f"FLAN templates: 2 from {flan_file}" in out.err
  data = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
  tasks = {t["name"]: t for t in data["tasks"]}
  # FLAN's RTE template (Textual Entailment: held out), our BoolQ templates (no bool_q entry in the file),
  # T5's CoLA; T5's CNN/DM is FLAN's dataset too, so the secondary copy is dropped.
  assert tasks["flan:glue_rte_flan_template_0"]["role"] == "held_out_category"
  assert {t["role"] for n, t in tasks.items() if n.startswith("flan:super_glue_boolq_template_")} == {"train"}
  assert tasks["t5:glue_cola"]["role"] == "train" and tasks["t5:glue_cola"]["rate"] > 0
  assert "t5:cnn_dailymail" not in tasks
  reasons = {d["name"]: d["reason"] for d in data["dropped"]}
  assert reasons["t5:cnn_dailymail"].startswith("duplicate dataset: 'cnn_dailymail' is also in flan")
  # FLAN's inverted RTE template would be evaluated on: the paper removed such templates from evaluation.
  assert reasons["flan:glue_rte_flan_template_1"].startswith("not the original task")
  assert sum(t["rate"] for t in tasks.values() if t["benchmark"] == "flan") > 0.8  # FLAN 20 against T5 2
  assert tasks["flan:glue_rte_flan_template_0"]["path"].endswith(f"|data_dir={data_dir}|flan={flan_file}|max=30100")

  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    code = bench_cli.main([*map(str, args), "--tfds_datasets", "glue/nope", "--out", str(tmp_path / "o2")])
  assert code == 2 and "--tfds_datasets: no FLAN/T5 dataset 'glue/nope'" in capsys.readouterr().err
  code = bench_cli.main([*map(str, args), "--flan_dir", str(tmp_path / "no_flan"), "--out", str(tmp_path / "o3")])
  assert code == 2 and "FLAN templates not found" in capsys.readouterr().err
  assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_toybench_has_no_tfds_benchmark(toy_dir, tmp_path):
  result = bench("build", "--config", toybench.CONFIG_PATH, "--sni_dir", toy_dir, "--tfds_data_dir", tmp_path, "--out",
                 tmp_path / "o")
  assert result.returncode == 2 and "declares neither flan nor t5" in result.stderr


def _promptsource_checkout(root):
  """promptsource/templates/glue/mrpc/templates.yaml as promptsource writes it (two of its templates)."""
  folder = root / "promptsource" / "templates" / "glue" / "mrpc"
  folder.mkdir(parents=True)
  entries = []
  for uid, name, original in [("a1", "paraphrase", "true"), ("b2", "generate_paraphrase", "false")]:
    entries.append(f"""  {uid}: !Template
    answer_choices: no ||| yes
    id: {uid}
    jinja: '{{{{sentence1}}}} ||| {{{{sentence2}}}}'
    metadata: !TemplateMetadata
      choices_in_prompt: false
      languages:
      - en
      metrics:
      - BLEU
      original_task: {original}
    name: {name}
    reference: ''
""")
  (folder / "templates.yaml").write_text("dataset: glue\nsubset: mrpc\ntemplates:\n" + "".join(entries),
                                         encoding="utf-8")
  return root


def test_promptsource_dir_drops_inverted_templates_from_evaluation(shared_dir, tmp_path):
  checkout = _promptsource_checkout(tmp_path / "promptsource_checkout")
  # reproduce_small.yaml holds Paraphrasing out, so P3's glue/mrpc templates are evaluation tasks.
  args = ["build", "--config", "reproduce_small.yaml", "--p3_dir", shared_dir / "data" / "p3", "--no_progress"]
  result = bench(*args, "--promptsource_dir", checkout, "--out", tmp_path / "out")
  assert result.returncode == 0, result.stderr
  assert "promptsource metadata: 1 templates.yaml file(s)" in result.stderr
  assert "1 not the original task" in result.stderr
  data = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
  roles = {t["name"]: t["role"] for t in data["tasks"]}
  assert roles["promptsource:glue_mrpc_paraphrase"] == "held_out_category"
  assert "promptsource:glue_mrpc_generate_paraphrase" not in roles
  assert any(d["name"] == "promptsource:glue_mrpc_generate_paraphrase" and "not the original task" in d["reason"]
             for d in data["dropped"])
  # Without it (P3's exported files do not carry the metadata) the inverted template is evaluated on.
  plain = bench(*args, "--out", tmp_path / "plain")
  assert plain.returncode == 0, plain.stderr
  plain_roles = {t["name"]: t["role"] for t in json.loads((tmp_path / "plain" / "catalog.json").read_text())["tasks"]}
  assert plain_roles["promptsource:glue_mrpc_generate_paraphrase"] == "held_out_category"
  no_p3 = bench("build", "--config", "reproduce_small.yaml", "--sni_dir", shared_dir / "data" / "natural-instructions",
                "--promptsource_dir", checkout, "--out", tmp_path / "o")
  assert no_p3.returncode == 2 and "--promptsource_dir marks P3 templates: it needs --p3_dir" in no_p3.stderr


def test_aliases_on_real_sni_data(shared_dir, tmp_path):
  # CrossFit spells Winogrande "wino_grande": it is SNI's task033 dataset, so the secondary copy is dropped.
  # A UnifiedSKG-style folder offers GAP under another spelling: SNI's task891 makes it Coreference
  # Resolution (held out), so once the alias says they are the same, training on it is an error.
  crossfit, skg = tmp_path / "crossfit", tmp_path / "unifiedskg"
  for folder, stem, dataset in [(crossfit, "wino_grande", "wino_grande"), (skg, "gap_pronouns", "gap-pronouns")]:
    folder.mkdir()
    (folder / f"{stem}.jsonl").write_text(
        "".join(json.dumps({
            "src": f"q{i}",
            "tgt": f"a{i}",
            "dataset": dataset
        }) + "\n" for i in range(50)), encoding="utf-8")
  sni_tasks = tmp_path / "sni" / "tasks"
  sni_tasks.mkdir(parents=True)
  (tmp_path / "sni" / "splits").symlink_to(shared_dir / "data" / "natural-instructions" / "splits")
  for name in ("task033_winogrande_answer_generation", "task891_gap_coreference_resolution",
               "task003_mctaco_question_generation_event_duration"):
    (sni_tasks / f"{name}.json").symlink_to(shared_dir / "data" / "natural-instructions" / "tasks" / f"{name}.json")
  config = tmp_path / "bench.yaml"
  config.write_text(f"extends: {resources.find_task_file('optiml_bench.yaml')}\naliases:\n  gap: [gap-pronouns]\n",
                    encoding="utf-8")
  args = [
      "build", "--config", config, "--sni_dir", tmp_path / "sni", "--jsonl_dir", f"crossfit={crossfit}", "--jsonl_dir",
      f"unifiedskg={skg}", "--no_progress"
  ]
  result = bench(*args, "--out", tmp_path / "out")
  assert result.returncode == 2, result.stdout
  for part in ("unifiedskg:gap_pronouns", "'gap-pronouns'", "'Coreference Resolution'",
               "sni:task891_gap_coreference_resolution"):
    assert part in result.stderr, part
  assert not (tmp_path / "out").exists()
  config.write_text(config.read_text() + "held_out:\n  unmapped_policy: hold_out\n", encoding="utf-8")
  result = bench(*args, "--out", tmp_path / "out")
  assert result.returncode == 0, result.stderr
  data = json.loads((tmp_path / "out" / "catalog.json").read_text(encoding="utf-8"))
  tasks = {t["name"]: t for t in data["tasks"]}
  assert (tasks["unifiedskg:gap_pronouns"]["role"],
          tasks["unifiedskg:gap_pronouns"]["category"]) == ("held_out_category", "Coreference Resolution")
  assert "crossfit:wino_grande" not in tasks and not data["skipped"]
  assert any(d["name"] == "crossfit:wino_grande" and d["reason"] == "duplicate dataset: 'wino_grande' is also in sni"
             for d in data["dropped"])
