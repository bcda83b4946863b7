#!/usr/bin/env bash
# Installs what one command of the README needs, idempotently, into ./.venv:
#   bash tools/bootstrap.sh demo   gps_jax with its demo extra (the offline demo: no
#                                  torch, no timm);
#   bash tools/bootstrap.sh test   (the default) gps_jax with its demo and test extras:
#                                  the suite compares against timm in PyTorch, a download
#                                  of several GB (torch's CUDA libraries) the first time.
# Both install Debian's dataset-fashion-mnist via apt-get (the demo's upstream data;
# tests/test_data.py reads it when present) and pin every package to constraints.txt.
# Used by the README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-test}" in
  demo) extras="demo" ;;
  test) extras="demo,test" ;;
  *)
    echo "usage: bash tools/bootstrap.sh [demo|test]  (default: test)" >&2
    exit 2
    ;;
esac

FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "bootstrap: $FMNIST is missing and apt-get is not available;" >&2
    echo "bootstrap: install Debian's dataset-fashion-mnist or set config.upstream.data.data_dir" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e ".[$extras]"
