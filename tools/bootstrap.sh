#!/usr/bin/env bash
# Installs everything gps_jax needs, idempotently, into ./.venv:
#   - Debian's dataset-fashion-mnist (upstream data of the offline demo), via apt-get;
#   - gps_jax with its demo and test extras, at the exact versions of constraints.txt.
# Used by the README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "bootstrap: $FMNIST is missing and apt-get is not available;" >&2
    echo "bootstrap: install Debian's dataset-fashion-mnist or set config.upstream.data_dir" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e ".[demo,test]"
