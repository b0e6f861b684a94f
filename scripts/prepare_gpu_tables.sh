#!/usr/bin/env bash
# Kept for old notes: bench/prepare_gpu_carry.sh builds the carry now; this builds its `tables` part
# (.gpu_carry/tables: pyautoattack without its examples, and Fashion-MNIST's four idx.gz files, about 30 MB).
exec bash "$(dirname "$0")/../bench/prepare_gpu_carry.sh" tables
