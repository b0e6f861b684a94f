#!/usr/bin/env bash
# One call on a GPU machine for the GPU engine (issue 4), sized to end inside 8 minutes on an H100/H200:
#   1. the GPU-only tests (pytest -m gpu): two streams == one stream, CUDA graph == eager, torch.compile
#      (inductor) == eager, fused / capturable SGD, the gpu-resident loader on CUDA, and DALI's GPU pipelines
#      when DALI is importable (see "DALI" below); their outcome goes into the results as meta.engine_tests;
#   2. the end-to-end benchmark, ResNet-18, CIFAR-shaped synthetic data, Generalist PGD-10: the reference-style
#      loop and ours at batch 128 (with the per-phase breakdown), ours at 512 (MFU), ours on one stream at 128;
#   3. `python -m trainer profile` of ResNet-18 PGD-10 Generalist at batch 128: the top kernels by device
#      time (printed into profile.log) and the Chrome trace (trace.json.gz);
#   4. a second benchmark run at batch 128 with the CUDA-graph and torch.compile variants (the least proven
#      paths, last, so that a failure or the time limit there costs none of the figures above).
# Raw results: bench/results/<date>-<device>-end-to-end.json and, when $OUT is set, $OUT (with the logs and the
# trace): at most 6 files, all small. The benchmark rewrites its file after every variant, so a stage cut short
# by its time limit keeps the rows it finished ("complete": false).
#
#   BENCH_GIT_COMMIT=<sha> bash bench/run_gpu_end_to_end.sh      # <sha>: `git rev-parse HEAD` where you are
#
# PYTHON picks the interpreter (default: .venv/bin/python when it sees a GPU, else python3). RUN_TESTS=0,
# RUN_PROFILE=0, RUN_EXTRAS=0 skip stages; E2E_ARGS / EXTRA_ARGS pass flags to the two benchmark runs;
# T_TESTS, T_E2E, T_PROFILE, T_EXTRAS are the stages' time limits in seconds (120 + 180 + 60 + 110 = 470).
#
# DALI: the lent machine has no DALI and no registry. If `nvidia.dali` is not importable and earlier calls left
# the parts of the wheel in /tmp/dali (shared/gpu/README.md: one call per part, each carrying .dali/partNN and
# running `mkdir -p /tmp/dali && cp .dali/partNN /tmp/dali/`), carry .dali/SHA256 in this call: the parts are
# joined, the wheel's sha256 checked against it, and installed into /tmp/site. Without it the DALI tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PY=.venv/bin/python
  fi
fi
LOG_DIR=bench/results
OUT_ARGS=()
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  LOG_DIR=$OUT
  OUT_ARGS=(--out-dir "$OUT")
fi
started=$SECONDS
stage() { echo "== $1 (t = $((SECONDS - started)) s)"; }

"$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda); sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible to torch")' || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.memory --format=csv || true

stage "DALI"
if "$PY" -c 'import nvidia.dali' 2>/dev/null; then
  echo "DALI importable"
elif compgen -G "/tmp/dali/part*" >/dev/null && [ -f .dali/SHA256 ]; then
  whl=/tmp/dali/$(awk '{print $2}' .dali/SHA256)
  cat /tmp/dali/part* > "$whl"
  if (cd /tmp/dali && sha256sum -c "$OLDPWD/.dali/SHA256"); then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "$whl" && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "DALI wheel: sha256 mismatch, not installed (parts missing or from another download?)"
  fi
  "$PY" -c 'import nvidia.dali as d; print("DALI", d.__version__)' || echo "DALI still not importable: its tests skip"
else
  echo "DALI not importable and no wheel parts in /tmp/dali (or no .dali/SHA256 carried): the DALI tests skip"
fi

tests_rc=0
export BENCH_ENGINE_TESTS=skipped
if [ "${RUN_TESTS:-1}" != 0 ]; then
  stage "GPU-only tests (pytest -m gpu)"
  timeout "${T_TESTS:-120}" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests/engine tests/data/test_gpu_loader.py \
    tests/data/test_dali_loader.py 2>&1 | tee "$LOG_DIR/gpu_engine_tests.log"
  tests_rc=${PIPESTATUS[0]}
  case "$tests_rc" in
    0) BENCH_ENGINE_TESTS=passed ;;
    124) BENCH_ENGINE_TESTS="timed out after ${T_TESTS:-120} s" ;;
    *) BENCH_ENGINE_TESTS="failed (pytest exit $tests_rc)" ;;
  esac
  echo "engine tests: $BENCH_ENGINE_TESTS"
fi

stage "end-to-end benchmark: reference vs ours at 128, ours at 512, one stream at 128"
# shellcheck disable=SC2086
timeout "${T_E2E:-180}" "$PY" -m bench.bench_end_to_end --device cuda ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${E2E_ARGS:-} 2>&1 \
  | tee "$LOG_DIR/e2e.log"
e2e_rc=${PIPESTATUS[0]}

if [ "${RUN_PROFILE:-1}" != 0 ]; then
  stage "profile: ResNet-18 PGD-10 Generalist, batch 128, 3 recorded iterations"
  trace=/tmp/generalist_trace.json
  timeout "${T_PROFILE:-60}" "$PY" -m trainer profile --steps 3 --top 30 --out "$trace" \
    data.dataset=synthetic "data.synthetic_shape=[3, 32, 32]" data.synthetic_train_size=5120 \
    data.synthetic_test_size=16 data.val_size=0 data.batch_size=128 model.arch=resnet18 method.name=generalist \
    attack.steps=10 train.device=cuda 2>&1 | tee "$LOG_DIR/profile.log"
  [ -f "$trace" ] && gzip -c "$trace" > "$LOG_DIR/trace.json.gz" && ls -l "$LOG_DIR/trace.json.gz"
fi

if [ "${RUN_EXTRAS:-1}" != 0 ]; then
  stage "end-to-end benchmark: CUDA graphs and torch.compile at 128"
  # shellcheck disable=SC2086
  timeout "${T_EXTRAS:-110}" "$PY" -m bench.bench_end_to_end --device cuda --mfu-batch 128 --no-breakdown \
    --extra graphs,compile ${OUT_ARGS[@]+"${OUT_ARGS[@]}"} ${EXTRA_ARGS:-} 2>&1 | tee "$LOG_DIR/e2e_extras.log"
fi

stage "done"
[ "$e2e_rc" = 0 ] || echo "end-to-end benchmark exit $e2e_rc (124: its time limit; the rows it finished are in the file)"
exit $(( tests_rc != 0 || e2e_rc != 0 ))
