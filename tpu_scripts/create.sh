#!/usr/bin/env bash
# Create a Cloud TPU VM slice (`gcloud compute tpus tpu-vm create`); the first step of tpu_scripts/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --accelerator_type=TYPE [options] [-- EXTRA_GCLOUD_FLAGS...]

Creates the TPU VM slice NAME; every worker of it boots the chosen TPU software version. gcloud waits
until the slice is ready. Then: tpu_scripts/install.sh.

Options:
  --accelerator_type=TYPE  e.g. v4-512 (256 chips, 64 workers; what gin/optiml_175b.gin targets), v5p-512,
                           v4-32, v5litepod-16, v6e-256 [TPU_ACCELERATOR_TYPE] (required)
  --version=RUNTIME        TPU software version [TPU_VERSION]; default by generation: tpu-ubuntu2204-base
                           (v2, v3, v4), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5litepod),
                           v2-alpha-tpuv6e (v6e)
  --spot                   a Spot slice (cheaper; may be preempted: relaunch to resume from a checkpoint)
  --preemptible            a preemptible slice (the older kind of Spot)
  --reserved               use reserved capacity
  -- FLAGS...              passed to gcloud as they are, e.g. -- --network=NET --data-disk=source=DISK,mode=read-only

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --accelerator_type=v4-512 --spot --dry_run
EOF
}

# default_runtime TYPE: the TPU software version for the generation of TYPE.
default_runtime() {
  case $1 in
    v2-* | v3-* | v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v5litepod-*) printf 'v2-alpha-tpuv5-lite' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    *) return 1 ;;
  esac
}

ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-}
VERSION=${TPU_VERSION:-}
SPOT=0
PREEMPTIBLE=0
RESERVED=0
EXTRA=()
while (($#)); do
  case $1 in
    --accelerator_type | --accelerator_type=*) take ACCELERATOR_TYPE "$@" ;;
    --version | --version=*) take VERSION "$@" ;;
    --spot) SPOT=1 SHIFT=1 ;;
    --preemptible) PREEMPTIBLE=1 SHIFT=1 ;;
    --reserved) RESERVED=1 SHIFT=1 ;;
    --)
      shift
      EXTRA=("$@")
      break
      ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
[[ -n $ACCELERATOR_TYPE ]] \
  || die "no accelerator type: pass --accelerator_type=TYPE (e.g. v4-512) or set TPU_ACCELERATOR_TYPE"
[[ $ACCELERATOR_TYPE =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] \
  || die "--accelerator_type=$ACCELERATOR_TYPE: expected GENERATION-SIZE, e.g. v4-512 or v5p-512"
if [[ -z $VERSION ]]; then
  VERSION=$(default_runtime "$ACCELERATOR_TYPE") \
    || die "no default TPU software version for $ACCELERATOR_TYPE: pass --version=RUNTIME" \
      "(gcloud compute tpus tpu-vm versions list --zone=$TPU_ZONE)"
fi
((SPOT + PREEMPTIBLE + RESERVED <= 1)) || die "--spot, --preemptible and --reserved exclude each other"

args=(gcloud compute tpus tpu-vm create "$TPU_NAME")
location_flags
args+=("${LOCATION[@]}" --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION")
if ((SPOT)); then args+=(--spot); fi
if ((PREEMPTIBLE)); then args+=(--preemptible); fi
if ((RESERVED)); then args+=(--reserved); fi
note "create the TPU VM slice $TPU_NAME: $ACCELERATOR_TYPE, TPU software $VERSION"
run "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
