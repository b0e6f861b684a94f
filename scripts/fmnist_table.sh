#!/usr/bin/env bash
# The README's comparison table (issue 2): natural, PGD-AT, TRADES and Generalist on Fashion-MNIST
# (eps 0.1), same model, data, epochs and lr. Each run is trained and evaluated by scripts/table_run.sh:
# clean / PGD-20 / CW-20 on the first N test points, AutoAttack standard on the first AA_N.
# JOBS one-thread workers (default 2, one per core) take the runs in turn, the longest first, so no core
# idles while another has two robust models queued. AutoAttack is the long part on a CPU (52-59 min
# per robust model on 1000 points on one core). Finished steps are skipped: after a stop, just re-run.
# RUNS="..." to run a subset or add runs, e.g. RUNS="natural pgd_at trades generalist pgd_at_ducat".
set -euo pipefail
cd "$(dirname "$0")/.."
export PY=${PY:-.venv/bin/python} OUT=${OUT:-runs/table} N=${N:-1000} AA_N=${AA_N:-1000} EXTRA=${EXTRA:-}
RUNS=${RUNS:-generalist pgd_at trades natural}
status=0
# shellcheck disable=SC2086  # RUNS is a list
printf '%s\n' $RUNS | xargs -P "${JOBS:-2}" -n 1 bash scripts/table_run.sh || status=1
$PY scripts/print_table.py "$OUT" "$N" "$AA_N"
if [ "$status" != 0 ]; then
  echo "fmnist_table.sh: a training or evaluation failed; see $OUT/*.log, then re-run (finished steps are skipped)" >&2
  exit 1
fi
