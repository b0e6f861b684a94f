#!/usr/bin/env bash
# Issue 6's comparison on Fashion-MNIST (eps 0.1): PGD-AT, TRADES and Generalist with and without DUCAT,
# same small CNN, data, epochs and lr (configs/fashion_mnist_<method>[_ducat].yaml). Each run is trained and
# evaluated by scripts/table_run.sh through the C-logit wrapper: clean / PGD-20 / CW-20 / pgd_lse-20 (the
# adaptive logsumexp-fold attack) on N test points and AutoAttack on AA_N, at the LAST checkpoint (DUCAT
# switches on in the last epoch). JOBS one-thread workers (default 2) take the runs in turn.
# The plain rows are the runs of scripts/fmnist_table.sh (same folder, same configs) and are NOT trained
# here. Both tables' seven runs in one queue (no core idles between them), then this script to print:
#   RUNS="generalist pgd_at trades natural generalist_ducat pgd_at_ducat trades_ducat" bash scripts/fmnist_table.sh
# Their adaptive column reads n/a: without dummy classes the logsumexp-fold is the identity (pgd_lse = PGD-20).
set -euo pipefail
cd "$(dirname "$0")/.."
export PY=${PY:-.venv/bin/python} OUT=${OUT:-runs/table} N=${N:-1000} AA_N=${AA_N:-1000} EXTRA=${EXTRA:-}
RUNS=${RUNS:-generalist_ducat pgd_at_ducat trades_ducat}
status=0
# shellcheck disable=SC2086  # RUNS is a list
printf '%s\n' $RUNS | xargs -P "${JOBS:-2}" -n 1 bash scripts/table_run.sh || status=1
$PY scripts/print_ducat_table.py "$OUT" "$N" "$AA_N"
if [ "$status" != 0 ]; then
  echo "ducat_table.sh: a training or evaluation failed; see $OUT/*.log, then re-run (finished steps are skipped)" >&2
  exit 1
fi
