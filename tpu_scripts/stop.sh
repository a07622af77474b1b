#!/usr/bin/env bash
# Stop training on every worker of a TPU VM slice (SIGTERM: the trainer checkpoints the current step and
# exits), and with --delete delete the slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF2
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--wait=SECONDS] [--delete [--yes] [--skip_stop]] [--remote_dir=DIR]

On every worker, sends SIGTERM to the trainer that launch.sh started (the pid in DIR/logs/train.pid): all
processes agree on the step, save a checkpoint to MODEL_DIR and exit with code 0, so launching the same
command again resumes there. A trainer still running after --wait seconds gets SIGKILL (no checkpoint).

Options:
  --wait=SECONDS    how long to wait for the checkpoint before SIGKILL (default: 600; 0: SIGKILL at once)
  --delete          then delete the slice (gcloud asks to confirm)
  --yes             delete without asking
  --skip_stop       with --delete: do not stop the trainers first (e.g. the workers no longer answer)
  --remote_dir=DIR  where install.sh put the project [TPU_REMOTE_DIR] (default: optiml-jax)

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --delete --dry_run
EOF2
}

WAIT=600
DELETE=0
YES=0
SKIP_STOP=0
while (($#)); do
  case $1 in
    --wait | --wait=*) take WAIT "$@" ;;
    --delete) DELETE=1 SHIFT=1 ;;
    --yes) YES=1 SHIFT=1 ;;
    --skip_stop) SKIP_STOP=1 SHIFT=1 ;;
    --remote_dir | --remote_dir=*) take REMOTE_DIR "$@" ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
check_remote_dir
[[ $WAIT =~ ^[0-9]+$ ]] || die "--wait=$WAIT: expected a number of seconds"
((DELETE || !(YES || SKIP_STOP))) || die "--yes and --skip_stop go with --delete"

shell_quote "$REMOTE_DIR"
q_dir=$REPLY
remote="cd $q_dir 2>/dev/null || { echo \"\$(hostname): no $(remote_dir_display): nothing to stop\"; exit 0; }"
remote+="; $REMOTE_RUNNING_FN"
remote+="; if ! running; then echo \"\$(hostname): no trainer running\"; rm -f $PID_FILE; exit 0; fi"
remote+="; pid=\$(cat $PID_FILE); kill -TERM \"\$pid\"; echo \"\$(hostname): SIGTERM to pid \$pid\""
remote+="; i=0; while running && [ \"\$i\" -lt $WAIT ]; do sleep 1; i=\$((i + 1)); done"
remote+="; if running; then echo \"\$(hostname): still running after $WAIT s: SIGKILL\" >&2; kill -KILL \"\$pid\"; fi"
remote+="; rm -f $PID_FILE; echo \"\$(hostname): stopped\""

if ((!SKIP_STOP)); then
  note "stop the trainers on every worker of $TPU_NAME (SIGTERM, up to $WAIT s to checkpoint, then SIGKILL)"
  if ! tpu_ssh all "$remote"; then
    if ((!DELETE)); then
      exit 1
    fi
    echo "$SCRIPT_NAME: warning: stopping failed on some worker (above); deleting the slice anyway" >&2
  fi
fi
if ((DELETE)); then
  args=(gcloud compute tpus tpu-vm delete "$TPU_NAME")
  location_flags
  args+=("${LOCATION[@]}")
  if ((YES)); then
    args+=(--quiet)
  fi
  note "delete the TPU VM slice $TPU_NAME"
  run "${args[@]}"
fi
