"""The native CUDA library: CMake builds it wherever nvcc and cmake exist (it exports the C ABI that
kernels/cuda_native.py expects, and loads without a GPU); with a GPU it matches the torch references."""

import ctypes
import shutil
import subprocess

import pytest
import torch

from kernels import cuda_native, dispatch, generalist_average_, pgd_linf_step_
from kernels.generalist_average import generalist_average_reference
from kernels.pgd_step import pgd_linf_step_reference
from tests.kernels.conftest import ARITH_TOL, X_DTYPES, assert_close

HAVE_TOOLS = shutil.which("nvcc") is not None and shutil.which("cmake") is not None


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    """Configure and build the top-level CMakeLists.txt into a temporary directory (a few seconds)."""
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
