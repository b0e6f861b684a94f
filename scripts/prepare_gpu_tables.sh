#!/usr/bin/env bash
# Here, before a GPU session's call: gathers what scripts/run_gpu_tables.sh needs on the lent GPU machine,
# which has torch, numpy, scipy, pyyaml, tqdm and safetensors but neither pyautoattack nor the dataset, and
# reaches no package registry. Writes .gpu_carry/ (ignored by git, about 31 MB, under one call's 64 MiB):
#   .gpu_carry/site/pyautoattack/   the official AutoAttack package, without its 44 MB examples/ folder
#   .gpu_carry/fashion-mnist/       the four idx.gz files of the Debian package dataset-fashion-mnist
# Then: run(command="bash scripts/run_gpu_tables.sh", carry=[".gpu_carry"]).
set -euo pipefail
cd "$(dirname "$0")/.."
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
VERSION=${PYAUTOATTACK_VERSION:-0.2.0}
[ -d "$FMNIST" ] || { echo "no Fashion-MNIST at $FMNIST: apt-get install dataset-fashion-mnist" >&2; exit 1; }
rm -rf .gpu_carry && mkdir -p .gpu_carry/site .gpu_carry/fashion-mnist
cp "$FMNIST"/*-ubyte.gz .gpu_carry/fashion-mnist/
wheels=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "pyautoattack==$VERSION"
python3 - "$wheels"/pyautoattack-*.whl .gpu_carry/site <<'PY'
import sys, zipfile
wheel, site = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    # The package and its metadata; examples/ holds sample model weights that evaluation never loads.
    z.extractall(site, [n for n in z.namelist() if "/examples/" not in n])
PY
rm -rf "$wheels"
du -sh .gpu_carry
