"""bench/gpu_all.sh without a GPU: a real dry run on the CPU, and full runs with a stand-in interpreter that
plays the GPU machine (versions with CUDA, pytest, the benchmarks, the profiler, DALI's import, the table
scripts' trainer calls) so that every stage's wiring runs in seconds: the order, the limits, each result
file in $OUT as soon as it exists, a failing or hanging stage not stopping the next, the summary JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.table_script_runner import FAKE_PY as TABLE_FAKE_PY

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_all.sh"
CORE = ["setup", "native_build", "gpu_tests", "kernel_tests", "kernel_bench", "e2e", "profile"]
OPTIONAL = ["e2e_extras", "kernel_bench_compile", "dali", "tables", "sm90_compile"]

# The stand-in interpreter: answers what the GPU machine's python3 would, records every call in $CALLS,
# and hands anything it does not play (bookkeeping, the table printers) to the real interpreter.
STAND_IN = r'''#!{real}
import json, os, subprocess, sys, time
args = sys.argv[1:]
with open(os.environ["CALLS"], "a") as fh:
    fh.write(" ".join(args) + "\n")
mod = args[1] if len(args) > 1 and args[0] == "-m" else ""
if mod and mod in os.environ.get("FAKE_FAIL", "").split(","):
    print(f"stand-in: {{mod}} fails", file=sys.stderr)
    sys.exit(1)
if mod and mod in os.environ.get("FAKE_HANG", "").split(","):
    time.sleep(60)

def opt(name):
    return args[args.index(name) + 1] if name in args else None

def write(directory, name, payload):
    if directory:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        runs = json.load(open(path)) if os.path.exists(path) else []
        runs.append(payload)
        json.dump(runs, open(path, "w"))

if mod == "generalist_trainer.bench.gpu_stages" and args[2] == "versions":
    path = args[3]
    data = json.load(open(path))
    data["versions"] = {{"torch": "2.11.0+stand-in", "triton": "3.6.0", "cuda_available": True,
                        "device": "Stand-in H200", "python": "3.12.3"}}
    json.dump(data, open(path, "w"))
    print("torch=2.11.0+stand-in cuda_available=True")
elif mod == "pytest":
    print("3 passed, 1 skipped in 0.1s")
    if "tests/data/test_dali_loader.py" in args:
        print(os.environ.get("FAKE_DALI_TESTS", "5 passed in 0.2s"))
elif mod in ("generalist_trainer.bench.bench_pgd_step", "generalist_trainer.bench.bench_averaging"):
    write(opt("--out-dir"), "2026-01-01-stand-in-h200.json",
          {{"benchmark": mod, "args": args, "commit": os.environ.get("BENCH_GIT_COMMIT"),
           "kernel_tests": os.environ.get("BENCH_KERNEL_TESTS")}})
elif mod == "generalist_trainer.bench.bench_end_to_end":
    write(opt("--out-dir"), "2026-01-01-stand-in-h200-end-to-end.json",
          {{"args": args, "engine_tests": os.environ.get("BENCH_ENGINE_TESTS")}})
elif mod == "generalist_trainer" and args[2] == "profile":
    open(opt("--out"), "w").write('{{"traceEvents": []}}')
elif mod == "generalist_trainer":
    os.execv("/bin/bash", ["bash", os.environ["TABLE_FAKE"], *args])
elif mod == "pip":
    if opt("--target"):
        os.makedirs(opt("--target"), exist_ok=True)
        open(os.path.join(opt("--target"), "stand_in_installed"), "w").close()
elif mod == "tests.kernels.sm90_compile":
    json.dump({{"variants": []}}, open(opt("--out"), "w"))
elif args[:1] == ["-c"] and "nvidia.dali" in args[1]:
    err = os.environ.get("FAKE_DALI_IMPORT_ERROR")
    installed = os.path.exists(os.path.join(os.environ["GPU_SITE"], "stand_in_installed"))
    if not err and not installed and not os.environ.get("FAKE_DALI_PREINSTALLED"):
        err = "ModuleNotFoundError: No module named 'nvidia.dali'"
    if err:
        print("Traceback (most recent call last):\n  ...\n" + err, file=sys.stderr)
        sys.exit(1)
    print("DALI 2.4.0")
elif args[:1] == ["-c"] and "xdist" in args[1]:
    sys.exit(0)
else:
    os.execv(sys.executable, [sys.executable, *args])
'''

STAND_IN_CMAKE = r'''#!/usr/bin/env bash
echo "cmake $*" >> "$CALLS"
if [ "$1" = --build ]; then
  [ -n "${FAKE_CMAKE_FAIL:-}" ] && { echo "nvcc: error" >&2; exit 2; }
  touch "$2/libgeneralist_kernels_cuda.so"
else
  mkdir -p "$4"
fi
'''


def _run(tmp_path: Path, real_python: bool = False, **env_extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TABLE_RUNS": str(tmp_path / "runs" / "gpu_tables"),
           "GPU_SITE": str(tmp_path / "site"), "GPU_BUILD_DIR": str(tmp_path / "build"),
           "GPU_CARRY": str(tmp_path / "carry"), "CALLS": str(tmp_path / "calls.txt"),
           "BENCH_GIT_COMMIT": "0123abc", "REAL_PY": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    if not real_python:
        stand_in = tmp_path / "python3"
        stand_in.write_text(STAND_IN.format(real=sys.executable))
        stand_in.chmod(0o755)
        cmake = tmp_path / "cmake"
        cmake.write_text(STAND_IN_CMAKE)
        cmake.chmod(0o755)
        table_fake = tmp_path / "table_fake_py"
        table_fake.write_text(TABLE_FAKE_PY)
        env.update(PYTHON=str(stand_in), CMAKE=str(cmake), TABLE_FAKE=str(table_fake))
    else:
        env["PYTHON"] = sys.executable
    env.update(env_extra)
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    summary_path = out / "stages.json"
    assert summary_path.is_file(), f"no stages.json:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(summary_path.read_text())


def _status(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


def test_core_stage_limits_fit_eight_minutes(tmp_path):
    _, summary = _run(tmp_path, DRY_RUN="1", STAGES="none")
    limits = {s["name"]: s["limit_s"] for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == CORE + OPTIONAL
    assert sum(limits[name] for name in CORE) <= 480, limits
    assert all(limits[name] > 0 for name in CORE + OPTIONAL)


def test_dry_run_on_this_cpu(tmp_path):
    """The real interpreter, no GPU: setup passes and records the versions, every CUDA stage is skipped."""
    proc, summary = _run(tmp_path, real_python=True, DRY_RUN="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = _status(summary)
    assert status["setup"] == "passed"
    assert all(status[name] == "skipped: dry run, no CUDA device" for name in CORE[1:]), status
    assert all(status[name] == "not selected" for name in OPTIONAL)
    assert summary["git_commit"] == "0123abc" and summary["dry_run"] is True
    assert summary["versions"]["torch"] and summary["versions"]["cuda_available"] is False
    assert summary["selected_budget_s"] == sum(s["limit_s"] for s in summary["stages"][:len(CORE)])
    assert (tmp_path / "out" / "gpu_all.log").read_text().count("== ") >= len(CORE)


def test_without_a_gpu_and_no_dry_run_the_script_fails(tmp_path):
    proc, summary = _run(tmp_path, real_python=True)
    assert proc.returncode == 1
    status = _status(summary)
    assert status["setup"] == "failed: no CUDA device visible to torch"
    assert status["gpu_tests"] == "skipped: no CUDA device (setup)"


def test_every_core_stage_runs_in_order_and_writes_its_results(tmp_path):
    proc, summary = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(s == "passed" for name, s in _status(summary).items() if name in CORE), _status(summary)
    assert summary["versions"]["torch"] == "2.11.0+stand-in" and summary["git_commit"] == "0123abc"
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["2026-01-01-stand-in-h200-end-to-end.json", "2026-01-01-stand-in-h200.json", "gpu_all.log",
                     "stages.json", "trace.json.gz"], files
    kernel_runs = json.loads((out / "2026-01-01-stand-in-h200.json").read_text())
    parts = [" ".join(r["args"][2:4]) for r in kernel_runs]
    assert parts == ["--ops linf", "--no-resnet18 --providers", "--sizes none", "--ops random_start", "--ops l2"]
    assert all(r["commit"] == "0123abc" and r["kernel_tests"].startswith("passed") for r in kernel_runs)
    assert all("compile" not in r["args"][r["args"].index("--providers") + 1].split(",") for r in kernel_runs)
    e2e = json.loads((out / "2026-01-01-stand-in-h200-end-to-end.json").read_text())
    assert e2e[0]["engine_tests"].startswith("passed") and "--device" in e2e[0]["args"]
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    order = [next(i for i, c in enumerate(calls) if key in c) for key in
             ("gpu_stages versions", "cmake -S", "-m gpu tests", "tests/kernels", "bench.bench_pgd_step",
              "bench.bench_end_to_end", "generalist_trainer profile")]
    assert order == sorted(order), calls
    pytest_calls = [c for c in calls if c.startswith("-m pytest")]
    assert all("--per-test-timeout" in c and "generalist_trainer.bench.pytest_stage_timeout" in c for c in pytest_calls)
    assert all("-n" in c.split() for c in pytest_calls), "xdist is importable in the stand-in: tests run in parallel"
    assert "--ignore=tests/kernels/test_sm90_compile.py" in next(c for c in calls if "tests/kernels" in c)


def test_a_failing_or_hanging_stage_does_not_stop_the_next(tmp_path):
    proc, summary = _run(tmp_path, FAKE_CMAKE_FAIL="1", FAKE_FAIL="generalist_trainer.bench.bench_end_to_end",
                         FAKE_HANG="generalist_trainer", T_PROFILE="2")
    assert proc.returncode == 1
    status = _status(summary)
    assert status["native_build"].startswith("failed"), status
    assert status["gpu_tests"] == status["kernel_tests"] == status["kernel_bench"] == "passed", status
    assert status["e2e"].startswith("failed"), status
    assert status["profile"] == "timed out after 2 s", status
    assert "2026-01-01-stand-in-h200.json" in os.listdir(tmp_path / "out")  # the Triton benches ran regardless


def _stage_dali(tmp_path: Path, wheel: bytes = b"the dali wheel") -> Path:
    staged = tmp_path / "dali_parts"
    staged.mkdir()
    (staged / "part00").write_bytes(wheel[:5])
    (staged / "part01").write_bytes(wheel[5:])
    (staged / "nvidia_nvimgcodec_cu13-0.9.0.20-py3-none-manylinux_2_28_x86_64.whl").write_bytes(b"codec")
    carry = tmp_path / "carry" / "dali"
    carry.mkdir(parents=True)
    (carry / "optree-0.20.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"dep")
    import hashlib

    sums = tmp_path / "SHA256"
    sums.write_text(f"{hashlib.sha256(b'the dali wheel').hexdigest()}  nvidia_dali_cuda130-2.4.0-py3-none-"
                    "manylinux_2_28_x86_64.whl\n")
    return staged


def test_dali_joins_the_staged_parts_and_installs_them_with_their_dependencies(tmp_path):
    staged = _stage_dali(tmp_path)
    proc, summary = _run(tmp_path, STAGES="setup,dali", DALI_STAGE_DIR=str(staged),
                         DALI_SHA256_FILE=str(tmp_path / "SHA256"))
    status = _status(summary)
    assert status["dali"] == "passed", (status, proc.stdout[-2000:])
    pip = next(c for c in (tmp_path / "calls.txt").read_text().splitlines() if c.startswith("-m pip install"))
    for name in ("nvidia_dali_cuda130-2.4.0", "nvidia_nvimgcodec_cu13", "optree-0.20.0"):
        assert name in pip, pip


def test_dali_import_failure_is_loud(tmp_path):
    staged = _stage_dali(tmp_path)
    proc, summary = _run(tmp_path, STAGES="setup,dali", DALI_STAGE_DIR=str(staged),
                         DALI_SHA256_FILE=str(tmp_path / "SHA256"),
                         FAKE_DALI_IMPORT_ERROR="ModuleNotFoundError: No module named 'optree'")
    assert proc.returncode == 1
    assert _status(summary)["dali"] == "failed: import nvidia.dali: ModuleNotFoundError: No module named 'optree'"
    assert "DALI: FAILED: import nvidia.dali" in proc.stdout


def test_dali_with_skipped_tests_fails(tmp_path):
    proc, summary = _run(tmp_path, STAGES="setup,dali", DALI_STAGE_DIR=str(tmp_path / "none"),
                         FAKE_DALI_PREINSTALLED="1", FAKE_DALI_TESTS="2 passed, 3 skipped in 0.2s")
    assert _status(summary)["dali"] == "failed: DALI tests skipped: 2 passed, 3 skipped", _status(summary)


def test_dali_wheel_that_does_not_match_its_checksum_is_not_installed(tmp_path):
    staged = _stage_dali(tmp_path)
    (staged / "part01").write_bytes(b"XXXXXXXXX")
    _, summary = _run(tmp_path, STAGES="setup,dali", DALI_STAGE_DIR=str(staged),
                      DALI_SHA256_FILE=str(tmp_path / "SHA256"))
    assert "does not match" in _status(summary)["dali"]
    assert not any(c.startswith("-m pip") for c in (tmp_path / "calls.txt").read_text().splitlines())


def test_tables_stage_runs_both_table_scripts_and_packs_their_results(tmp_path):
    missing_proc, missing = _run(tmp_path / "a", STAGES="setup,tables")
    assert _status(missing)["tables"].startswith("failed: missing"), _status(missing)
    carry = tmp_path / "b" / "carry" / "tables"
    (carry / "site" / "pyautoattack").mkdir(parents=True)
    (carry / "fashion-mnist").mkdir()
    result = {"clean": 0.9, "pgd20": 0.7, "cw20": 0.69, "autoattack": 0.66, "pgd_lse20": 0.68}
    proc, summary = _run(tmp_path / "b", STAGES="setup,tables", N="1000", AA_N="1000", JOBS="2",
                         RESULT_JSON=json.dumps({"models": {"global": result}}), FAIL_RUN="no-such-run")
    assert _status(summary)["tables"] == "passed", (_status(summary), proc.stdout[-3000:])
    assert "| generalist | global | 90.0 | 70.0 | 69.0 | 66.0 |" in proc.stdout
    import tarfile

    with tarfile.open(tmp_path / "b" / "out" / "gpu_tables.tgz") as tar:
        names = tar.getnames()
    assert "tables/fmnist_table.md" in names and "tables/ducat_table.md" in names, names


def test_per_test_timeout_fails_the_slow_test_and_goes_on(tmp_path):
    (tmp_path / "test_slow.py").write_text(textwrap.dedent("""
        import time
        def test_slow():
            time.sleep(20)
        def test_fast():
            assert True
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                           "generalist_trainer.bench.pytest_stage_timeout", "--per-test-timeout", "0.5",
                           str(tmp_path / "test_slow.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert "ran past the per-test limit of 0.5 s" in proc.stdout
    assert "1 failed, 1 passed" in proc.stdout
