#!/usr/bin/env bash
# Issue 6's comparison on Fashion-MNIST (eps 0.1): PGD-AT, TRADES and Generalist with and without DUCAT,
# same small CNN, data, epochs and lr (configs/fashion_mnist_<method>[_ducat].yaml). The plain rows reuse
# the runs of scripts/fmnist_table.sh (same folder, same configs). Every model is evaluated through the
# C-logit wrapper: clean / PGD-20 / CW-20 / pgd_lse-20 (the adaptive logsumexp-fold attack) on N test
# points (eval_n<N>.json) and AutoAttack on AA_N (eval_aa<AA_N>.json, resumable: re-run after a stop).
# Two one-thread lanes fill the 2 cores; finished steps are skipped. The plain rows are NOT trained here: run
# `N=... AA_N=... bash scripts/fmnist_table.sh` with the same OUT, N and AA_N (the table lists what is missing).
# Their adaptive column reads n/a: without dummy classes the logsumexp-fold is the identity (pgd_lse = PGD-20).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/table}
N=${N:-1000}
AA_N=${AA_N:-1000}
# The DUCAT rows are evaluated at their LAST checkpoint: DUCAT switches on late (the last epoch of a 3-epoch
# run), and the best-on-validation checkpoint can be one written before it did, i.e. a model DUCAT never
# trained. (The plain runs' best checkpoints of scripts/fmnist_table.sh are their last ones here.)
WHICH=${WHICH:-last}
EXTRA=${EXTRA:-}  # more overrides for every new training, e.g. "data.data_dir=/data/fashion-mnist"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

run() {
  local method=$1 config=$2 aa_models=$3
  if [ ! -f "$OUT/$method/DONE" ]; then  # a stopped training continues from its last checkpoint
    if [ -f "$OUT/$method/last.pt" ]; then
      $PY -m trainer train --resume "$OUT/$method" --no-eval >> "$OUT/$method.train.log" 2>&1
    else
      # shellcheck disable=SC2086  # EXTRA is a list of overrides
      $PY -m trainer train --config "configs/$config.yaml" --no-eval train.out_dir="$OUT/$method" \
        train.threads=1 train.progress=false train.checkpoint_every_steps=20 $EXTRA > "$OUT/$method.train.log" 2>&1
    fi
  fi
  [ -f "$OUT/$method/eval_n$N.json" ] || $PY -m trainer eval "$OUT/$method" --which "$WHICH" \
      --out "$OUT/$method/eval_n$N.json" eval.num_points="$N" "eval.attacks=[clean, pgd, cw, pgd_lse]" "eval.models=$aa_models" \
      >> "$OUT/$method.eval.log" 2>&1
  [ -f "$OUT/$method/eval_aa$AA_N.json" ] || $PY -m trainer eval "$OUT/$method" --which "$WHICH" \
      --out "$OUT/$method/eval_aa$AA_N.json" eval.num_points="$AA_N" "eval.attacks=[clean, autoattack]" \
      "eval.models=$aa_models" >> "$OUT/$method.eval.log" 2>&1
}

lane_a() {
  run pgd_at_ducat fashion_mnist_pgd_at_ducat "[]"
  run generalist_ducat fashion_mnist_generalist_ducat "[global]"
}
lane_b() {
  run trades_ducat fashion_mnist_trades_ducat "[]"
}

# A bare `wait` returns 0 whatever the lanes did: wait for each, print what exists, then report a failure.
lane_a & pid_a=$!
lane_b & pid_b=$!
status=0
wait "$pid_a" || status=1
wait "$pid_b" || status=1
$PY scripts/print_ducat_table.py "$OUT" "$N" "$AA_N"
if [ "$status" != 0 ]; then
  echo "ducat_table.sh: a training or evaluation failed; see $OUT/*.log, then re-run (finished steps are skipped)" >&2
  exit 1
fi
