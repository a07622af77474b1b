#!/usr/bin/env bash
# Show the training log of one worker or of all of them (`tail -F` of logs/train.log, which launch.sh writes).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--worker=N|all] [--lines=N] [--no_follow] [--remote_dir=DIR]

Prints the last lines of DIR/logs/train.log on a worker and follows it (Ctrl-C to stop following; training
goes on). Worker 0 (JAX process 0) shows the progress bar, the metrics and the final summary; the others
show their own errors. With --worker=all every line starts with the worker's host name.

Options:
  --worker=N|all    whose log (default: 0)
  --lines=N         how many lines to show first (default: 50)
  --no_follow       print them and return
  --remote_dir=DIR  where install.sh put the project [TPU_REMOTE_DIR] (default: optiml-jax)

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --worker=all --lines=5 --no_follow --dry_run
EOF2
}

WORKER=0
LINES=50
FOLLOW=1
while (($#)); do
  case $1 in
    --worker | --worker=*) take WORKER "$@" ;;
    --lines | --lines=*) take LINES "$@" ;;
    --no_follow) FOLLOW=0 SHIFT=1 ;;
    --remote_dir | --remote_dir=*) take REMOTE_DIR "$@" ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
check_remote_dir
check_worker "$WORKER"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES: expected a number of lines"

shell_quote "$REMOTE_DIR"
remote="cd $REPLY && tail -n $LINES"
if ((FOLLOW)); then
  remote+=" -F"
fi
remote+=" $LOG_FILE"
if [[ $WORKER == all ]]; then
  remote+=" | sed -u \"s/^/\$(hostname): /\""
fi
if [[ $WORKER == all ]]; then
  note "$(remote_dir_display)/$LOG_FILE on every worker of $TPU_NAME"
else
  note "$(remote_dir_display)/$LOG_FILE on worker $WORKER of $TPU_NAME"
fi
tpu_ssh "$WORKER" "$remote"
