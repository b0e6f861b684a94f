#!/usr/bin/env bash
# On a lent GPU machine, in one call: both Fashion-MNIST tables of the README, trained and evaluated there
# (natural, PGD-AT, TRADES, Generalist, and PGD-AT / TRADES / Generalist + DUCAT; same configs as on the
# CPU), clean / PGD-20 / CW-20 (and pgd_lse-20 for the DUCAT rows) and AutoAttack standard on N = AA_N =
# 1000 test points. Needs .gpu_carry/ from scripts/prepare_gpu_tables.sh, named in `carry`.
# The raw results (configs, epochs.csv, eval JSON, logs; no checkpoints) come back as $OUT/gpu_tables.tgz,
# the printed tables as $OUT/*.md. Each table has a time limit so that what finished still comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:?run this through the device tool, which sets OUT}
[ -d .gpu_carry/site/pyautoattack ] && [ -d .gpu_carry/fashion-mnist ] \
  || { echo "missing .gpu_carry: run scripts/prepare_gpu_tables.sh here and carry .gpu_carry" >&2; exit 1; }
export PYTHONPATH="$PWD/.gpu_carry/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PY=${PY:-python3} N=${N:-1000} AA_N=${AA_N:-1000} OUT=runs/gpu_tables
export EXTRA="data.data_dir=$PWD/.gpu_carry/fashion-mnist ${EXTRA:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$RESULTS/device.txt" 2>&1
$PY -c "import torch, pyautoattack; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  >> "$RESULTS/device.txt" 2>&1 || { cat "$RESULTS/device.txt"; exit 1; }
git rev-parse HEAD >> "$RESULTS/device.txt" 2>/dev/null
timeout "${TABLE_LIMIT_S:-240}" bash scripts/fmnist_table.sh > "$RESULTS/fmnist_table.md" 2> "$RESULTS/fmnist_table.err"
echo "fmnist_table.sh exit $?" >> "$RESULTS/device.txt"
timeout "${DUCAT_LIMIT_S:-240}" bash scripts/ducat_table.sh > "$RESULTS/ducat_table.md" 2> "$RESULTS/ducat_table.err"
echo "ducat_table.sh exit $?" >> "$RESULTS/device.txt"
tar czf "$RESULTS/gpu_tables.tgz" --exclude='*.pt' "$OUT"
cat "$RESULTS/device.txt" "$RESULTS/fmnist_table.md" "$RESULTS/ducat_table.md"
