"""Which implementation runs an op: the Triton kernel, the torch reference, or the native CUDA library.

Policies:
- "auto" (default): Triton when every tensor is on a CUDA device and triton imports, else the torch
  reference. On the CPU that is the reference, the normal path there and not a degradation.
- "triton": the Triton kernel, or KernelUnavailableError saying why it cannot run. CPU tensors run only
  through the Triton interpreter (TRITON_INTERPRET=1 set before triton is first imported), which is how
  the tests exercise the kernels without a GPU.
- "torch": the pure-torch reference.
- "cuda": the CMake-built native library (kernels/cuda_native.py); only ever chosen when asked for.

GENERALIST_KERNELS=torch in the environment forces the torch reference for every call, whatever policy
the caller or set_default_policy asked for; it is read at each call, so it also works mid-process.
"""

from __future__ import annotations

import logging
import os

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except ImportError as exc:  # triton is an optional dependency: the references need only torch
    triton = None
    tl = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _interpreter_active() -> bool:
    # @triton.jit decides at decoration time whether a kernel is interpreted, so what counts is the flag as
    # triton saw it when the kernels were defined, right after this import; knobs is triton >= 3.3.
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


TRITON_INTERPRETED = _interpreter_active()

ENV_VAR = "GENERALIST_KERNELS"
POLICIES = ("auto", "triton", "torch", "cuda")

log = logging.getLogger(__name__)


class KernelUnavailableError(RuntimeError):
    """An explicitly requested implementation cannot run here; the message says why and what to do."""


_default_policy = "auto"
_warned_auto_fallback = False


def set_default_policy(policy: str) -> None:
    """Set the policy used by calls that pass policy=None ("auto", "triton", "torch" or "cuda")."""
    global _default_policy
    _default_policy = _check_policy(policy)


def get_default_policy() -> str:
    return _default_policy


def _check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown kernel policy {policy!r}; expected one of {', '.join(POLICIES)}")
    return policy


def torch_forced() -> bool:
    """True when GENERALIST_KERNELS=torch switches every custom kernel off."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "auto"):
        return False
    if value == "torch":
        return True
    raise ValueError(f"{ENV_VAR}={value!r} is not understood; set it to 'torch' (force the references) or unset it")


def resolve_policy(policy: str | None, *tensors: torch.Tensor | None) -> str:
    """The provider that runs an op on `tensors` under `policy`: "triton", "torch" or "cuda".

    None means the default policy (set_default_policy). Raises KernelUnavailableError when an explicit
    "triton" or "cuda" request cannot be honoured, naming the reason.
    """
    global _warned_auto_fallback
    policy = _check_policy(_default_policy if policy is None else policy)
    if torch_forced():
        return "torch"
    if policy == "torch":
        return "torch"
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"tensors are on several devices: {sorted(str(d) for d in devices)}")
    device = next(iter(devices)) if devices else torch.device("cpu")
    on_cuda = device.type == "cuda"
    if policy == "auto":
        if on_cuda and HAS_TRITON:
            return "triton"
        if on_cuda and not _warned_auto_fallback:
            _warned_auto_fallback = True
            log.warning("kernels: triton is not importable (%s); using the torch references", TRITON_IMPORT_ERROR)
        return "torch"
    if policy == "triton":
        if not HAS_TRITON:
            raise KernelUnavailableError(
                f"policy 'triton' asked for, but triton is not importable ({TRITON_IMPORT_ERROR}); "
                "install it (pip install triton) or use policy 'auto' or 'torch'")
        if not on_cuda and not TRITON_INTERPRETED:
            raise KernelUnavailableError(
                f"policy 'triton' asked for, but the tensors are on {device.type} and Triton runs there only "
                "through its interpreter: set TRITON_INTERPRET=1 before triton is first imported, or use "
                "policy 'auto' or 'torch'")
        return "triton"
    # policy == "cuda": the native library, loaded lazily so that a missing build costs nothing elsewhere.
    if not on_cuda:
        raise KernelUnavailableError(
            f"policy 'cuda' asked for, but the tensors are on {device.type}; the native library runs on CUDA "
            "devices only")
    from . import cuda_native

    cuda_native.load()  # raises KernelUnavailableError naming what is missing
    return "cuda"
