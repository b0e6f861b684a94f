#!/usr/bin/env bash
# Kept for old notes: the kernel part of bench/gpu_all.sh (setup, native CMake build, the Triton kernels' tests on
# the GPU, the kernel benchmarks), which is the entry point now and documents the stages, limits and outputs.
# The old RUN_TESTS switch is gone: SKIP=kernel_tests does the same.
#   BENCH_GIT_COMMIT=<sha> bash bench/run_gpu_kernels.sh
STAGES=${STAGES:-setup,native_build,kernel_tests,kernel_bench} exec bash "$(dirname "$0")/gpu_all.sh" "$@"
