#!/usr/bin/env bash
# EMR bootstrap action: install dark-halo-scope's pinned Python dependencies on every node.
#
#   install_deps.sh CODE_URI [--with-torch]
#
# CODE_URI is the S3 prefix `make emr-upload` wrote dist/ to (emr.launcher passes it). The pins
# come from ONE source: pyproject.toml [project].dependencies, written to requirements-emr.txt
# by `make package` (minus pyspark: EMR ships Spark and puts it on the workers' PYTHONPATH; minus
# torch, which only scoring needs). --with-torch also installs the pinned torch, CPU build.
# EMR 7 runs Amazon Linux 2023, whose python3 is 3.9; the pins need >= 3.11, so the packages go
# into a venv of the distribution's python3.11 at /opt/dhs-venv (emr.config.NODE_PYTHON, which
# the launcher sets as PYSPARK_PYTHON). DHS_BOOTSTRAP_DRY_RUN=1 prints the commands instead.
set -euo pipefail

CODE_URI="${1:?usage: install_deps.sh CODE_URI [--with-torch]}"
shift
WITH_TORCH=0
for arg in "$@"; do
  case "$arg" in
    --with-torch) WITH_TORCH=1 ;;
    *) echo "install_deps.sh: unknown argument '$arg' (allowed: --with-torch)" >&2; exit 2 ;;
  esac
done

VENV=/opt/dhs-venv
PYTHON=python3.11
TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU wheels: the cluster nodes have no GPU
CODE_URI="${CODE_URI%/}"

run() {
  if [[ "${DHS_BOOTSTRAP_DRY_RUN:-0}" == 1 ]]; then echo "+ $*"; else "$@"; fi
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

run aws s3 cp "$CODE_URI/requirements-emr.txt" "$WORK/requirements-emr.txt"
run sudo dnf install -y "$PYTHON" "$PYTHON-pip" "$PYTHON-devel"
run sudo "$PYTHON" -m venv "$VENV"
run sudo "$VENV/bin/python" -m pip install --no-cache-dir --upgrade pip
run sudo "$VENV/bin/python" -m pip install --no-cache-dir -r "$WORK/requirements-emr.txt"
if [[ "$WITH_TORCH" == 1 ]]; then
  run aws s3 cp "$CODE_URI/requirements-emr-torch.txt" "$WORK/requirements-emr-torch.txt"
  run sudo "$VENV/bin/python" -m pip install --no-cache-dir --index-url "$TORCH_INDEX" \
    -r "$WORK/requirements-emr-torch.txt"
fi
# Fail the bootstrap (and so the node) now rather than a Spark task later.
run "$VENV/bin/python" -c "import numpy, scipy, astropy, pyarrow, lenstronomy, yaml, boto3; print('dhs deps ok')"
