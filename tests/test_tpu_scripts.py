"""Tests of tpu_scripts/: the gcloud commands each script prints, its refusals, and a fake two-worker pod.

The scripts are bash, run here in a subprocess with a fake `gcloud` first on PATH (the real one is not
needed). With --dry_run the fake must never be called. For the end-to-end test the fake plays a slice of two
workers: `ssh --worker=all` runs the remote command with `sh -c` in each worker's folder (its HOME) and
`scp --worker=all` copies into each; a fake `python3.11` plays the interpreter, venv, pip and the trainer
(it records its arguments and waits for SIGTERM, like `optiml_jax.train`).
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "tpu_scripts"
NAME, ZONE = "optiml-175b", "us-central2-b"
SLICE = [f"--name={NAME}", f"--zone={ZONE}"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}"]

FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
pod = os.environ.get("FAKE_POD")
if pod and args[:3] == ["compute", "tpus", "tpu-vm"] and args[3] in ("ssh", "scp"):
  worker = next(a.split("=", 1)[1] for a in args if a.startswith("--worker="))
  workers = sorted(d for d in os.listdir(pod) if d.startswith("worker-")) if worker == "all" else ["worker-" + worker]
  failed = False
  for w in workers:
    home = os.path.join(pod, w)
    if args[3] == "ssh":
      command = args[args.index("--command") + 1]
      failed |= subprocess.run(["sh", "-c", command], cwd=home, env=dict(os.environ, HOME=home)).returncode != 0
    else:
      shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
  sys.exit(1 if failed else 0)
"""

FAKE_PYTHON = """#!{python}
import json, os, shutil, signal, sys, time
args = sys.argv[1:]
with open(os.path.join(os.environ["HOME"], "python_calls.jsonl"), "a") as f:
  f.write(json.dumps({{"exe": sys.argv[0], "args": args, "cwd": os.getcwd(), "pid": os.getpid(),
                      "unbuffered": os.environ.get("PYTHONUNBUFFERED"), "extra": os.environ.get("EXTRA")}}) + "\\n")
if args[:2] == ["-m", "venv"]:
  os.makedirs(os.path.join(args[2], "bin"))
  shutil.copy(__file__, os.path.join(args[2], "bin", "python"))
elif args[:2] == ["-m", "pip"]:
  pass
elif args[:1] == ["-c"]:
  print("0.0-fake")
elif args[:2] == ["-m", "optiml_jax.train"]:
  print("fake trainer: started", flush=True)
  for a in args:
    if a.startswith("--gin.FAKE_EXIT="):
      print("fake trainer: exit " + a.split("=", 1)[1], flush=True)
      sys.exit(int(a.split("=", 1)[1]))
  stop = []
  signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
  deadline = time.time() + 60
  while not stop and time.time() < deadline:
    time.sleep(0.05)
  print("fake trainer: SIGTERM, checkpointed" if stop else "fake trainer: timed out", flush=True)
else:
  sys.exit("fake python: unexpected arguments %r" % args)
"""


@pytest.fixture()
def env(tmp_path) -> dict[str, str]:
  """An environment with the fake gcloud and python3.11 first on PATH and no TPU_* variables."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("gcloud", FAKE_GCLOUD), ("python3.11", FAKE_PYTHON)):
    (bin_dir / name).write_text(text.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  (tmp_path / "tmp").mkdir()
  (tmp_path / "home").mkdir()
  keep = {k: v for k, v in os.environ.items() if not k.startswith("TPU_") and k not in ("FAKE_POD", "DRY_RUN")}
  return dict(keep, PATH=f"{bin_dir}:{os.environ['PATH']}", HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"),
              FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.jsonl"))


def run(script: str, *args: str, env: dict[str, str], scripts: pathlib.Path = SCRIPTS) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(scripts / script), *args], env=env, capture_output=True, text=True, timeout=60,
                        check=False)


def commands(result: subprocess.CompletedProcess) -> list[str]:
  """The commands a script printed (its `+ ...` lines), as printed."""
  return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def worker_output(result: subprocess.CompletedProcess) -> str:
  """What the workers printed: stdout less the script's own `+ ` and `# ` lines."""
  return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(("+ ", "# ")))


def gcloud_calls(env: dict[str, str]) -> list[list[str]]:
  path = pathlib.Path(env["FAKE_GCLOUD_LOG"])
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
  return result


def test_create_dry_run_prints_the_gcloud_command_and_runs_nothing(env):
  result = ok(run("create.sh", *SLICE, "--project=my-proj", "--accelerator_type=v4-512", "--spot", "--dry_run",
                  env=env))
  assert commands(result) == [
      "gcloud compute tpus tpu-vm create optiml-175b --zone=us-central2-b --project=my-proj "
      "--accelerator-type=v4-512 --version=tpu-ubuntu2204-base --spot"
  ]
  assert gcloud_calls(env) == []


@pytest.mark.parametrize("accelerator, runtime", [("v3-32", "tpu-ubuntu2204-base"), ("v5p-512", "v2-alpha-tpuv5"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                  ("v6e-256", "v2-alpha-tpuv6e")])
def test_create_picks_the_runtime_of_the_generation(env, accelerator, runtime):
  result = ok(run("create.sh", *SLICE, f"--accelerator_type={accelerator}", "--dry_run", env=env))
  assert commands(result) == [
      f"gcloud compute tpus tpu-vm create optiml-175b --zone=us-central2-b "
      f"--accelerator-type={accelerator} --version={runtime}"
  ]


def test_create_reads_the_environment_and_passes_extra_flags(env):
  env = dict(env, TPU_NAME="pod-a", TPU_ZONE="us-east5-a", TPU_PROJECT="p1", TPU_ACCELERATOR_TYPE="v5p-128")
  result = ok(
      run("create.sh", "--version", "v2-alpha-tpuv5-custom", "--preemptible", "--dry_run", "--", "--network=my net",
          "--data-disk=source=d,mode=read-only", env=env))
  assert commands(result) == [
      "gcloud compute tpus tpu-vm create pod-a --zone=us-east5-a --project=p1 --accelerator-type=v5p-128 "
      "--version=v2-alpha-tpuv5-custom --preemptible '--network=my net' --data-disk=source=d,mode=read-only"
  ]


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", [f"--zone={ZONE}", "--accelerator_type=v4-512"], "no TPU name: pass --name=NAME"),
    ("create.sh", [f"--name={NAME}", "--accelerator_type=v4-512"], "no zone: pass --zone=ZONE"),
    ("create.sh", SLICE, "no accelerator type: pass --accelerator_type=TYPE"),
    ("create.sh", [*SLICE, "--accelerator_type=v9x-8"], "no default TPU software version for v9x-8"),
    ("create.sh", [*SLICE, "--accelerator_type=512"], "expected GENERATION-SIZE"),
    ("create.sh", [*SLICE, "--accelerator_type=v4-8", "--spot", "--preemptible"], "exclude each other"),
    ("create.sh", ["--name=My_Pod", f"--zone={ZONE}", "--accelerator_type=v4-8"], "--name=My_Pod: expected"),
    ("create.sh", ["--name", "--zone", ZONE], "--name needs a value"),
    ("install.sh", [f"--zone={ZONE}"], "no TPU name"),
    ("install.sh", [*SLICE, "--ref=no-such-ref"], "--ref=no-such-ref: not a commit"),
    ("install.sh", [*SLICE, "--python=python 3"], "--python=python 3: expected"),
    ("launch.sh", [f"--name={NAME}", "--gin_file=gin/optiml_175b.gin"], "no zone"),
    ("launch.sh", [*SLICE, "--gin.MODEL_DIR=gs://b/r"], "no --gin_file"),
    ("launch.sh", [*SLICE, "--gin_file=g.gin", "--gin.MODEL_DIR", "gs://b"], "write gin bindings as --gin.KEY=VALUE"),
    ("launch.sh", [*SLICE, "--gin_file=g.gin", "--env=1X=2"], "--env=1X=2: expected NAME=VALUE"),
    ("launch.sh", [*SLICE, "--gin_file=g.gin", "--model_dir=gs://b"
                  ], "unknown option '--model_dir'; other flags of the trainer go after --"),
    ("logs.sh", [*SLICE, "--worker=two"], "--worker=two: expected 'all' or a worker index"),
    ("logs.sh", [f"--name={NAME}"], "no zone"),
    ("stop.sh", [f"--zone={ZONE}"], "no TPU name"),
    ("stop.sh", [*SLICE, "--yes"], "--yes and --skip_stop go with --delete"),
    ("ssh.sh", SLICE, "no command: pass it after --"),
])
def test_scripts_refuse_bad_or_missing_flags(env, script, args, message):
  result = run(script, *args, "--dry_run", env=env)
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr
  assert result.stderr.startswith(f"{script}: error: ")
  assert commands(result) == []
  assert gcloud_calls(env) == []


@pytest.mark.parametrize("script", ["create.sh", "install.sh", "launch.sh", "logs.sh", "stop.sh", "ssh.sh"])
def test_help(env, script):
  result = ok(run(script, "--help", env=env))
  assert result.stdout.startswith(f"Usage: {script} --name=NAME --zone=ZONE")
  assert "--dry_run" in result.stdout and "TPU_ZONE" in result.stdout
  assert gcloud_calls(env) == []


def test_install_dry_run_ships_a_git_archive_to_every_worker(env):
  result = ok(run("install.sh", *SLICE, "--dry_run", env=env))
  tarball = f"{env['TMPDIR']}/optiml-jax-{NAME}.tar.gz"
  printed = commands(result)
  assert printed[:3] == [
      f"git -C {REPO_ROOT} archive --format=tar.gz --output={tarball} HEAD",
      f"gcloud compute tpus tpu-vm scp {tarball} optiml-175b:optiml-jax-src.tar.gz --zone=us-central2-b --worker=all",
      f"rm -f {tarball}"
  ]
  assert len(printed) == 4
  argv = shlex.split(printed[3])
  assert argv[:-1] == [*SSH, "--worker=all", "--command"]
  remote = argv[-1]
  assert remote.startswith("set -e; mkdir -p optiml-jax; find optiml-jax -mindepth 1 -maxdepth 1 ! -name .venv "
                           "! -name logs -exec rm -rf {} +; tar -xzf optiml-jax-src.tar.gz -C optiml-jax; ")
  assert "[ -x .venv/bin/python ] || python3.11 -m venv .venv;" in remote
  assert ".venv/bin/python -m pip install -q -e . 'jax[tpu]';" in remote
  assert not os.listdir(env["TMPDIR"])  # nothing was archived
  assert gcloud_calls(env) == []


def test_install_dry_run_with_a_git_url_fetches_on_every_worker(env):
  result = ok(
      run("install.sh", *SLICE, "--git_url=https://example.com/o/optiml-jax.git", "--ref=v1.0",
          "--python=/opt/py/bin/python3", "--remote_dir=~/runs/code", "--dry_run", env=env))
  [printed] = commands(result)
  argv = shlex.split(printed)
  assert argv[:-1] == [*SSH, "--worker=all", "--command"]
  assert argv[-1].startswith(
      "set -e; mkdir -p runs/code; cd runs/code; [ -d .git ] || git init -q; "
      "git fetch -q --depth=1 https://example.com/o/optiml-jax.git v1.0; git checkout -q --force --detach FETCH_HEAD; "
      "command -v /opt/py/bin/python3 >/dev/null 2>&1 || "
      "{ echo \"$(hostname): no /opt/py/bin/python3\" >&2; exit 1; }; "
      "[ -x .venv/bin/python ] || /opt/py/bin/python3 -m venv .venv;")


TRAIN_FLAGS = [
    "--gin_file", "gin/optiml_175b.gin", "--gin.MODEL_DIR=gs://my-bucket/optiml-175b",
    "--gin.CATALOG_DIR=/data/optiml_bench", "--gin.MIXTURE_OR_TASK_NAME='my mix'",
    "--gin_bindings=train.run_name = \"it's $HOME\""
]
EXPECTED_TRAIN_ARGS = [
    "--gin_file=gin/optiml_175b.gin", "--gin.MODEL_DIR=gs://my-bucket/optiml-175b",
    "--gin.CATALOG_DIR=/data/optiml_bench", "--gin.MIXTURE_OR_TASK_NAME='my mix'",
    "--gin_bindings=train.run_name = \"it's $HOME\"", "--gin.SEED=1", "--multihost"
]


def remote_train_args(remote: str) -> list[str]:
  """The trainer's flags in launch.sh's remote script: the words of its `set -- ...;`."""
  start = remote.index("; set -- ") + len("; set -- ")
  return shlex.split(remote[start:remote.index("; echo \"=== ", start)])


def test_launch_dry_run_runs_the_same_command_on_every_worker_with_quoting_kept(env):
  result = ok(run("launch.sh", *SLICE, *TRAIN_FLAGS, "--dry_run", "--", "--gin.SEED=1", env=env))
  [printed] = commands(result)
  argv = shlex.split(printed)
  assert argv[:-1] == [*SSH, "--worker=all", "--command"]
  remote = argv[-1]
  assert remote_train_args(remote) == EXPECTED_TRAIN_ARGS
  assert ("setsid nohup env PYTHONUNBUFFERED=1 .venv/bin/python -m optiml_jax.train \"$@\" >> logs/train.log 2>&1 "
          "< /dev/null & echo $! > logs/train.pid; sleep 30; if ! running;") in remote
  assert remote.startswith("{ cd optiml-jax 2>/dev/null && [ -x .venv/bin/python ]; } || { echo \"$(hostname): no "
                           "~/optiml-jax/.venv/bin/python: run tpu_scripts/install.sh first\" >&2; exit 1; }; "
                           "mkdir -p logs; running() {")
  notes = [line for line in result.stdout.splitlines() if line.startswith("# launch ")]
  assert notes == [
      "# launch on every worker of optiml-175b, in ~/optiml-jax: .venv/bin/python -m optiml_jax.train "
      "--gin_file=gin/optiml_175b.gin --gin.MODEL_DIR=gs://my-bucket/optiml-175b "
      "--gin.CATALOG_DIR=/data/optiml_bench '--gin.MIXTURE_OR_TASK_NAME='\\''my mix'\\''' "
      "'--gin_bindings=train.run_name = \"it'\\''s $HOME\"' --gin.SEED=1 --multihost"
  ]
  assert gcloud_calls(env) == []


def test_launch_keeps_a_given_multihost_flag_and_sets_env(env):
  result = ok(
      run("launch.sh", *SLICE, "--project=p", "--internal_ip", "--gin_file=a.gin", "--env=EXTRA=x y",
          "--check_seconds=0", "--remote_dir=/opt/optiml", "--dry_run", "--", "--multihost", env=env))
  argv = shlex.split(commands(result)[0])
  assert argv[:-1] == [*SSH, "--project=p", "--worker=all", "--internal-ip", "--command"]
  assert remote_train_args(argv[-1]) == ["--gin_file=a.gin", "--multihost"]
  assert argv[-1].startswith("{ cd /opt/optiml 2>/dev/null && [ -x .venv/bin/python ]; }")
  assert "env PYTHONUNBUFFERED=1 'EXTRA=x y' .venv/bin/python" in argv[-1]
  assert "sleep" not in argv[-1]


def test_logs_dry_run(env):
  one = ok(run("logs.sh", *SLICE, "--worker=3", "--lines", "10", "--no_follow", "--dry_run", env=env))
  assert commands(one) == [f"{shlex.join(SSH)} --worker=3 --command 'cd optiml-jax && tail -n 10 logs/train.log'"]
  every = ok(run("logs.sh", *SLICE, "--worker=all", "--dry_run", env=env))
  assert commands(every) == [
      f"{shlex.join(SSH)} --worker=all --command 'cd optiml-jax && tail -n 50 -F "
      "logs/train.log | sed -u \"s/^/$(hostname): /\"'"
  ]
  assert gcloud_calls(env) == []


def test_stop_dry_run_stops_every_worker_then_deletes(env):
  result = ok(run("stop.sh", *SLICE, "--wait=120", "--delete", "--dry_run", env=env))
  printed = commands(result)
  assert len(printed) == 2
  argv = shlex.split(printed[0])
  assert argv[:-1] == [*SSH, "--worker=all", "--command"]
  assert "kill -TERM \"$pid\"" in argv[-1] and "[ \"$i\" -lt 120 ]" in argv[-1]
  assert printed[1] == "gcloud compute tpus tpu-vm delete optiml-175b --zone=us-central2-b"
  only_delete = ok(run("stop.sh", *SLICE, "--delete", "--yes", "--skip_stop", "--dry_run", env=env))
  assert commands(only_delete) == ["gcloud compute tpus tpu-vm delete optiml-175b --zone=us-central2-b --quiet"]
  assert gcloud_calls(env) == []


def test_ssh_dry_run_keeps_the_command_text(env):
  result = ok(run("ssh.sh", *SLICE, "--dry_run", "--", "mkdir -p ~/data &&", "echo \"a b\" 'c'", env=env))
  assert commands(result) == [f"{shlex.join(SSH)} --worker=all --command 'mkdir -p ~/data && echo \"a b\" '\\''c'\\'''"]


def _trainer_pids(worker: pathlib.Path) -> list[int]:
  calls = worker / "python_calls.jsonl"
  if not calls.exists():
    return []
  records = [json.loads(line) for line in calls.read_text().splitlines()]
  return [r["pid"] for r in records if r["args"][:2] == ["-m", "optiml_jax.train"]]


def _alive(pid: int) -> bool:
  try:
    return "optiml_jax.train" in pathlib.Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
  except OSError:
    return False


@pytest.fixture()
def pod(env, tmp_path):
  """A fake slice of two workers, and a small git checkout holding a copy of tpu_scripts/ (so that what
  install.sh ships does not depend on what this repository has committed). Yields (env, workers, scripts);
  afterwards kills, by pid, any fake trainer that a failing test left running."""
  workers = [tmp_path / "pod" / f"worker-{i}" for i in range(2)]
  for w in workers:
    w.mkdir(parents=True)
  repo = tmp_path / "repo"
  shutil.copytree(SCRIPTS, repo / "tpu_scripts")
  (repo / "gin").mkdir()
  (repo / "gin" / "optiml_175b.gin").write_text("TRAIN_STEPS = 8000\n")
  (repo / "setup.py").write_text("import setuptools\nsetuptools.setup(name='optiml-jax')\n")
  git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com"]
  for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "fixture"]):
    subprocess.run(git + command, env=env, check=True, capture_output=True)
  yield dict(env, FAKE_POD=str(tmp_path / "pod")), workers, repo / "tpu_scripts"
  for w in workers:
    for pid in _trainer_pids(w):
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def _assert_ran_what_it_printed(result, env, calls_before: int) -> None:
  printed = [shlex.split(c)[1:] for c in commands(result) if c.startswith("gcloud ")]
  assert gcloud_calls(env)[calls_before:] == printed


def test_fake_pod_install_launch_logs_stop(pod):
  env, workers, scripts = pod
  # install: the archive lands and unpacks on both workers, the venv and the package get installed.
  result = ok(run("install.sh", *SLICE, env=env, scripts=scripts))
  _assert_ran_what_it_printed(result, env, 0)
  assert not os.listdir(env["TMPDIR"])
  for w in workers:
    assert (w / "optiml-jax" / "setup.py").is_file() and (w / "optiml-jax" / "gin" / "optiml_175b.gin").is_file()
    assert not (w / "optiml-jax-src.tar.gz").exists()
    calls = [json.loads(line)["args"] for line in (w / "python_calls.jsonl").read_text().splitlines()]
    assert ["-m", "venv", ".venv"] in calls and ["-m", "pip", "install", "-q", "-e", ".", "jax[tpu]"] in calls
  assert worker_output(result).count("optiml-jax installed in ~/optiml-jax, jax 0.0-fake") == 2

  # launch: the same flags reach the trainer on both workers, word for word.
  calls = len(gcloud_calls(env))
  result = ok(
      run("launch.sh", *SLICE, *TRAIN_FLAGS, "--check_seconds=1", "--env=EXTRA=x y", "--", "--gin.SEED=1", env=env,
          scripts=scripts))
  _assert_ran_what_it_printed(result, env, calls)
  for w in workers:
    records = [json.loads(line) for line in (w / "python_calls.jsonl").read_text().splitlines()]
    [train] = [r for r in records if r["args"][:2] == ["-m", "optiml_jax.train"]]
    assert train["args"][2:] == EXPECTED_TRAIN_ARGS
    assert train["cwd"] == str(w / "optiml-jax") and train["exe"] == ".venv/bin/python"
    assert train["unbuffered"] == "1" and train["extra"] == "x y"
    assert _alive(train["pid"])
    assert (w / "optiml-jax" / "logs" / "train.pid").read_text().strip() == str(train["pid"])
  assert worker_output(result).count("training, pid ") == 2

  # a second launch is refused while the trainers run.
  again = run("launch.sh", *SLICE, "--gin_file=gin/optiml_175b.gin", "--check_seconds=0", env=env, scripts=scripts)
  assert again.returncode == 1
  assert "a trainer launched here still runs" in again.stderr and "tpu_scripts/stop.sh" in again.stderr

  logs = ok(run("logs.sh", *SLICE, "--worker=all", "--no_follow", env=env, scripts=scripts))
  assert worker_output(logs).count(": fake trainer: started") == 2

  # stop: SIGTERM, the trainers exit, the pid files go.
  result = ok(run("stop.sh", *SLICE, "--wait=20", env=env, scripts=scripts))
  assert worker_output(result).count(": stopped") == 2
  for w in workers:
    [pid] = _trainer_pids(w)
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
      time.sleep(0.05)
    assert not _alive(pid)
    assert not (w / "optiml-jax" / "logs" / "train.pid").exists()
    assert "fake trainer: SIGTERM, checkpointed" in (w / "optiml-jax" / "logs" / "train.log").read_text()

  # reinstall: stale files go, the venv and logs stay.
  (workers[0] / "optiml-jax" / "stale.py").write_text("")
  ok(run("install.sh", *SLICE, env=env, scripts=scripts))
  assert not (workers[0] / "optiml-jax" / "stale.py").exists()
  assert (workers[0] / "optiml-jax" / "logs" / "train.log").is_file()
  venvs = [line for line in (workers[0] / "python_calls.jsonl").read_text().splitlines() if '"venv"' in line]
  assert len(venvs) == 1

  result = ok(run("stop.sh", *SLICE, "--delete", "--yes", env=env, scripts=scripts))
  assert worker_output(result).count(": no trainer running") == 2
  assert gcloud_calls(env)[-1] == ["compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet"]


def test_fake_pod_launch_fails_when_the_trainer_exits_at_once(pod):
  env, _, scripts = pod
  before = run("launch.sh", *SLICE, "--gin_file=gin/optiml_175b.gin", env=env, scripts=scripts)
  assert before.returncode == 1
  assert before.stderr.count("no ~/optiml-jax/.venv/bin/python: run tpu_scripts/install.sh first") == 2
  ok(run("install.sh", *SLICE, env=env, scripts=scripts))
  result = run("launch.sh", *SLICE, "--gin_file=gin/optiml_175b.gin", "--gin.FAKE_EXIT=2", "--check_seconds=1", env=env,
               scripts=scripts)
  assert result.returncode == 1
  assert result.stderr.count("the trainer exited within 1 s") == 2
  assert result.stderr.count("fake trainer: exit 2") == 2
  assert "end the trainers that did start with tpu_scripts/stop.sh" in result.stderr
