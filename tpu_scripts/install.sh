#!/usr/bin/env bash
# Install the project on every worker of a TPU VM slice: the code (a `git archive` of this checkout, or a
# clone), a Python virtualenv, the package and jax[tpu]. After create.sh; before launch.sh.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--git_url=URL] [--ref=REF] [--python=PY] [--remote_dir=DIR]

Puts the project into DIR on every worker and installs it there, the same way on each:
  code:    by default \`git archive REF\` of this checkout (committed files only), copied to every worker
           with \`gcloud compute tpus tpu-vm scp --worker=all\` and unpacked into DIR (its .venv and logs/
           are kept); with --git_url, every worker fetches REF of that repository into DIR instead.
  python:  DIR/.venv made with PY (installed with apt when missing and PY is python3.N), then
           \`pip install -e . 'jax[tpu]'\` (jax within setup.py's range, with the matching libtpu).
Run it again after changing the code; it only reinstalls what changed.

Options:
  --git_url=URL      clone this repository on the workers instead of copying this checkout
  --ref=REF          the commit, branch or tag to install (default: HEAD)
  --python=PY        the interpreter for the virtualenv (default: python3.11)
  --remote_dir=DIR   where on each worker, relative to its home folder or absolute [TPU_REMOTE_DIR]
                     (default: optiml-jax)

$COMMON_HELP

Example:
  $SCRIPT_NAME --name=optiml-175b --zone=us-central2-b --dry_run
EOF
}

GIT_URL=""
REF=HEAD
PYTHON=python3.11
while (($#)); do
  case $1 in
    --git_url | --git_url=*) take GIT_URL "$@" ;;
    --ref | --ref=*) take REF "$@" ;;
    --python | --python=*) take PYTHON "$@" ;;
    --remote_dir | --remote_dir=*) take REMOTE_DIR "$@" ;;
    *) common_option "$@" ;;
  esac
  shift "$SHIFT"
done

require_slice
check_remote_dir
[[ -n $REF ]] || die "--ref: expected a commit, branch or tag"
[[ $PYTHON =~ ^[A-Za-z0-9_./-]+$ ]] || die "--python=$PYTHON: expected an interpreter name or path, e.g. python3.11"

shell_quote "$REMOTE_DIR"
Q_DIR=$REPLY
REMOTE_TARBALL=optiml-jax-src.tar.gz

# The code, on the worker (in its home folder).
if [[ -n $GIT_URL ]]; then
  shell_quote "$GIT_URL" "$REF"
  fetch_code="mkdir -p $Q_DIR; cd $Q_DIR; [ -d .git ] || git init -q; git fetch -q --depth=1 $REPLY;"
  fetch_code+=" git checkout -q --force --detach FETCH_HEAD"
else
  git -C "$REPO_ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 \
    || die "$REPO_ROOT is not a git checkout: pass --git_url=URL to clone the project on the workers"
  commit=$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$REF^{commit}") \
    || die "--ref=$REF: not a commit of $REPO_ROOT"
  if [[ $REF == HEAD && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
    echo "$SCRIPT_NAME: warning: uncommitted changes in $REPO_ROOT are not installed (git archive HEAD)" >&2
  fi
  tarball="${TMPDIR:-/tmp}/optiml-jax-$TPU_NAME.tar.gz"
  fetch_code="mkdir -p $Q_DIR; find $Q_DIR -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +;"
  fetch_code+=" tar -xzf $REMOTE_TARBALL -C $Q_DIR; rm -f $REMOTE_TARBALL; cd $Q_DIR"
fi

# The interpreter, the virtualenv and the package, on the worker (in DIR).
if [[ $PYTHON =~ ^python3\.[0-9]+$ ]]; then
  apt="sudo apt-get -o DPkg::Lock::Timeout=600"
  get_python="command -v $PYTHON >/dev/null 2>&1 || { $apt update -q"
  get_python+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q"
  get_python+=" $PYTHON $PYTHON-venv; }"
else
  get_python="command -v $PYTHON >/dev/null 2>&1 || { echo \"\$(hostname): no $PYTHON\" >&2; exit 1; }"
fi
setup_python="$get_python; [ -x .venv/bin/python ] || $PYTHON -m venv .venv"
setup_python+="; .venv/bin/python -m pip install -q --upgrade pip setuptools wheel"
setup_python+="; .venv/bin/python -m pip install -q -e . 'jax[tpu]'"
setup_python+="; version=\$(.venv/bin/python -c 'import jax, optiml_jax.train; print(jax.__version__)')"
setup_python+="; echo \"\$(hostname): optiml-jax installed in $(remote_dir_display), jax \$version\""

if [[ -n $GIT_URL ]]; then
  note "install $GIT_URL at $REF into $(remote_dir_display) on every worker of $TPU_NAME"
else
  note "install commit $commit of $REPO_ROOT into $(remote_dir_display) on every worker of $TPU_NAME"
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$tarball" "$REF"
  tpu_scp_to_all "$tarball" "$REMOTE_TARBALL"
  run rm -f "$tarball"
fi
tpu_ssh all "set -e; $fetch_code; $setup_python"
