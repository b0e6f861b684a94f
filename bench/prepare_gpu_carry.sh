#!/usr/bin/env bash
# Here, before a GPU session: builds what bench/gpu_all.sh's optional stages need on the lent GPU machine,
# which has torch 2.11, triton 3.6, numpy, pytest (with pytest-timeout and xdist) for Python 3.12, but neither
# pyautoattack, the Fashion-MNIST files nor DALI, and reaches no package registry. One device call carries
# at most 64 MiB (the working tree included), so the carry is cut into per-call payloads:
#
#   .gpu_carry/tables/      pyautoattack (unpacked, without its 44 MB examples/) and Fashion-MNIST's four
#                           idx.gz files: the `tables` stage
#   .gpu_carry/dali/        DALI 2.4's small dependencies (optree, gast, astunparse, libcst, makefun, nvtx) and
#                           its nvcomp, nvjpeg, nvjpeg2k, nvtiff wheels: the `dali` stage installs them
#   .gpu_carry/dali_codec/  the nvimgcodec wheel: staged on the device with the last DALI part
#   .dali/partNN, SHA256    the DALI wheel (about 198 MB) cut into 55 MiB parts, one call each
#
#   bash bench/prepare_gpu_carry.sh            # all of it
#   bash bench/prepare_gpu_carry.sh tables     # or: dali
#
# It ends with the device calls, in order, each with its carry and its size (repository included), and
# fails if one would exceed 64 MiB. .gpu_carry/ and .dali/ are ignored by git.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTS=${*:-tables dali}
CARRY=.gpu_carry
LIMIT=$((64 * 1024 * 1024))
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PYAUTOATTACK=${PYAUTOATTACK_VERSION:-0.2.0}
DALI_VERSION=${DALI_VERSION:-2.4.0}
# Pinned to the versions the CPU machines' venv runs DALI 2.4.0 with (DALI's own pins: astunparse <= 1.6.3,
# gast <= 0.7.0, libcst ~= 1.8, nvidia-libnvcomp-cu13 == 5.3.0.16, nvidia-nvimgcodec-cu13[all] < 0.10).
DALI_DEPS="optree==0.20.0 gast==0.7.0 astunparse==1.6.3 libcst==1.9.0 makefun==1.16.0 nvtx==0.2.17
  nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82"
DALI_CODEC="nvidia-nvimgcodec-cu13==0.9.0.20"
PY=${PY:-python3}

# Wheels for the GPU image's Python 3.12 on x86-64 Linux, whatever this machine runs.
download() {  # dir requirement...
  local dir=$1
  shift
  mkdir -p "$dir"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" "$@" 2>&1 | grep -v "^WARNING: Location" || true
  for req in "$@"; do
    local name=${req%%==*}
    compgen -G "$dir/${name//-/_}-*.whl" >/dev/null || compgen -G "$dir/$name-*.whl" >/dev/null \
      || { echo "prepare_gpu_carry.sh: no wheel for $req in $dir" >&2; exit 1; }
  done
}

size() { du -cb "$@" 2>/dev/null | tail -n 1 | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

for part in $PARTS; do
  case "$part" in
    tables)
      [ -d "$FMNIST" ] || { echo "no Fashion-MNIST at $FMNIST: apt-get install dataset-fashion-mnist" >&2; exit 1; }
      rm -rf "$CARRY/tables" && mkdir -p "$CARRY/tables/site" "$CARRY/tables/fashion-mnist"
      cp "$FMNIST"/*-ubyte.gz "$CARRY/tables/fashion-mnist/"
      wheels=$(mktemp -d)
      download "$wheels" "pyautoattack==$PYAUTOATTACK"
      "$PY" - "$wheels"/pyautoattack-*.whl "$CARRY/tables/site" <<'PY'
import sys, zipfile
wheel, site = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    # The package and its metadata; examples/ holds sample model weights that evaluation never loads.
    z.extractall(site, [n for n in z.namelist() if "/examples/" not in n])
PY
      rm -rf "$wheels"
      ;;
    dali)
      rm -rf "$CARRY/dali" "$CARRY/dali_codec"
      # shellcheck disable=SC2086  # lists of requirements
      download "$CARRY/dali" $DALI_DEPS
      download "$CARRY/dali_codec" $DALI_CODEC
      if [ ! -f .dali/SHA256 ] || ! grep -q "nvidia_dali_cuda130-$DALI_VERSION-" .dali/SHA256; then
        rm -rf .dali && mkdir -p .dali
        download .dali "nvidia-dali-cuda130==$DALI_VERSION"
        whl=$(ls .dali/nvidia_dali_cuda130-*.whl)
        (cd .dali && sha256sum "$(basename "$whl")" > SHA256)
        split -b 55M -d -a 2 "$whl" .dali/part
        rm -f "$whl"
      fi
      ;;
    *) echo "prepare_gpu_carry.sh: unknown part '$part' (tables, dali)" >&2; exit 2 ;;
  esac
done

# What travels with every call: tracked files and untracked ones git does not ignore.
repo=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null \
  | awk '$2 == "total" { s += $1 } END { print s + 0 }')
echo "working tree that travels with every call: $(mib "$repo")"
[ -d "$CARRY" ] && du -sh "$CARRY"/* 2>/dev/null
[ -d .dali ] && du -sh .dali/* 2>/dev/null
status=0
call() {  # description, carried paths...
  local what=$1
  shift
  local bytes=$((repo + $(size "$@")))
  local verdict=ok
  [ "$bytes" -le "$LIMIT" ] || { verdict="OVER the 64 MiB limit"; status=1; }
  printf '  %-62s carry=[%s]  %s  %s\n' "$what" "$*" "$(mib "$bytes")" "$verdict"
}
echo "device calls, in order (each while the machine is warm, 30 s between calls at most):"
echo "  core: BENCH_GIT_COMMIT=<sha> bash bench/gpu_all.sh, timeout_s=560, carry=[]  $(mib "$repo")"
if [ -f .dali/SHA256 ]; then
  parts=(.dali/part*)
  last=${parts[-1]}
  for p in "${parts[@]}"; do
    if [ "$p" = "$last" ]; then
      call "mkdir -p /tmp/dali && cp $p $CARRY/dali_codec/*.whl /tmp/dali/" "$p" "$CARRY/dali_codec"
    else
      call "mkdir -p /tmp/dali && cp $p /tmp/dali/" "$p"
    fi
  done
  call "STAGES=dali BENCH_GIT_COMMIT=<sha> bash bench/gpu_all.sh" .dali/SHA256 "$CARRY/dali"
fi
if [ -d "$CARRY/tables" ]; then
  call "STAGES=tables BENCH_GIT_COMMIT=<sha> bash bench/gpu_all.sh" "$CARRY/tables"
fi
exit "$status"
