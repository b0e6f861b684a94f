"""Fused ops of the trainer: the PGD step (L-inf, L2, random start), Generalist's average-mix-redistribute
update and a lerp, over a flat parameter arena.

Each op has a Triton kernel and a pure-torch reference in its own file (the reference defines the
semantics, is the fallback, and is what tests and benchmarks compare against); the L-inf step and the
average also have native CUDA versions (kernels/cuda/, built by CMakeLists.txt).

Choosing the implementation (kernels/dispatch.py): every op takes policy=None | "auto" | "triton" |
"torch" | "cuda". None means the process default, set_default_policy(...), initially "auto": Triton on
CUDA tensors when triton imports, the torch reference elsewhere (so on a CPU machine the references run).
An explicit "triton" or "cuda" that cannot run raises KernelUnavailableError with the reason.

Environment:
- GENERALIST_KERNELS=torch forces the torch references for every call, whatever the policy.
- TRITON_INTERPRET=1 (set before triton is imported) lets policy="triton" run on CPU tensors through
  the Triton interpreter; the tests use it.
- GENERALIST_KERNELS_CUDA_LIB: path of the native library (default build/libgeneralist_kernels_cuda.so).

The ops are registered with torch.library (namespace generalist_kernels), so torch.compile traces
through them. They update their outputs in place outside autograd.
"""

from .dispatch import KernelUnavailableError, resolve_policy, set_default_policy
from .flat_arena import FlatArena
from .ops import generalist_average_, lerp_, pgd_l2_step_, pgd_linf_step_, pgd_random_start

__all__ = [
    "FlatArena",
    "KernelUnavailableError",
    "generalist_average_",
    "lerp_",
    "pgd_l2_step_",
    "pgd_linf_step_",
    "pgd_random_start",
    "resolve_policy",
    "set_default_policy",
]
