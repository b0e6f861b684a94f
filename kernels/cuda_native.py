"""ctypes loader and launchers for the CMake-built native CUDA library (CMakeLists.txt, kernels/cuda/).

The library is looked up at $GENERALIST_KERNELS_CUDA_LIB, else at build/libgeneralist_kernels_cuda.so in
the repository (what `cmake -S . -B build && cmake --build build -j` produces). It provides the L-inf
PGD step and the Generalist average; it is used only when asked for with policy="cuda" (benchmarks and
tests), and launches on torch's current stream, so it orders with torch's own work.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from .dispatch import KernelUnavailableError
from .layout import sample_stride

LIB_ENV = "GENERALIST_KERNELS_CUDA_LIB"
LIB_NAME = "libgeneralist_kernels_cuda.so"
REPO_ROOT = Path(__file__).resolve().parent.parent
ABI_VERSION = 2  # GK_ABI_VERSION in kernels/cuda/generalist_kernels.h
SYMBOLS = ("gk_abi_version", "gk_error_string", "gk_pgd_linf_step", "gk_generalist_average")
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # GK_FLOAT32, GK_FLOAT16, GK_BFLOAT16

_lib: ctypes.CDLL | None = None


def library_path() -> Path:
    """Where the library is looked for: $GENERALIST_KERNELS_CUDA_LIB, else build/ in the repository."""
    env = os.environ.get(LIB_ENV)
    return Path(env) if env else REPO_ROOT / "build" / LIB_NAME


def load() -> ctypes.CDLL:
    """The loaded library; KernelUnavailableError naming what is missing when it cannot be loaded."""
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    where = f"${LIB_ENV}" if os.environ.get(LIB_ENV) else "the default location"
    if not path.is_file():
        raise KernelUnavailableError(
            f"native CUDA library not found at {path} ({where}); build it with "
            f"`cmake -S . -B build && cmake --build build -j` (needs nvcc and cmake) or point {LIB_ENV} at it")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelUnavailableError(f"native CUDA library at {path} does not load: {exc}") from exc
    missing = [s for s in SYMBOLS if not hasattr(lib, s)]
    if missing:
        raise KernelUnavailableError(f"native CUDA library at {path} lacks {missing}; rebuild it")
    if lib.gk_abi_version() != ABI_VERSION:
        raise KernelUnavailableError(
            f"native CUDA library at {path} has ABI version {lib.gk_abi_version()}, expected {ABI_VERSION}; rebuild it")
    p, f, i64, i32 = ctypes.c_void_p, ctypes.c_float, ctypes.c_int64, ctypes.c_int
    lib.gk_error_string.restype = ctypes.c_char_p
    lib.gk_error_string.argtypes = [i32]
    lib.gk_pgd_linf_step.restype = i32
    lib.gk_pgd_linf_step.argtypes = [p, p, p, i64, i32, i32, f, f, p, p, i64, i64, f, f, p]
    lib.gk_generalist_average.restype = i32
    lib.gk_generalist_average.argtypes = [p, p, p, p, p, i64, f, f, i32, p]
    _lib = lib
    return lib


def available() -> bool:
    try:
        load()
    except KernelUnavailableError:
        return False
    return True


def _check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"native CUDA {what} failed: {lib.gk_error_string(code).decode()} (code {code})")


def _dtype_code(t: torch.Tensor, name: str) -> int:
    try:
        return _DTYPE_CODES[t.dtype]
    except KeyError:
        raise KernelUnavailableError(
            f"the native CUDA library takes {name} in float32, float16 or bfloat16, not {t.dtype}") from None


def pgd_linf_step(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor,
                  step: float | torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Native L-inf step on dense CUDA tensors sharing one layout; per-sample eps/step fp32 (N,)."""
    lib = load()
    x_code, g_code = _dtype_code(x_adv, "x_adv"), _dtype_code(grad, "grad")
    eps_t = eps if isinstance(eps, torch.Tensor) else None
    step_t = step if isinstance(step, torch.Tensor) else None
    n = x_adv.shape[0] if x_adv.dim() else 1
    with torch.cuda.device(x_adv.device):
        code = lib.gk_pgd_linf_step(
            x_adv.data_ptr(), grad.data_ptr(), x.data_ptr(), x_adv.numel(), x_code, g_code,
            0.0 if eps_t is not None else float(eps), 0.0 if step_t is not None else float(step),
            eps_t.data_ptr() if eps_t is not None else None, step_t.data_ptr() if step_t is not None else None,
            sample_stride(x_adv), n, float(lo), float(hi), torch.cuda.current_stream().cuda_stream)
    _check(lib, code, "pgd_linf_step")
    return x_adv


def generalist_average(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor, s_n: torch.Tensor,
                       g: torch.Tensor, decay: float, beta: float, redistribute: bool = False) -> None:
    """Native fused Generalist update over five 1-D contiguous fp32 CUDA buffers of one length."""
    lib = load()
    with torch.cuda.device(g.device):
        code = lib.gk_generalist_average(
            theta_r.data_ptr(), theta_n.data_ptr(), s_r.data_ptr(), s_n.data_ptr(), g.data_ptr(), g.numel(),
            1.0 - float(decay), float(beta), int(bool(redistribute)), torch.cuda.current_stream().cuda_stream)
    _check(lib, code, "generalist_average")
