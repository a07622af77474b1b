#!/usr/bin/env bash
# Run a shell command on every worker of a TPU VM slice (or one): e.g. to copy data to the same path on each.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--worker=N|all] -- COMMAND...

Runs COMMAND (its words joined with spaces, as ssh does, then read by the worker's shell) in the home folder
of every worker, or of worker N, and waits for it.

Options:
  --worker=N|all  where (default: all)

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --dry_run -- \\
      'mkdir -p ~/data && gcloud storage rsync --recursive gs://my-bucket/optiml-data ~/data'
EOF2
}

WORKER=all
COMMAND=()
while (($#)); do
  case $1 in
    --worker | --worker=*) take WORKER "$@" ;;
    --)
      shift
      COMMAND=("$@")
      break
      ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
check_worker "$WORKER"
((${#COMMAND[@]})) || die "no command: pass it after --, e.g. -- 'df -h ~'"
tpu_ssh "$WORKER" "${COMMAND[*]}"
