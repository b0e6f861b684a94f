#!/usr/bin/env bash
# Kept for old notes: the engine part of bench/gpu_all.sh (setup, the GPU-only tests, the end-to-end benchmark at
# batch 128 and 512 and one stream vs two, the profile, then the CUDA-graph and torch.compile variants), which
# is the entry point now and documents the stages, limits and outputs. The old RUN_* switches are gone (use SKIP);
# T_TESTS / T_E2E / T_PROFILE / T_EXTRAS are now T_GPU_TESTS / T_E2E / T_PROFILE / T_E2E_EXTRAS.
#   BENCH_GIT_COMMIT=<sha> bash bench/run_gpu_end_to_end.sh
STAGES=${STAGES:-setup,gpu_tests,e2e,profile,e2e_extras} exec bash "$(dirname "$0")/gpu_all.sh" "$@"
