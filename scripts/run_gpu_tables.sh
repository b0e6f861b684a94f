#!/usr/bin/env bash
# Kept for old notes: the `tables` stage of bench/gpu_all.sh, the entry point now: both Fashion-MNIST tables of
# the README trained and evaluated on a lent GPU machine (TABLE_LIMIT_S / DUCAT_LIMIT_S per table, 240 s each;
# N, AA_N, EXTRA as in scripts/fmnist_table.sh), raw results in $OUT/gpu_tables.tgz. Needs .gpu_carry/tables from
# bench/prepare_gpu_carry.sh, named in `carry`:
#   run(command="STAGES=tables BENCH_GIT_COMMIT=<sha> bash scripts/run_gpu_tables.sh", carry=[".gpu_carry/tables"])
STAGES=${STAGES:-setup,tables} exec bash "$(dirname "$0")/../bench/gpu_all.sh" "$@"
