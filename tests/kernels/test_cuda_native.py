"""The native CUDA library: CMake builds it wherever nvcc and cmake exist (it exports the C ABI that
kernels/cuda_native.py expects, and loads without a GPU); ptxas reports no register spills for any of its
kernels on sm_90; with a GPU it matches the torch references."""

import ctypes
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from generalist_trainer.kernels import cuda_native, dispatch, generalist_average_, pgd_linf_step_
from generalist_trainer.kernels.generalist_average import generalist_average_reference
from generalist_trainer.kernels.pgd_step import pgd_linf_step_reference
from tests.kernels.conftest import ARITH_TOL, X_DTYPES, assert_close

HAVE_TOOLS = shutil.which("nvcc") is not None and shutil.which("cmake") is not None
CUDA_SOURCES = sorted((cuda_native.REPO_ROOT / "kernels" / "cuda").glob("*.cu"))


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME / $CUDA_PATH, else the newest /usr/local/cuda*/bin/nvcc."""
    found = shutil.which("nvcc")
    if found:
        return found
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    homes += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in filter(None, homes):
        candidate = Path(home) / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"Function properties for (\S+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                    r"(\d+) bytes spill loads")


def ptxas_report(text: str) -> dict[str, tuple[int, int, int]]:
    """{kernel: (stack frame, spill store, spill load bytes)} from `nvcc -Xptxas -v` output, entries only."""
    entries = {name for name, _ in _ENTRY.findall(text)}
    props = {m.group(1): tuple(int(m.group(i)) for i in (2, 3, 4)) for m in _PROPS.finditer(text)}
    return {name: props.get(name, (-1, -1, -1)) for name in entries}


def test_ptxas_report_is_parsed():
    text = """ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    8 bytes stack frame, 10 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 8 bytes cumulative stack size
ptxas info    : Function properties for _Z6helperv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_Z1gPf' for 'sm_90'
ptxas info    : Function properties for _Z1gPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""
    assert ptxas_report(text) == {"_Z1kPf": (8, 10, 8), "_Z1gPf": (0, 0, 0)}


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_native_kernels_do_not_spill_on_sm90(source, tmp_path):
    """Every kernel instantiation, compiled for sm_90 as CMakeLists.txt builds it (Release, -lineinfo), keeps
    all its values in registers: ptxas reports 0 bytes of spill stores and loads."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME, $CUDA_PATH or /usr/local/cuda*/bin")
    cmd = [nvcc, "-arch=sm_90", "-O3", "-DNDEBUG", "-lineinfo", "-std=c++17", "-Xptxas", "-v",
           "-I", str(source.parent), "-c", str(source), "-o", str(tmp_path / "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    report = ptxas_report(proc.stdout + proc.stderr)
    assert report, f"ptxas reported no entry function for {source.name}:\n{proc.stderr[-2000:]}"
    spilling = {name: props for name, props in report.items() if props[1] or props[2] or props[0] < 0}
    assert not spilling, (f"{source.name}: kernels with spills (stack frame, spill stores, spill loads bytes; "
                          f"-1 = not reported): {spilling}")


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """Configure and build the top-level CMakeLists.txt into a temporary directory (a few seconds), or take
    the library that bench/gpu_all.sh's native_build stage made ($GENERALIST_KERNELS_TEST_LIB)."""
    prebuilt = os.environ.get("GENERALIST_KERNELS_TEST_LIB")
    if prebuilt and Path(prebuilt).is_file():
        return Path(prebuilt)
    if not HAVE_TOOLS:
        pytest.skip("nvcc and cmake are needed to build the native library")
    build = tmp_path_factory.mktemp("cuda_build")
    for cmd in (["cmake", "-S", str(cuda_native.REPO_ROOT), "-B", str(build)],
                ["cmake", "--build", str(build), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lib = build / cuda_native.LIB_NAME
    assert lib.is_file(), f"{lib} was not produced"
    return lib


def test_library_exports_the_c_abi(built_library):
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True,
                             text=True, check=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
        assert set(cuda_native.SYMBOLS) <= exported, exported
        assert all(s.startswith("gk_") for s in exported), f"unexpected exports: {exported}"
    lib = ctypes.CDLL(str(built_library))  # static CUDA runtime: loads without a driver
    assert lib.gk_abi_version() == cuda_native.ABI_VERSION
    lib.gk_error_string.restype = ctypes.c_char_p
    assert lib.gk_error_string(-1) == b"unsupported dtype code"


def test_loader_finds_the_library_through_the_environment(built_library, monkeypatch):
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, str(built_library))
    assert cuda_native.available()
    if not torch.cuda.is_available():
        # loadable, but nothing to run it on: the 'cuda' policy says so instead of failing inside
        with pytest.raises(dispatch.KernelUnavailableError, match="tensors are on cpu"):
            pgd_linf_step_(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.1, 0.1, policy="cuda")


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="running the native library needs a CUDA GPU")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("numel", [1, 7, 4099, 3 * 2**20 + 3])
def test_native_linf_step_matches_reference(built_library, monkeypatch, dtype, grad_dtype, numel):
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, str(built_library))
    gen = torch.Generator(device="cuda").manual_seed(numel)
    for offset in (0, 1):  # 1: views off the 16-byte grid take the scalar path
        x = torch.rand(numel + offset, generator=gen, device="cuda").to(dtype)[offset:]
        x_adv = torch.rand(numel + offset, generator=gen, device="cuda").to(dtype)[offset:]
        grad = torch.randn(numel + offset, generator=gen, device="cuda").to(grad_dtype)[offset:]
        grad[::5] = float("nan")
        expected = pgd_linf_step_reference(x_adv.clone(), grad, x, 0.03, 0.01)
        got = pgd_linf_step_(x_adv.clone(), grad, x, 0.03, 0.01, policy="cuda")
        # CUDA rounds to nearest even like torch: exact in every dtype
        assert_close(got, expected, (0.0, 0.0), f"native linf offset {offset}")
        eps = torch.rand(numel, generator=gen, device="cuda") * 0.05
        shape = (numel, 1)
        expected = pgd_linf_step_reference(x_adv.clone().view(shape), grad.view(shape), x.view(shape), eps, 0.01)
        got = pgd_linf_step_(x_adv.clone().view(shape), grad.view(shape), x.view(shape), eps, 0.01, policy="cuda")
        assert_close(got, expected, (0.0, 0.0), f"native per-sample offset {offset}")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_native_per_sample_packs_straddle_samples(built_library, monkeypatch, dtype, grad_dtype, channels_last):
    """Per-sample eps and step where a sample (3*5*7 = 105 elements) is no multiple of the pack width, so packs
    cross sample boundaries: the kernel steps the sample index inside a pack."""
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, str(built_library))
    gen = torch.Generator(device="cuda").manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shape = (37, 3, 5, 7)
    x = torch.rand(shape, generator=gen, device="cuda").to(dtype).contiguous(memory_format=fmt)
    x_adv = torch.rand(shape, generator=gen, device="cuda").to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=gen, device="cuda").to(grad_dtype).contiguous(memory_format=fmt)
    eps = torch.rand(shape[0], generator=gen, device="cuda") * 0.05
    step = torch.rand(shape[0], generator=gen, device="cuda") * 0.02
    expected = pgd_linf_step_reference(x_adv.clone(), grad, x, eps, step)
    got = pgd_linf_step_(x_adv.clone(), grad, x, eps, step, policy="cuda")
    assert_close(got, expected, (0.0, 0.0), f"native per-sample, channels_last={channels_last}")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("numel", [1, 7, 4099, 3 * 2**20 + 3])
@pytest.mark.parametrize("redistribute", [False, True])
def test_native_average_matches_reference(built_library, monkeypatch, numel, redistribute):
    monkeypatch.setattr(cuda_native, "_lib", None)
    monkeypatch.setenv(cuda_native.LIB_ENV, str(built_library))
    gen = torch.Generator(device="cuda").manual_seed(numel)
    bufs = [torch.randn(numel, generator=gen, device="cuda") for _ in range(5)]
    expected = [b.clone() for b in bufs]
    generalist_average_reference(*expected, 0.99, 0.4, redistribute)
    generalist_average_(*bufs, decay=0.99, beta=0.4, redistribute=redistribute, policy="cuda")
    for got, want in zip(bufs, expected):
        assert_close(got, want, ARITH_TOL[torch.float32], "native average")
