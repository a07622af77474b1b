#!/usr/bin/env bash
# Launch training on every worker of a TPU VM slice: the same `python -m optiml_jax.train ... --multihost`
# command on each (`gcloud compute tpus tpu-vm ssh --worker=all`), in the background, logging to a file.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [options] --gin_file=FILE [--gin.KEY=VALUE ...] [-- TRAIN_FLAGS...]

Runs, on every worker of the slice, in DIR (see install.sh) and detached from the ssh session:
  .venv/bin/python -m optiml_jax.train TRAIN_FLAGS... --multihost >> logs/train.log 2>&1
TRAIN_FLAGS are the --gin_file, --gin.KEY=VALUE, --gin_bindings and --gin_search_paths flags given here,
in order, then everything after --, passed word for word (quote gin strings for your shell:
--gin.MIXTURE_OR_TASK_NAME="'my_mixture'"). --multihost is added unless present: each worker calls
jax.distributed.initialize(), which finds the others by itself on a Cloud TPU slice.
Refuses to start where a trainer launched here still runs (tpu_scripts/stop.sh ends it). Waits
--check_seconds and fails, showing the end of the log, on any worker whose trainer has already exited
(a configuration error ends it with code 2 within seconds). Relaunching the same command resumes from the
newest checkpoint in MODEL_DIR.

Options:
  --gin_file=FILE           a gin file, relative to DIR (gin/optiml_175b.gin) (at least one)
  --gin.KEY=VALUE           a gin binding in t5x's form, e.g. --gin.MODEL_DIR=gs://bucket/run
  --gin_bindings=BINDING    a gin binding 'KEY = VALUE'
  --gin_search_paths=PATHS  comma-separated folders searched for gin files
  --env=NAME=VALUE          an environment variable for the trainer (repeatable), e.g. --env=TPU_STDERR_LOG_LEVEL=0
  --check_seconds=N         how long to watch the trainers start before returning (default 30; 0: do not watch)
  --remote_dir=DIR          where install.sh put the project [TPU_REMOTE_DIR] (default: optiml-jax)

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --gin_file=gin/optiml_175b.gin \\
      --gin.MODEL_DIR=gs://my-bucket/optiml-175b --gin.CATALOG_DIR=/data/optiml_bench \\
      --gin.INITIAL_CHECKPOINT_PATH=/gcs/opt-175b --dry_run
EOF
}

TRAIN_ARGS=()
ENV_ARGS=(PYTHONUNBUFFERED=1)
CHECK_SECONDS=30
UNKNOWN_HINT="; other flags of the trainer go after --"
while (($#)); do
  case $1 in
    --gin_file | --gin_file=* | --gin_bindings | --gin_bindings=* | --gin_search_paths | --gin_search_paths=*)
      take value "$@"
      TRAIN_ARGS+=("${1%%=*}=$value")
      ;;
    --gin.*=*) TRAIN_ARGS+=("$1") SHIFT=1 ;;
    --gin.*) die "$1: write gin bindings as --gin.KEY=VALUE" ;;
    --env | --env=*)
      take value "$@"
      [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env=$value: expected NAME=VALUE"
      ENV_ARGS+=("$value")
      ;;
    --check_seconds | --check_seconds=*) take CHECK_SECONDS "$@" ;;
    --remote_dir | --remote_dir=*) take REMOTE_DIR "$@" ;;
    --)
      shift
      TRAIN_ARGS+=("$@")
      break
      ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
check_remote_dir
[[ $CHECK_SECONDS =~ ^[0-9]+$ ]] || die "--check_seconds=$CHECK_SECONDS: expected a number of seconds"
has_gin_file=0
has_multihost=0
for arg in ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}; do
  case $arg in
    --gin_file | --gin_file=*) has_gin_file=1 ;;
    --multihost | --coordinator_address | --coordinator_address=*) has_multihost=1 ;;
  esac
done
((has_gin_file)) || die "no --gin_file: pass the run's gin file, e.g. --gin_file=gin/optiml_175b.gin"
if ((!has_multihost)); then
  TRAIN_ARGS+=(--multihost)
fi

shell_quote "${TRAIN_ARGS[@]}"
train_args=$REPLY
shell_quote env "${ENV_ARGS[@]}"
env_command=$REPLY
shell_quote "$REMOTE_DIR"
q_dir=$REPLY
log="$(remote_dir_display)/$LOG_FILE"

# On each worker the trainer's flags are the positional parameters ("$@"), so they are quoted only once.
remote="{ cd $q_dir 2>/dev/null && [ -x .venv/bin/python ]; } || { echo \"\$(hostname): no"
remote+=" $(remote_dir_display)/.venv/bin/python: run tpu_scripts/install.sh first\" >&2; exit 1; }"
remote+="; mkdir -p logs; $REMOTE_RUNNING_FN"
remote+="; if running; then echo \"\$(hostname): a trainer launched here still runs (pid \$(cat $PID_FILE));"
remote+=" end it with tpu_scripts/stop.sh\" >&2; exit 1; fi"
remote+="; set -- $train_args"
remote+="; echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$(hostname): optiml_jax.train \$*\" >> $LOG_FILE"
remote+="; setsid nohup $env_command .venv/bin/python -m optiml_jax.train \"\$@\" >> $LOG_FILE 2>&1 < /dev/null &"
remote+=" echo \$! > $PID_FILE"
if ((CHECK_SECONDS > 0)); then
  remote+="; sleep $CHECK_SECONDS; if ! running; then echo \"\$(hostname): the trainer exited within"
  remote+=" $CHECK_SECONDS s; the end of $log:\" >&2; tail -n 30 $LOG_FILE >&2; exit 1; fi"
fi
remote+="; echo \"\$(hostname): training, pid \$(cat $PID_FILE), log $log\""

note "launch on every worker of $TPU_NAME, in $(remote_dir_display): .venv/bin/python -m optiml_jax.train $train_args"
note "log on each worker: $log (tpu_scripts/logs.sh; worker 0 shows progress and metrics)"
if ! tpu_ssh all "$remote"; then
  echo "$SCRIPT_NAME: error: the launch failed on some worker (above); end the trainers that did start with" \
    "tpu_scripts/stop.sh before launching again" >&2
  exit 1
fi
