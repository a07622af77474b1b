"""The package works when installed from its wheel, not only from the checkout.

Builds the wheel from a copy of the sources (nothing is written into the checkout), checks that it ships the
gin files and bench definitions and declares the console scripts, installs it into a temporary virtualenv
whose dependencies come from this environment's site-packages (no download), and runs the entry points from
a directory outside the checkout with PYTHONPATH cleared, so only the installed copy can be imported.
"""

from __future__ import annotations

import configparser
import importlib
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "README.md", "optiml_jax", "gin", "tasks")  # what setup.py reads
CONSOLE_SCRIPTS = {
    "optiml-train": "optiml_jax.train:main",
    "optiml-eval": "optiml_jax.eval:main",
    "optiml-answer": "optiml_jax.answer:main",
    "optiml-bench": "optiml_jax.bench:main",
    "optiml-plan": "optiml_jax.plan:main",
    "optiml-convert": "optiml_jax.convert:main",
    "optiml-quickstart": "optiml_jax.quickstart:main",
    "optiml-reproduce": "optiml_jax.reproduce:main",
}
# Entry points that users who only train, evaluate, build the bench or plan run: none may import torch.
NO_TORCH_MODULES = ("optiml_jax.train", "optiml_jax.eval", "optiml_jax.answer", "optiml_jax.bench", "optiml_jax.plan",
                    "optiml_jax.quickstart", "optiml_jax.reproduce", "optiml_jax.convert")
# Five steps of the quickstart configuration: warmup must end before the last step.
FIVE_STEPS = ["--gin.TRAIN_STEPS=5", "--gin.OptimizerArgs.warmup_steps=1"]


def _run(args, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  work = tmp_path_factory.mktemp("wheel")
  src = work / "src"
  src.mkdir()
  for name in SOURCES:
    path = REPO / name
    if path.is_dir():
      shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(path, src / name)
  done = _run([
      sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
      work / "dist", src
  ], cwd=work)
  assert done.returncode == 0, done.stdout + done.stderr
  wheels = list((work / "dist").glob("optiml_jax-*.whl"))
  assert len(wheels) == 1, wheels
  return wheels[0]


def _site_packages() -> list[str]:
  return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh virtualenv holding the wheel; its dependencies are this environment's, through a .pth file."""
  root = tmp_path_factory.mktemp("venv") / "venv"
  done = _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
  assert done.returncode == 0, done.stderr
  python = root / "bin" / "python"
  purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
  # Plain path lines: the .pth files in those folders (this checkout's editable install among them) stay unread.
  (pathlib.Path(purelib.stdout.strip()) / "_optiml_test_deps.pth").write_text("\n".join(_site_packages()) + "\n")
  # --ignore-installed: never uninstall the optiml-jax that this environment already holds.
  done = _run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index", wheel], cwd=root)
  assert done.returncode == 0, done.stdout + done.stderr
  return root


@pytest.fixture
def elsewhere(tmp_path, venv) -> tuple[pathlib.Path, dict[str, str]]:
  """A working directory outside the checkout and an environment where only the installed copy imports."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  return cwd, env


def test_the_wheel_ships_every_gin_file_and_bench_definition(wheel):
  names = set(zipfile.ZipFile(wheel).namelist())
  gin_files = sorted((REPO / "gin").rglob("*.gin"))
  task_files = sorted((REPO / "tasks").glob("*.yaml"))
  assert any(p.parent.name == "models" and p.parent.parent.name == "t5x" for p in gin_files)
  expected = {f"optiml_jax/gin/{p.relative_to(REPO / 'gin').as_posix()}" for p in gin_files}
  expected |= {f"optiml_jax/tasks/{p.name}" for p in task_files}
  expected |= {"optiml_jax/data/tokenizer_opt/vocab.json", "optiml_jax/data/tokenizer_opt/merges.txt"}
  assert not expected - names, f"missing from {wheel.name}: {sorted(expected - names)}"
  assert not any(n.startswith(("gin/", "tasks/", "tests/")) for n in names), "files outside the package"


def test_the_wheel_declares_one_console_script_per_entry_point(wheel):
  with zipfile.ZipFile(wheel) as z:
    text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
  parser = configparser.ConfigParser()
  parser.read_string(text)
  assert {k: v.replace(" ", "") for k, v in parser["console_scripts"].items()} == CONSOLE_SCRIPTS


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_each_console_script_calls_a_main_that_reads_sys_argv_and_returns_the_exit_status(script):
  module, function = CONSOLE_SCRIPTS[script].split(":")
  main = getattr(importlib.import_module(module), function)
  signature = inspect.signature(main)
  assert list(signature.parameters) == ["argv"] and signature.parameters["argv"].default is None
  assert signature.return_annotation in (int, "int")


def test_training_evaluation_the_bench_and_planning_never_import_torch():
  script = ("import sys\n" + "".join(f"import {m}\n" for m in NO_TORCH_MODULES) +
            "print([m for m in sys.modules if m.split('.')[0] == 'torch'])\n")
  done = _run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_the_installed_package_finds_its_shipped_files_from_elsewhere(venv, elsewhere):
  cwd, env = elsewhere
  probe = ("import json, optiml_jax, optiml_jax.resources as r\n"
           "print(json.dumps([optiml_jax.__file__, str(r.gin_dir()), str(r.task_file('toybench.yaml'))]))")
  done = _run([venv / "bin" / "python", "-c", probe], cwd=cwd, env=env)
  assert done.returncode == 0, done.stderr
  package, gin_dir, toybench = json.loads(done.stdout.strip().splitlines()[-1])
  site = pathlib.Path(package).parent.parent
  assert site.is_relative_to(venv) and not pathlib.Path(package).is_relative_to(REPO)
  assert pathlib.Path(gin_dir) == site / "optiml_jax" / "gin" and (pathlib.Path(gin_dir) / "quickstart.gin").is_file()
  assert pathlib.Path(toybench) == site / "optiml_jax" / "tasks" / "toybench.yaml"
  printed = _run([venv / "bin" / "python", "-m", "optiml_jax.resources", "gin"], cwd=cwd, env=env)
  assert printed.returncode == 0 and printed.stdout.strip() == gin_dir, printed.stderr


def test_the_installed_bench_builds_the_toy_catalog_from_elsewhere(venv, elsewhere):
  cwd, env = elsewhere
  done = _run([venv / "bin" / "python", "-m", "optiml_jax.bench", "toy", "--out", "toy", "--catalog", "catalog"],
              cwd=cwd, env=env)
  assert done.returncode == 0, done.stdout + done.stderr
  assert (cwd / "catalog" / "catalog.json").is_file()
  shown = _run([venv / "bin" / "optiml-bench", "show", "catalog"], cwd=cwd, env=env)  # the console script
  assert shown.returncode == 0, shown.stderr
  assert "held_out_category" in shown.stdout and "held-out categories present" in shown.stdout
  # A bench definition by its shipped name, as `--config tasks/optiml_bench.yaml` reads it in a checkout.
  built = _run([
      venv / "bin" / "optiml-bench", "build", "--config", "tasks/toybench.yaml", "--sni_dir", "toy", "--no_progress",
      "--out", "rebuilt"
  ], cwd=cwd, env=env)
  assert built.returncode == 0, built.stdout + built.stderr
  assert (cwd / "rebuilt" / "catalog.json").read_bytes() == (cwd / "catalog" / "catalog.json").read_bytes()


@pytest.mark.slow
def test_the_installed_package_trains_five_steps_from_elsewhere(venv, elsewhere):
  cwd, env = elsewhere
  done = _run([venv / "bin" / "python", "-m", "optiml_jax.bench", "toy", "--out", "toy", "--catalog", "catalog"],
              cwd=cwd, env=env)
  assert done.returncode == 0, done.stdout + done.stderr
  model_dir = cwd / "model"
  done = _run([
      venv / "bin" / "python", "-m", "optiml_jax.train", "--gin_file=quickstart.gin", f"--gin.MODEL_DIR={model_dir}",
      f"--gin.CATALOG_DIR={cwd / 'catalog'}", *FIVE_STEPS
  ], cwd=cwd, env=env, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  last = json.loads((model_dir / "metrics.jsonl").read_text().strip().splitlines()[-1])
  assert last["step"] == 5
  assert not (cwd / "gin").exists() and not (cwd / "quickstart.gin").exists()
