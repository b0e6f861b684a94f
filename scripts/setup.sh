#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: the Fashion-MNIST package, a virtual environment in .venv with
# torch, the project (editable) and its dev + eval + dali extras (pytest, hypothesis, triton, pyautoattack,
# matplotlib, nvidia-dali-cuda130 whose CPU-only pipelines the tests run).
# TORCH_SPEC picks the torch build: the default 2.13.0 is the local CPU wheel on the project's CPU
# machines; on a GPU machine use e.g. TORCH_SPEC=torch (the CUDA build from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi

# Re-install only when the dependency list or the torch choice changed.
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-$(echo "$TORCH_SPEC" | sha256sum | cut -c1-8)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing $TORCH_SPEC and the project with its dev, eval and dali extras (a few minutes)"
  .venv/bin/python -m pip install -q "$TORCH_SPEC"
  .venv/bin/python -m pip install -q -e ".[dev,eval,dali]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
