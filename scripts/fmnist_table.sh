#!/usr/bin/env bash
# The README's comparison table: natural, PGD-AT, TRADES and Generalist on Fashion-MNIST (eps 0.1),
# same model, data, epochs and lr. Each trained model is evaluated with clean / PGD-20 / CW-20 on the
# first N test points (eval_n<N>.json) and with AutoAttack standard on the first AA_N (eval_aa<AA_N>.json);
# for Generalist all three models (global, robust, natural), AutoAttack on the global model.
# Two lanes, one thread each, fill the 2 cores. AutoAttack is the long part on a CPU: on 1000 points
# it took 30 min (natural) to over an hour (robust models) per model here. Every step is skipped when its
# output exists (DONE marker, eval JSON) and AutoAttack keeps a state file, so after a stop just re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/table}
N=${N:-1000}
AA_N=${AA_N:-1000}
EXTRA=${EXTRA:-}  # more overrides for every new training, e.g. "data.data_dir=/data/fashion-mnist"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

train() {  # skip methods already trained (DONE marker) so the script can be re-run after a stop
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  [ -f "$OUT/$1/DONE" ] || $PY -m trainer train --config "configs/fashion_mnist_$1.yaml" --no-eval \
      train.out_dir="$OUT/$1" train.threads=1 train.progress=false $EXTRA > "$OUT/$1.train.log" 2>&1
}

evaluate() {
  local method=$1 aa_models=$2
  [ -f "$OUT/$method/eval_n$N.json" ] || $PY -m trainer eval "$OUT/$method" --out "$OUT/$method/eval_n$N.json" \
    eval.num_points="$N" "eval.attacks=[clean, pgd, cw]" >> "$OUT/$method.eval.log" 2>&1
  [ -f "$OUT/$method/eval_aa$AA_N.json" ] || $PY -m trainer eval "$OUT/$method" \
    --out "$OUT/$method/eval_aa$AA_N.json" eval.num_points="$AA_N" "eval.attacks=[clean, autoattack]" \
    "eval.models=$aa_models" >> "$OUT/$method.eval.log" 2>&1
}

lane() {
  for method in "$@"; do
    train "$method"
    evaluate "$method" "$([ "$method" = generalist ] && echo "[global]" || echo "[]")"
  done
}

# A bare `wait` returns 0 whatever the lanes did: wait for each, print what exists, then report a failure.
lane generalist natural & pid_a=$!
lane pgd_at trades & pid_b=$!
status=0
wait "$pid_a" || status=1
wait "$pid_b" || status=1
$PY scripts/print_table.py "$OUT" "$N" "$AA_N"
if [ "$status" != 0 ]; then
  echo "fmnist_table.sh: a training or evaluation failed; see $OUT/*.log, then re-run (finished steps are skipped)" >&2
  exit 1
fi
