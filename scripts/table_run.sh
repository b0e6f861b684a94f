#!/usr/bin/env bash
# One run of the README's Fashion-MNIST tables, trained and evaluated: `bash scripts/table_run.sh METHOD`,
# METHOD one of natural, pgd_at, trades, generalist (issue 2's table) or pgd_at_ducat, trades_ducat,
# generalist_ducat (issue 6's). Config: configs/fashion_mnist_<METHOD>.yaml. Every step is skipped when its
# output exists (DONE marker, eval JSON), a stopped training continues from its last checkpoint and
# AutoAttack keeps a state file, so after a stop just re-run. scripts/fmnist_table.sh and
# scripts/ducat_table.sh run several of these side by side.
#   eval_n<N>.json:   clean / PGD-20 / CW-20 on the first N test points (+ pgd_lse-20 for the DUCAT runs);
#                     for Generalist all three models (global, robust, natural)
#   eval_aa<AA_N>.json: AutoAttack standard on the first AA_N test points (Generalist: the global model)
set -euo pipefail
cd "$(dirname "$0")/.."
method=${1:?usage: table_run.sh METHOD}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/table}
N=${N:-1000}
AA_N=${AA_N:-1000}
EXTRA=${EXTRA:-}  # more overrides for every new training, e.g. "data.data_dir=/data/fashion-mnist"
export OMP_NUM_THREADS=1
[ -f "configs/fashion_mnist_$method.yaml" ] || { echo "table_run.sh: no configs/fashion_mnist_$method.yaml" >&2; exit 2; }
mkdir -p "$OUT"
run=$OUT/$method

case $method in
  *_ducat)
    # DUCAT switches on late (the last epoch of a 3-epoch run): the best-on-validation checkpoint can be
    # one written before it did, i.e. a model DUCAT never trained, so these rows use the last checkpoint.
    which=${WHICH:-last}; attacks="clean, pgd, cw, pgd_lse" ;;
  *)
    which=${WHICH:-best}; attacks="clean, pgd, cw" ;;
esac
case $method in generalist*) aa_models="[global]" ;; *) aa_models="[]" ;; esac
case $method in generalist_ducat) n_models="[global]" ;; *) n_models="[]" ;; esac  # [] = every model

if [ ! -f "$run/DONE" ]; then
  if [ -f "$run/last.pt" ]; then
    $PY -m generalist_trainer train --resume "$run" --no-eval >> "$OUT/$method.train.log" 2>&1
  else
    # shellcheck disable=SC2086  # EXTRA is a list of overrides
    $PY -m generalist_trainer train --config "configs/fashion_mnist_$method.yaml" --no-eval train.out_dir="$run" \
      train.threads=1 train.progress=false train.checkpoint_every_steps=20 $EXTRA > "$OUT/$method.train.log" 2>&1
  fi
fi
[ -f "$run/eval_n$N.json" ] || $PY -m generalist_trainer eval "$run" --which "$which" --out "$run/eval_n$N.json" \
  eval.num_points="$N" "eval.attacks=[$attacks]" "eval.models=$n_models" >> "$OUT/$method.eval.log" 2>&1
[ -f "$run/eval_aa$AA_N.json" ] || $PY -m generalist_trainer eval "$run" --which "$which" --out "$run/eval_aa$AA_N.json" \
  eval.num_points="$AA_N" "eval.attacks=[clean, autoattack]" "eval.models=$aa_models" >> "$OUT/$method.eval.log" 2>&1
