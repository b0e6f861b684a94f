#!/usr/bin/env bash
# One call on a GPU machine: build the native CUDA library, check every kernel on the GPU, then run both
# kernel benchmarks at full sizes. Results go to bench/results/ and, when $OUT is set, to $OUT as well
# (with the test log), so that a device session gets them back.
#
#   BENCH_GIT_COMMIT=<sha> bash bench/run_gpu_kernels.sh          # <sha>: `git rev-parse HEAD` where you are
#
# PYTHON picks the interpreter (default: .venv/bin/python when it sees a GPU, else python3);
# RUN_TESTS=0 skips the tests; PGD_ARGS / AVG_ARGS pass extra flags to the two benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=.venv/bin/python
  fi
fi
OUT_ARGS=()
LOG_DIR=bench/results
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  OUT_ARGS=(--out-dir "$OUT")
  LOG_DIR=$OUT
fi

"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.memory --format=csv || true

echo "== native library (CMake, sm_90 + PTX)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
export GENERALIST_KERNELS_CUDA_LIB=$PWD/build/libgeneralist_kernels_cuda.so

# The tests run first and their outcome is recorded in every results file (meta.kernel_tests): a figure
# from a run whose kernels failed their tests must not be quoted. The benchmarks run either way.
tests_rc=0
export BENCH_KERNEL_TESTS=skipped
if [ "${RUN_TESTS:-1}" != 0 ]; then
  echo "== kernel tests on the GPU"
  "$PY" -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$LOG_DIR/gpu_kernel_tests.log" || tests_rc=$?
  if [ "$tests_rc" = 0 ]; then BENCH_KERNEL_TESTS=passed; else BENCH_KERNEL_TESTS="failed (pytest exit $tests_rc)"; fi
  echo "kernel tests: $BENCH_KERNEL_TESTS"
fi

echo "== PGD step benchmark"
# shellcheck disable=SC2086
"$PY" -m bench.bench_pgd_step ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${PGD_ARGS:-}
echo "== averaging benchmark"
# shellcheck disable=SC2086
"$PY" -m bench.bench_averaging ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${AVG_ARGS:-}

exit "$tests_rc"
