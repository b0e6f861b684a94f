#!/usr/bin/env bash
# The one script for a lent GPU machine (about 15 minutes of device time in all, 10 per command): ordered
# stages, each under its own time limit, a failing or timed-out stage never stopping the next. The core
# stages' limits add up to 8 minutes (480 s):
#
#   stage          limit  what
#   setup            20   versions (torch, triton, CUDA, device) into stages.json, nvidia-smi, carried wheels
#   native_build     40   CMake build of kernels/cuda (sm_90 + PTX); a failure only turns the `cuda` rows into skips
#   gpu_tests       100   pytest -m gpu tests/ (streams, CUDA graphs, compile, fused SGD, loaders, native kernels)
#   kernel_tests     70   pytest tests/kernels on the GPU: every Triton kernel against its torch reference
#   kernel_bench     90   bench_pgd_step (linf, l2, random_start) and bench_averaging (flat, ResNet-18) at GPU
#                         sizes; providers torch, triton, cuda (torch.compile rows: optional kernel_bench_compile)
#   e2e             120   bench_end_to_end: reference vs ours at batch 128 (per-phase breakdown), ours at 512
#                         (MFU), ours on one stream at 128 (two streams vs one)
#   profile          40   python -m generalist_trainer profile, ResNet-18 PGD-10 Generalist at 128: top kernels, trace
#
# Optional stages, run only when named in STAGES (each a later call, or the rest of a call's 10 minutes):
#   e2e_extras 110 (CUDA graphs and torch.compile at 128), kernel_bench_compile 120 (torch.compile provider
#   rows), dali 120 (installs DALI from staged parts, fails loudly when `import nvidia.dali` fails, runs its GPU
#   tests and fails if any skip), tables 510 (both Fashion-MNIST tables of the README; needs .gpu_carry/tables),
#   sm90_compile 90 (tests/kernels/sm90_compile.py under the image's own triton; needs no GPU).
#
# Usage, through the device tool (bench/README.md, "Running", has the call sequence; bench/prepare_gpu_carry.sh
# builds what the optional stages carry):
#   BENCH_GIT_COMMIT=<sha> bash bench/gpu_all.sh                  # the core stages, timeout_s=560
#   STAGES=dali BENCH_GIT_COMMIT=<sha> bash bench/gpu_all.sh      # after the DALI parts were staged
#   DRY_RUN=1 bash bench/gpu_all.sh                               # here, on the CPU: CUDA stages skipped
#
# STAGES: comma list of stage names and the groups core (default), optional, all. SKIP: names to leave out.
# T_<STAGE> (T_GPU_TESTS=150, ...) overrides a limit; PER_TEST_S the per-test limit of the test stages (75 s for
# gpu_tests, 45 for kernel_tests, 60 for dali);
# TEST_WORKERS pytest-xdist processes where xdist is importable (4 for gpu_tests, 2x for kernel_tests).
# PYTHON: the interpreter (default python3, the one with torch on the GPU image). BENCH_GIT_COMMIT: the commit
# (the device copy has no .git). E2E_ARGS, PGD_ARGS, AVG_ARGS, EXTRA_ARGS: more flags for the benchmarks.
#
# Results go to $OUT (the device tool's folder) the moment they exist, else to bench/results/gpu_all-<time>/:
#   stages.json (rewritten after every stage: commit, versions, each stage's status, seconds, limit, detail),
#   gpu_all.log (everything printed), <date>-<device>.json (kernel benchmarks), <date>-<device>-end-to-end.json,
#   trace.json.gz (profile), gpu_tables.tgz (tables), sm90_compile.json: at most 7 files, under the tool's 8.
set -uo pipefail
cd "$(dirname "$0")/.."
SELF=bench/gpu_all.sh
export PYTHONUNBUFFERED=1

# name, default limit (s), needs CUDA, group. The order is the order they run in.
STAGE_TABLE="
setup 20 0 core
native_build 40 1 core
gpu_tests 100 1 core
kernel_tests 70 1 core
kernel_bench 90 1 core
e2e 120 1 core
profile 40 1 core
e2e_extras 110 1 optional
kernel_bench_compile 120 1 optional
dali 120 1 optional
tables 510 1 optional
sm90_compile 90 0 optional
"

detail() { printf '%s' "$*" > "$STAGE_DETAIL"; }
out_args() { if [ -n "${OUT:-}" ]; then printf '%s\n' --out-dir "$OUT"; fi; }
have_xdist() { "$PY" -c 'import xdist' >/dev/null 2>&1; }

# Run pytest with the per-test limit; the closing counts become the stage's detail. $1: log name.
run_pytest() {  # log name, xdist workers, per-test limit (s; PER_TEST_S overrides), pytest arguments...
  local name=$1 workers=$2 per_test=${PER_TEST_S:-$3}
  shift 3
  local args=(-q -p no:cacheprovider -p generalist_trainer.bench.pytest_stage_timeout --per-test-timeout "$per_test" -rfEs)
  if [ "$workers" -gt 1 ] && have_xdist; then args+=(-n "$workers"); fi
  "$PY" -m pytest "${args[@]}" "$@" 2>&1 | tee "$STATE/$name.log"
  local rc=${PIPESTATUS[0]}
  local outcome
  outcome=$("$PY" -m generalist_trainer.bench.gpu_stages pytest-outcome "$STATE/$name.log") || outcome="no pytest summary line"
  detail "$outcome"
  return "$rc"
}

stage_setup() {
  "$PY" -m generalist_trainer.bench.gpu_stages versions "$SUMMARY"
  local rc=$?
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv
  fi
  if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$CARRY"/wheels/*.whl || { detail "pip install of $CARRY/wheels failed"; return 1; }
  fi
  if [ "$rc" = 0 ]; then
    echo 1 > "$STATE/cuda"
    return 0
  fi
  echo 0 > "$STATE/cuda"
  if [ "$rc" = 3 ]; then
    detail "no CUDA device visible to torch${DRY_RUN:+ (dry run)}"
    [ -n "${DRY_RUN:-}" ] && return 0
  else
    detail "the version probe failed (exit $rc)"
  fi
  return 1
}

stage_native_build() {
  "$CMAKE" -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null && "$CMAKE" --build "$BUILD_DIR" -j "$(nproc)" \
    && [ -f "$BUILD_DIR/libgeneralist_kernels_cuda.so" ] && detail "built $BUILD_DIR/libgeneralist_kernels_cuda.so"
}

stage_gpu_tests() {
  # tests/kernels/test_cuda_native.py uses the library native_build made instead of building its own.
  if [ -f "$NATIVE_LIB" ]; then export GENERALIST_KERNELS_TEST_LIB=$NATIVE_LIB; fi
  run_pytest gpu_tests "${TEST_WORKERS:-4}" 75 -m gpu tests
}

stage_kernel_tests() {
  if [ -f "$NATIVE_LIB" ]; then export GENERALIST_KERNELS_TEST_LIB=$NATIVE_LIB; fi
  # The sm_90 compile sweep and the ptxas spill checks need no GPU: CI runs them.
  run_pytest kernel_tests "$(( ${TEST_WORKERS:-4} * 2 ))" 45 -m "not gpu" tests/kernels \
    --ignore=tests/kernels/test_sm90_compile.py -k "not do_not_spill"
}

kernel_bench_with() {
  local providers=$1 rc=0 op
  local out
  mapfile -t out < <(out_args)
  # One process per op and part, each writing its rows when it ends, so that a time limit costs only the part
  # it cut; the parts with targets (L-inf step, averaging) first.
  # shellcheck disable=SC2086  # PGD_ARGS / AVG_ARGS are lists of flags
  "$PY" -m generalist_trainer.bench.bench_pgd_step --ops linf --providers "$providers" ${out[@]+"${out[@]}"} ${PGD_ARGS:-} || rc=1
  # shellcheck disable=SC2086
  "$PY" -m generalist_trainer.bench.bench_averaging --no-resnet18 --providers "$providers" ${out[@]+"${out[@]}"} ${AVG_ARGS:-} || rc=1
  # shellcheck disable=SC2086
  "$PY" -m generalist_trainer.bench.bench_averaging --sizes none --providers "$providers$2" ${out[@]+"${out[@]}"} ${AVG_ARGS:-} || rc=1
  for op in random_start l2; do
    # shellcheck disable=SC2086
    "$PY" -m generalist_trainer.bench.bench_pgd_step --ops "$op" --providers "$providers" ${out[@]+"${out[@]}"} ${PGD_ARGS:-} || rc=1
  done
  return "$rc"
}

stage_kernel_bench() { kernel_bench_with torch,triton,cuda ",foreach_lerp,foreach_muladd,state_dict_per_key"; }
stage_kernel_bench_compile() { kernel_bench_with compile ""; }

stage_e2e() {
  local out
  mapfile -t out < <(out_args)
  # shellcheck disable=SC2086  # E2E_ARGS is a list of flags
  "$PY" -m generalist_trainer.bench.bench_end_to_end --device cuda ${out[@]+"${out[@]}"} ${E2E_ARGS:-}
}

stage_e2e_extras() {
  local out
  mapfile -t out < <(out_args)
  # shellcheck disable=SC2086
  "$PY" -m generalist_trainer.bench.bench_end_to_end --device cuda --mfu-batch 128 --no-breakdown --extra graphs,compile \
    ${out[@]+"${out[@]}"} ${EXTRA_ARGS:-}
}

stage_profile() {
  local trace=$STATE/trace.json
  "$PY" -m generalist_trainer profile --steps 3 --top 30 --out "$trace" \
    data.dataset=synthetic "data.synthetic_shape=[3, 32, 32]" data.synthetic_train_size=5120 \
    data.synthetic_test_size=16 data.val_size=0 data.batch_size=128 model.arch=resnet18 method.name=generalist \
    attack.steps=10 train.device=cuda || return 1
  [ -f "$trace" ] || { detail "no trace written"; return 1; }
  gzip -c "$trace" > "$OUT_DIR/trace.json.gz" && detail "trace.json.gz $(wc -c < "$OUT_DIR/trace.json.gz") bytes"
}

stage_dali() {
  local staged=${DALI_STAGE_DIR:-/tmp/dali} sums=${DALI_SHA256_FILE:-.dali/SHA256}
  case "$sums" in /*) ;; *) sums=$PWD/$sums ;; esac
  if ! "$PY" -c 'import nvidia.dali' >/dev/null 2>&1; then
    if compgen -G "$staged/part*" >/dev/null && [ -f "$sums" ]; then
      local whl
      whl=$staged/$(awk '{print $2}' "$sums")
      cat "$staged"/part* > "$whl"
      if ! (cd "$staged" && sha256sum -c --quiet "$sums"); then
        detail "the joined DALI wheel does not match $sums (a part missing, or from another download): restage"
        return 1
      fi
      # The codec wheels staged beside the parts, and the small dependencies carried in this call.
      local wheels=() w
      for w in "$staged"/*.whl "$CARRY"/dali/*.whl; do [ -f "$w" ] && wheels+=("$w"); done
      echo "installing into $SITE: ${wheels[*]##*/}"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" || { detail "pip install of the DALI wheels failed"; return 1; }
    else
      echo "no DALI: nothing importable, and no parts in $staged with $sums (bench/README.md: DALI)"
    fi
  fi
  local err
  if ! err=$("$PY" -c 'import nvidia.dali as d; print("DALI", d.__version__)' 2>&1); then
    err=$(printf '%s\n' "$err" | grep -v '^\s*$' | tail -n 1)
    echo "DALI: FAILED: import nvidia.dali: $err"
    detail "import nvidia.dali: $err"
    return 1
  fi
  echo "$err"
  run_pytest dali 1 60 -m gpu tests/data/test_dali_loader.py
  local rc=$? outcome
  outcome=$(cat "$STAGE_DETAIL")
  if [ "$rc" = 0 ] && [[ "$outcome" == *skipped* ]]; then
    echo "DALI: FAILED: its GPU tests skipped ($outcome); see the skip reasons above"
    detail "DALI tests skipped: $outcome"
    return 1
  fi
  return "$rc"
}

stage_tables() {
  local site=$CARRY/tables/site data=$CARRY/tables/fashion-mnist runs=${TABLE_RUNS:-runs/gpu_tables}
  if [ ! -d "$site/pyautoattack" ] || [ ! -d "$data" ]; then
    detail "missing $CARRY/tables (pyautoattack and Fashion-MNIST): run bench/prepare_gpu_carry.sh and carry it"
    return 1
  fi
  local rc=0 results=$STATE/tables
  mkdir -p "$results"
  case "$site" in /*) ;; *) site=$PWD/$site ;; esac
  case "$data" in /*) ;; *) data=$PWD/$data ;; esac
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # The table scripts read OUT as their runs folder, not the device tool's output folder.
  OUT=$runs PY=$PY N=${N:-1000} AA_N=${AA_N:-1000} EXTRA="data.data_dir=$data ${EXTRA:-}" \
    timeout -k 10 "${TABLE_LIMIT_S:-240}" bash scripts/fmnist_table.sh > "$results/fmnist_table.md" \
    2> "$results/fmnist_table.err" || rc=1
  OUT=$runs PY=$PY N=${N:-1000} AA_N=${AA_N:-1000} EXTRA="data.data_dir=$data ${EXTRA:-}" \
    timeout -k 10 "${DUCAT_LIMIT_S:-240}" bash scripts/ducat_table.sh > "$results/ducat_table.md" \
    2> "$results/ducat_table.err" || rc=1
  cat "$results/fmnist_table.md" "$results/ducat_table.md"
  mkdir -p "$runs"
  tar czf "$OUT_DIR/gpu_tables.tgz" --exclude='*.pt' -C "$(dirname "$runs")" "$(basename "$runs")" -C "$STATE" tables
  return "$rc"
}

stage_sm90_compile() {
  "$PY" -m tests.kernels.sm90_compile --out "$OUT_DIR/sm90_compile.json" --jobs "$(nproc)"
}

if [ "${1:-}" = __stage ]; then  # one stage, in its own process (and process group, under timeout)
  "stage_$2"
  exit $?
fi

# ---------------------------------------------------------------------------------------------------------
PY=${PYTHON:-python3}
CMAKE=${CMAKE:-cmake}
CARRY=${GPU_CARRY:-.gpu_carry}
SITE=${GPU_SITE:-/tmp/site}
BUILD_DIR=${GPU_BUILD_DIR:-build}
NATIVE_LIB=$PWD/$BUILD_DIR/libgeneralist_kernels_cuda.so
OUT_DIR=${OUT:-bench/results/gpu_all-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR" "$SITE"
SUMMARY=$OUT_DIR/stages.json
STATE=$(mktemp -d)
STAGE_DETAIL=$STATE/detail
export PY CMAKE CARRY SITE BUILD_DIR NATIVE_LIB OUT_DIR SUMMARY STATE STAGE_DETAIL
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GENERALIST_KERNELS_CUDA_LIB=$NATIVE_LIB
COMMIT=${BENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export BENCH_GIT_COMMIT=$COMMIT

selected() {  # is stage $1 (group $2) selected by STAGES and not in SKIP?
  local token
  for token in ${SKIP//,/ }; do [ "$token" = "$1" ] && return 1; done
  for token in ${STAGES//,/ }; do
    case "$token" in all | "$1" | "$2") return 0 ;; esac
  done
  return 1
}

run_stage() {  # name limit needs_cuda
  local name=$1 limit=$2 cuda=$3 status rc started
  if [ "$cuda" = 1 ] && [ "$(cat "$STATE/cuda" 2>/dev/null)" != 1 ]; then
    if [ -n "${DRY_RUN:-}" ]; then status="skipped: dry run, no CUDA device"; else status="skipped: no CUDA device (setup)"; fi
    echo "== $name: $status"
    "$PY" -m generalist_trainer.bench.gpu_stages record "$SUMMARY" "$name" "$status" 0
    return
  fi
  echo "== $name (limit $limit s; t = $((SECONDS - T0)) s)"
  : > "$STAGE_DETAIL"
  started=$SECONDS
  timeout -k 10 "$limit" bash "$SELF" __stage "$name"
  rc=$?
  local seconds=$((SECONDS - started)) info
  info=$(cat "$STAGE_DETAIL" 2>/dev/null)
  case "$rc" in
    0) status=passed ;;
    124 | 137) status="timed out after $limit s" ;;
    *) if [ -n "$info" ]; then status="failed: $info"; info=""; else status="failed (exit $rc)"; fi ;;
  esac
  [ "$rc" = 0 ] || FAILED=1
  echo "== $name: $status${info:+ ($info)} in $seconds s"
  "$PY" -m generalist_trainer.bench.gpu_stages record "$SUMMARY" "$name" "$status" "$seconds" "$info"
  case "$name" in  # the test outcomes go into the benchmarks' results files (meta.engine_tests / kernel_tests)
    gpu_tests) export BENCH_ENGINE_TESTS="$status${info:+: $info}" ;;
    kernel_tests) export BENCH_KERNEL_TESTS="$status${info:+: $info}" ;;
  esac
}

main() {
  local name limit cuda group plan="" budget=0
  while read -r name limit cuda group; do
    [ -n "$name" ] || continue
    local var="T_${name^^}"
    limit=${!var:-$limit}
    if selected "$name" "$group"; then
      plan+="$name:$limit:1:$cuda,"
      budget=$((budget + limit))
    else
      plan+="$name:$limit:0:$cuda,"
    fi
  done <<< "$STAGE_TABLE"
  echo "== bench/gpu_all.sh: commit $COMMIT; stages ${STAGES} (skip: ${SKIP:-none}); limits add up to $budget s;" \
    "results in $OUT_DIR"
  [ "$COMMIT" = unknown ] && echo "WARNING: no BENCH_GIT_COMMIT and no .git: the results will say commit 'unknown'"
  [ "$budget" -gt 540 ] && echo "WARNING: $budget s of stage limits do not fit one 600 s device command"
  "$PY" -m generalist_trainer.bench.gpu_stages init "$SUMMARY" --commit "$COMMIT" --plan "$plan" ${DRY_RUN:+--dry-run} || return 1
  T0=$SECONDS
  FAILED=0
  while read -r name limit cuda group; do
    [ -n "$name" ] || continue
    local var="T_${name^^}"
    selected "$name" "$group" && run_stage "$name" "${!var:-$limit}" "$cuda"
  done <<< "$STAGE_TABLE"
  "$PY" -m generalist_trainer.bench.gpu_stages finish "$SUMMARY"
  echo "== done in $((SECONDS - T0)) s; stages.json:"
  "$PY" -m generalist_trainer.bench.gpu_stages table "$SUMMARY"
  return "$FAILED"
}

STAGES=${STAGES:-core}
SKIP=${SKIP:-}
main 2>&1 | tee -a "$OUT_DIR/gpu_all.log"
status=${PIPESTATUS[0]}
rm -rf "$STATE"
exit "$status"
