#!/usr/bin/env bash
# The README's comparison table: natural, PGD-AT, TRADES and Generalist on Fashion-MNIST (eps 0.1),
# same model, data, epochs and lr, each evaluated on the first 1000 test points with clean / PGD-20 /
# CW-20 / AutoAttack (standard). For Generalist the table's row is the global model; its experts get
# clean / PGD-20 / CW-20 in a second, cheaper pass. Two lanes, one thread each, fill the 2 cores.
# Writes runs/table/<method>/eval_best.json and prints the table (scripts/print_table.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/table}
N=${N:-1000}
mkdir -p "$OUT"

lane() {
  for method in "$@"; do
    $PY -m trainer train --config "configs/fashion_mnist_$method.yaml" --no-eval \
      train.out_dir="$OUT/$method" train.threads=1 train.progress=false > "$OUT/$method.train.log" 2>&1
    models=$([ "$method" = generalist ] && echo "[global]" || echo "[]")
    $PY -m trainer eval "$OUT/$method" eval.num_points="$N" eval.models="$models" > "$OUT/$method.eval.log" 2>&1
    if [ "$method" = generalist ]; then
      $PY -m trainer eval "$OUT/$method" --out "$OUT/$method/eval_best_experts.json" eval.num_points="$N" \
        "eval.models=[robust, natural]" "eval.attacks=[clean, pgd, cw]" >> "$OUT/$method.eval.log" 2>&1
    fi
  done
}

export OMP_NUM_THREADS=1
lane generalist natural &
lane pgd_at trades &
wait
$PY scripts/print_table.py "$OUT"
