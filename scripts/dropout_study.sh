#!/usr/bin/env bash
# The dropout study of spec/lipschitz.md section 3 on Fashion-MNIST (eps 0.1): natural, PGD-AT, TRADES(6) and
# RST(beta), each trained with dropout 0 / 0.2 / 0.5 (model.dropout of the small CNN), same data, model,
# attack and lr as configs/fashion_mnist_<method>.yaml. For every run, on the first N points of the training
# images (the run's own, without augmentation) and of the test set: clean and PGD-20 accuracy
# (eval_n<N>.json, train_eval_n<N>.json) and the local Lipschitz constant (lipschitz_n<LIP_N>.json); then
# scripts/dropout_table.py prints the markdown table (also written to $OUT/table_n<N>.md).
#
#   scripts/dropout_study.sh                                   # the full study into runs/dropout/
#   EPOCHS=3 N=200 OUT=/tmp/dropout METHODS="natural rst" DROPOUTS="0 0.5" \
#     EXTRA="data.train_subset=500" scripts/dropout_study.sh   # a quick look
#
# Re-running after a stop skips what is finished: trainings with a DONE marker, result files that exist; an
# interrupted training resumes from its last.pt. The models are the last checkpoints (WHICH=last): selecting
# the best validation epoch is early stopping, which would shrink the very generalisation gap under study.
# Two lanes, one thread each, fill the 2 cores; runs go to the lanes round-robin, most expensive first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/dropout}
N=${N:-1000}                          # points per split for clean / PGD-20 accuracy
LIP_N=${LIP_N:-$N}                    # points per split for the local Lipschitz constant
EPOCHS=${EPOCHS:-10}
WHICH=${WHICH:-last}
LANES=${LANES:-2}
# Most expensive first (TRADES and RST: an attack and two forwards per step; natural: no attack).
METHODS=${METHODS:-"trades rst pgd_at natural"}
DROPOUTS=${DROPOUTS:-"0 0.2 0.5"}
EXTRA=${EXTRA:-}                      # more overrides for every new training, e.g. "data.train_subset=500"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

train() {  # $1 method, $2 dropout, $3 run folder
  local run=$3 log="$3.train.log"
  [ -f "$run/DONE" ] && return 0
  if [ -f "$run/last.pt" ] || [ -f "$run/last.prev.pt" ]; then
    # A resumed run keeps its config; only train.* may change.
    $PY -m generalist_trainer train --resume "$run" --no-eval train.epochs="$EPOCHS" train.threads=1 train.progress=false \
      >> "$log" 2>&1
  else
    # shellcheck disable=SC2086  # EXTRA is a list of overrides
    $PY -m generalist_trainer train --config "configs/fashion_mnist_$1.yaml" --no-eval model.dropout="$2" \
      train.epochs="$EPOCHS" train.out_dir="$run" train.threads=1 train.progress=false $EXTRA > "$log" 2>&1
  fi
  [ -f "$run/DONE" ] || { echo "training $run did not finish; see $log" >&2; return 1; }
}

evaluate() {  # $1 run folder; each result file is computed once
  local run=$1 log="$1.eval.log" split out
  for split in test train; do
    out="$run/$([ "$split" = train ] && echo train_)eval_n$N.json"
    [ -f "$out" ] || $PY -m generalist_trainer eval "$run" --which "$WHICH" --split "$split" --out "$out" \
      eval.num_points="$N" "eval.attacks=[clean, pgd]" eval.pgd_steps=20 >> "$log" 2>&1 || return 1
  done
  [ -f "$run/lipschitz_n$LIP_N.json" ] || $PY -m generalist_trainer lipschitz "$run" --which "$WHICH" --split both \
    --num-points "$LIP_N" --out "$run/lipschitz_n$LIP_N.json" >> "$log" 2>&1 || return 1
}

runs=()
for dropout in $DROPOUTS; do
  for method in $METHODS; do
    runs+=("$method $dropout")
  done
done

lane() {  # $1: lane index; runs i, i + LANES, ... in order; a failed run is reported and the lane goes on
  local i method dropout run failed=0
  for ((i = $1; i < ${#runs[@]}; i += LANES)); do
    read -r method dropout <<< "${runs[$i]}"
    run="$OUT/${method}_d$dropout"
    if ! { train "$method" "$dropout" "$run" && evaluate "$run"; }; then
      echo "run $run failed; see $run.train.log and $run.eval.log" >&2
      failed=1
    fi
  done
  return $failed
}

pids=()
for ((lane_index = 0; lane_index < LANES; lane_index++)); do
  lane "$lane_index" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
$PY scripts/dropout_table.py "$OUT" --n "$N" --lip-n "$LIP_N" | tee "$OUT/table_n$N.md"
exit $status
