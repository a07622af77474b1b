# Shared by the tpu_scripts (sourced, never run): option parsing, shell quoting, and `run`, which prints
# every command as `+ WORDS` (quoted so that it can be pasted into a shell) before running it, or only
# prints it with --dry_run. Nothing here needs gcloud; only `run` calls it, and not in a dry run.
#
# Where the scripts sit: create.sh -> install.sh -> [ssh.sh to stage data] -> launch.sh -> logs.sh -> stop.sh.
# Every worker holds the project in REMOTE_DIR (default ~/optiml-jax): its .venv, and logs/train.log and
# logs/train.pid of the training process that launch.sh starts and stop.sh ends.
# shellcheck shell=bash disable=SC2034  # the variables are the sourcing scripts' to use

SCRIPT_NAME=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

TPU_NAME=${TPU_NAME:-}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
REMOTE_DIR=${TPU_REMOTE_DIR:-optiml-jax}
DRY_RUN=0
INTERNAL_IP=0
SHIFT=1
REPLY=""
UNKNOWN_HINT=""  # a script's advice for unknown options

# The training process of a worker, as shell text run there inside REMOTE_DIR: `running` is true while the
# process named in logs/train.pid is alive and is the trainer (not a recycled pid).
LOG_FILE=logs/train.log
PID_FILE=logs/train.pid
REMOTE_RUNNING_FN="running() { [ -s $PID_FILE ] && tr '\\0' ' ' 2>/dev/null < \"/proc/\$(cat $PID_FILE)/cmdline\""
REMOTE_RUNNING_FN+=" | grep -q optiml_jax.train; }"

COMMON_HELP="Common options (each also read from the environment variable in brackets):
  --name=NAME        the TPU VM slice [TPU_NAME] (required)
  --zone=ZONE        its zone, e.g. us-central2-b for v4, us-east5-a for v5p [TPU_ZONE] (required)
  --project=PROJECT  its Google Cloud project [TPU_PROJECT] (default: gcloud's configured project)
  --internal_ip      reach the workers by internal IP (from a VM inside the same VPC)
  --dry_run          print the commands without running any (no gcloud needed)
  -h, --help         this help"

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

note() {
  printf '# %s\n' "$*"
}

# shell_quote WORD...: REPLY = the words as one POSIX shell command line; a word is single-quoted unless it
# is made only of characters that no shell treats specially.
shell_quote() {
  local word out=""
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="${out:+ }$word"
    else
      out+="${out:+ }'${word//\'/\'\\\'\'}'"
    fi
  done
  REPLY=$out
}

# run COMMAND...: print `+ COMMAND` (quoted), then run it unless --dry_run.
run() {
  shell_quote "$@"
  printf '+ %s\n' "$REPLY"
  if [[ $DRY_RUN == 1 ]]; then
    return 0
  fi
  "$@"
}

# take VAR OPTION [NEXT...]: the value of OPTION (`--opt=VALUE` or `--opt VALUE`) into VAR; SHIFT = the
# number of words used.
take() {
  local var=$1 opt=$2
  if [[ $opt == *=* ]]; then
    printf -v "$var" '%s' "${opt#*=}"
    SHIFT=1
  elif (($# >= 3)) && [[ $3 != --* ]]; then
    printf -v "$var" '%s' "$3"
    SHIFT=2
  else
    die "$opt needs a value ($opt=VALUE)"
  fi
}

# common_option ARGS...: parse one common option at the front of ARGS (setting SHIFT), or refuse it.
# Each script defines `usage` before calling it.
common_option() {
  case $1 in
    --name | --name=*) take TPU_NAME "$@" ;;
    --zone | --zone=*) take TPU_ZONE "$@" ;;
    --project | --project=*) take TPU_PROJECT "$@" ;;
    --internal_ip) INTERNAL_IP=1 SHIFT=1 ;;
    --dry_run) DRY_RUN=1 SHIFT=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown option '${1%%=*}'$UNKNOWN_HINT (see $SCRIPT_NAME --help)" ;;
  esac
}

# require_slice: refuse to go on without a slice name and a zone.
require_slice() {
  [[ -n $TPU_NAME ]] || die "no TPU name: pass --name=NAME or set TPU_NAME"
  [[ -n $TPU_ZONE ]] || die "no zone: pass --zone=ZONE (e.g. us-central2-b) or set TPU_ZONE"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name=$TPU_NAME: expected lowercase letters, digits and '-', starting with a letter"
  if [[ $DRY_RUN == 1 ]]; then
    note "dry run: printing the commands without running them"
  fi
}

# check_remote_dir: REMOTE_DIR relative to the home folder of each worker (a leading ~/ is dropped) or absolute.
check_remote_dir() {
  REMOTE_DIR=${REMOTE_DIR#\~/}
  [[ -n $REMOTE_DIR && $REMOTE_DIR != "~"* ]] \
    || die "--remote_dir=$REMOTE_DIR: expected a folder relative to the workers' home folder, or absolute"
}

# remote_dir_display: how to name REMOTE_DIR to a person (~/optiml-jax).
remote_dir_display() {
  if [[ $REMOTE_DIR == /* ]]; then
    printf '%s' "$REMOTE_DIR"
  else
    # shellcheck disable=SC2088  # a name for people, not a path to expand
    printf '~/%s' "$REMOTE_DIR"
  fi
}

# check_worker VALUE: `all` or a worker index.
check_worker() {
  [[ $1 == all || $1 =~ ^[0-9]+$ ]] || die "--worker=$1: expected 'all' or a worker index (0, 1, ...)"
}

# location_flags: LOCATION = the --zone and --project flags of every gcloud command.
location_flags() {
  LOCATION=(--zone="$TPU_ZONE")
  if [[ -n $TPU_PROJECT ]]; then
    LOCATION+=(--project="$TPU_PROJECT")
  fi
}

# tpu_ssh WORKER REMOTE_COMMAND: run a shell command on one worker or all of them (the same text on each).
tpu_ssh() {
  local args=(gcloud compute tpus tpu-vm ssh "$TPU_NAME")
  location_flags
  args+=("${LOCATION[@]}" --worker="$1")
  if [[ $INTERNAL_IP == 1 ]]; then
    args+=(--internal-ip)
  fi
  run "${args[@]}" --command "$2"
}

# tpu_scp_to_all LOCAL_FILE REMOTE_PATH: copy one file to every worker.
tpu_scp_to_all() {
  local args=(gcloud compute tpus tpu-vm scp "$1" "$TPU_NAME:$2")
  location_flags
  args+=("${LOCATION[@]}" --worker=all)
  if [[ $INTERNAL_IP == 1 ]]; then
    args+=(--internal-ip)
  fi
  run "${args[@]}"
}
