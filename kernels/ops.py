"""The public ops: argument checks, provider dispatch, and their torch.library registration.

Each op is registered as a custom op in the `generalist_kernels` namespace with a fake (meta)
implementation, so torch.compile(fullgraph=True) traces through a call as one opaque node; the provider
is chosen inside the op, at run time, from the real tensors. In eager mode the public functions call the
implementation directly: the custom-op dispatcher costs tens of microseconds per call, as much as the
whole averaging of a ResNet-18 on a GPU.

Everything runs outside autograd: x_adv and the arena buffers are updated in place as data.
"""

import contextlib
import math
import numbers
from typing import Optional

import torch

from . import cuda_native
from .dispatch import POLICIES, KernelUnavailableError, resolve_policy
from .generalist_average import generalist_average_reference, generalist_average_triton
from .layout import batch_outermost, is_dense, same_layout
from .lerp import lerp_reference, lerp_triton
from .pgd_l2_step import pgd_l2_step_reference, pgd_l2_step_triton
from .pgd_step import (
    pgd_linf_step_reference,
    pgd_linf_step_triton,
    pgd_random_start_reference,
    pgd_random_start_triton,
)

_NS = "generalist_kernels"
_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
Scalar = float | torch.Tensor


# ---------------------------------------------------------------------------------------------------
# Argument checks (they run in the caller's frame, so torch.compile traces them once per input kind).


def _check_policy(fn: str, policy: str | None) -> str:
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"{fn}: unknown policy {policy!r}; expected None or one of {', '.join(POLICIES)}")
    return policy or ""  # the custom ops take a str; "" means the default policy, read at run time


def _check_tensor(fn: str, name: str, t, dtypes: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{fn}: {name} must be one of {', '.join(str(d) for d in dtypes)}, got {t.dtype}")


def _in_layout_of(ref: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # The kernels walk storage in order, so every operand must share x_adv's layout; a mismatched one
    # (say a contiguous grad for a channels_last x_adv) costs one extra copy here.
    if same_layout(t, ref):
        return t
    return torch.empty_like(ref, dtype=t.dtype).copy_(t)


def _check_pgd(fn: str, x_adv, grad, x, lo, hi) -> tuple[torch.Tensor, torch.Tensor]:
    _check_tensor(fn, "x_adv", x_adv, _X_DTYPES)
    _check_tensor(fn, "grad", grad, _X_DTYPES)
    _check_tensor(fn, "x", x, _X_DTYPES)
    if x.dtype != x_adv.dtype:
        raise TypeError(f"{fn}: x must have x_adv's dtype {x_adv.dtype}, got {x.dtype}")
    for name, t in (("grad", grad), ("x", x)):
        if t.shape != x_adv.shape:
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}, x_adv has {tuple(x_adv.shape)}")
        if t.device != x_adv.device:
            raise ValueError(f"{fn}: {name} is on {t.device}, x_adv on {x_adv.device}")
    if not is_dense(x_adv):
        raise ValueError(f"{fn}: x_adv must be dense (contiguous in some dimension order, e.g. contiguous or "
                         f"channels_last) to be updated in place; got strides {x_adv.stride()} for shape "
                         f"{tuple(x_adv.shape)}")
    _check_bounds(fn, lo, hi)
    return _in_layout_of(x_adv, grad), _in_layout_of(x_adv, x)


def _check_bounds(fn: str, lo, hi) -> None:
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{fn}: {name} must be a float, got {type(v).__name__}")
    if not lo <= hi:
        raise ValueError(f"{fn}: lo={lo} must not exceed hi={hi}")


def _scalar_or_per_sample(fn: str, name: str, v, like: torch.Tensor, nonnegative: bool):
    """(float, None) for a scalar, (0.0, fp32 contiguous (N,) tensor) for a per-sample value."""
    if isinstance(v, torch.Tensor):
        if like.dim() == 0:
            raise ValueError(f"{fn}: a per-sample {name} needs inputs with a batch dim; got a 0-d input")
        n = like.shape[0]
        if tuple(v.shape) != (n,):
            raise ValueError(f"{fn}: {name} must be a float or a tensor of shape ({n},), one value per sample; "
                             f"got shape {tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {v.dtype}")
        if v.device != like.device:
            raise ValueError(f"{fn}: {name} is on {v.device}, the inputs on {like.device}")
        return 0.0, v.detach().to(torch.float32).contiguous()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a float or a (N,) tensor, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (nonnegative and v < 0):
        raise ValueError(f"{fn}: {name} must be a finite{' non-negative' if nonnegative else ''} number, got {v}")
    return v, None


def _pick(f: float, t: torch.Tensor | None) -> Scalar:
    return f if t is None else t


def _no_native(fn: str) -> KernelUnavailableError:
    return KernelUnavailableError(f"{fn}: the native CUDA library has no {fn}; use policy 'auto', 'triton' or 'torch'")


# ---------------------------------------------------------------------------------------------------
# Implementations: pick the provider from the real tensors and run it.


def _on(t: torch.Tensor):
    # Triton launches on the current CUDA device, not on the tensors' own one.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def _run_linf(x_adv, grad, x, eps: Scalar, step: Scalar, lo: float, hi: float, policy: str) -> None:
    provider = resolve_policy(policy or None, x_adv, grad, x)
    if provider == "triton":
        with _on(x_adv):
            pgd_linf_step_triton(x_adv, grad, x, eps, step, lo, hi)
    elif provider == "cuda":
        cuda_native.pgd_linf_step(x_adv, grad, x, eps, step, lo, hi)
    else:
        pgd_linf_step_reference(x_adv, grad, x, eps, step, lo, hi)


@torch.no_grad()
def _run_l2(x_adv, grad, x, eps: Scalar, step: Scalar, lo: float, hi: float, policy: str) -> None:
    provider = resolve_policy(policy or None, x_adv, grad, x)
    if provider == "cuda":
        raise _no_native("pgd_l2_step_")
    if provider == "torch":
        pgd_l2_step_reference(x_adv, grad, x, eps, step, lo, hi)
    elif batch_outermost(x_adv):
        with _on(x_adv):
            pgd_l2_step_triton(x_adv, grad, x, eps, step, lo, hi)
    else:
        # The kernel reduces each sample as one contiguous row; other layouts go through a copy.
        work = x_adv.contiguous()
        with _on(x_adv):
            pgd_l2_step_triton(work, grad.contiguous(), x.contiguous(), eps, step, lo, hi)
        x_adv.copy_(work)


@torch.no_grad()
def _run_random_start(x, eps: Scalar, seed: int, lo: float, hi: float, policy: str, sample_offset: int = 0,
                      total_samples: int = -1) -> torch.Tensor:
    provider = resolve_policy(policy or None, x)
    if provider == "cuda":
        raise _no_native("pgd_random_start")
    if provider == "triton":
        with _on(x):
            return pgd_random_start_triton(x, eps, seed, lo, hi, sample_offset=sample_offset)
    return pgd_random_start_reference(x, eps, seed, lo, hi, sample_offset=sample_offset,
                                      total_samples=None if total_samples < 0 else total_samples)


@torch.no_grad()
def _run_average(theta_r, theta_n, s_r, s_n, g, decay: float, beta: float, redistribute: bool, policy: str) -> None:
    provider = resolve_policy(policy or None, theta_r, theta_n, s_r, s_n, g)
    if provider == "triton":
        with _on(g):
            generalist_average_triton(theta_r, theta_n, s_r, s_n, g, decay, beta, redistribute)
    elif provider == "cuda":
        cuda_native.generalist_average(theta_r, theta_n, s_r, s_n, g, decay, beta, redistribute)
    else:
        generalist_average_reference(theta_r, theta_n, s_r, s_n, g, decay, beta, redistribute)


@torch.no_grad()
def _run_lerp(dst, src, weight: float, policy: str) -> None:
    provider = resolve_policy(policy or None, dst, src)
    if provider == "cuda":
        raise _no_native("lerp_")
    if provider == "triton":
        with _on(dst):
            lerp_triton(dst, src, weight)
    else:
        lerp_reference(dst, src, weight)


# ---------------------------------------------------------------------------------------------------
# torch.library registration. Schemas need fixed types, so a scalar-or-tensor argument travels as a
# float plus an optional per-sample tensor. Optional[...] (not `X | None`) keeps the schema inference
# working on older torch releases.


@torch.library.custom_op(f"{_NS}::pgd_linf_step_", mutates_args=("x_adv",))
def _pgd_linf_step_op(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float,
                      eps_t: Optional[torch.Tensor], step: float, step_t: Optional[torch.Tensor],  # noqa: UP045
                      lo: float, hi: float, policy: str) -> None:
    _run_linf(x_adv, grad, x, _pick(eps, eps_t), _pick(step, step_t), lo, hi, policy)


@_pgd_linf_step_op.register_fake
def _(x_adv, grad, x, eps, eps_t, step, step_t, lo, hi, policy) -> None:
    return None


@torch.library.custom_op(f"{_NS}::pgd_l2_step_", mutates_args=("x_adv",))
def _pgd_l2_step_op(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float,
                    eps_t: Optional[torch.Tensor], step: float, step_t: Optional[torch.Tensor],  # noqa: UP045
                    lo: float, hi: float, policy: str) -> None:
    _run_l2(x_adv, grad, x, _pick(eps, eps_t), _pick(step, step_t), lo, hi, policy)


@_pgd_l2_step_op.register_fake
def _(x_adv, grad, x, eps, eps_t, step, step_t, lo, hi, policy) -> None:
    return None


@torch.library.custom_op(f"{_NS}::pgd_random_start", mutates_args=())
def _pgd_random_start_op(x: torch.Tensor, eps: float, eps_t: Optional[torch.Tensor], seed: int,  # noqa: UP045
                         lo: float, hi: float, policy: str, sample_offset: int, total_samples: int) -> torch.Tensor:
    return _run_random_start(x, _pick(eps, eps_t), seed, lo, hi, policy, sample_offset, total_samples)


@_pgd_random_start_op.register_fake
def _(x, eps, eps_t, seed, lo, hi, policy, sample_offset, total_samples) -> torch.Tensor:
    return torch.empty_like(x)  # the providers allocate with empty_like too: same strides


@torch.library.custom_op(f"{_NS}::generalist_average_", mutates_args=("s_r", "s_n", "g"))
def _generalist_average_op(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor, s_n: torch.Tensor,
                           g: torch.Tensor, decay: float, beta: float, policy: str) -> None:
    _run_average(theta_r, theta_n, s_r, s_n, g, decay, beta, False, policy)


@_generalist_average_op.register_fake
def _(theta_r, theta_n, s_r, s_n, g, decay, beta, policy) -> None:
    return None


# Redistribution also writes both experts; a separate op keeps the plain update's declared mutations exact.
@torch.library.custom_op(f"{_NS}::generalist_average_redistribute_",
                         mutates_args=("theta_r", "theta_n", "s_r", "s_n", "g"))
def _generalist_average_redistribute_op(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor,
                                        s_n: torch.Tensor, g: torch.Tensor, decay: float, beta: float,
                                        policy: str) -> None:
    _run_average(theta_r, theta_n, s_r, s_n, g, decay, beta, True, policy)


@_generalist_average_redistribute_op.register_fake
def _(theta_r, theta_n, s_r, s_n, g, decay, beta, policy) -> None:
    return None


@torch.library.custom_op(f"{_NS}::lerp_", mutates_args=("dst",))
def _lerp_op(dst: torch.Tensor, src: torch.Tensor, weight: float, policy: str) -> None:
    _run_lerp(dst, src, weight, policy)


@_lerp_op.register_fake
def _(dst, src, weight, policy) -> None:
    return None


# ---------------------------------------------------------------------------------------------------
# Public functions.


def pgd_linf_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Scalar, step: Scalar,
                   lo: float = 0.0, hi: float = 1.0, *, policy: str | None = None) -> torch.Tensor:
    """x_adv <- clamp(clamp(x_adv + step * sign(grad), x - eps, x + eps), lo, hi), in place; returns x_adv.

    L-inf PGD step (Madry et al., 2018). eps, step: floats or (N,) per-sample tensors (whose values are
    not checked, as that would synchronise). x and x_adv share dtype (float32, bfloat16, float16) and shape;
    grad may be any of the three. sign(0) = sign(NaN) = 0
    (a NaN gradient element does not move), sign(+-inf) = +-1.
    """
    fn = "pgd_linf_step_"
    grad, x = _check_pgd(fn, x_adv, grad, x, lo, hi)
    eps_f, eps_t = _scalar_or_per_sample(fn, "eps", eps, x_adv, nonnegative=True)
    step_f, step_t = _scalar_or_per_sample(fn, "step", step, x_adv, nonnegative=False)
    pol = _check_policy(fn, policy)
    if torch.compiler.is_compiling():
        torch.ops.generalist_kernels.pgd_linf_step_(x_adv, grad, x, eps_f, eps_t, step_f, step_t,
                                                    float(lo), float(hi), pol)
    else:
        _run_linf(x_adv, grad, x, _pick(eps_f, eps_t), _pick(step_f, step_t), float(lo), float(hi), pol)
    return x_adv


def pgd_l2_step_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: Scalar, step: Scalar,
                 lo: float = 0.0, hi: float = 1.0, *, policy: str | None = None) -> torch.Tensor:
    """L2 PGD step in place on x_adv (N, ...); returns x_adv. See kernels/pgd_l2_step.py.

    Per sample: x_adv += step * grad / (||grad||_2 + 1e-12) (a zero gradient does not move), then the
    perturbation is projected onto the L2 ball of radius eps around x and clamped to [lo, hi]. NaN gradient
    elements count as 0; infinite ones dominate the direction (their signs, normalised).
    """
    fn = "pgd_l2_step_"
    grad, x = _check_pgd(fn, x_adv, grad, x, lo, hi)
    if x_adv.dim() == 0:
        raise ValueError(f"{fn}: x_adv must have a batch dim (N, ...), got a 0-d tensor")
    eps_f, eps_t = _scalar_or_per_sample(fn, "eps", eps, x_adv, nonnegative=True)
    step_f, step_t = _scalar_or_per_sample(fn, "step", step, x_adv, nonnegative=False)
    pol = _check_policy(fn, policy)
    if torch.compiler.is_compiling():
        torch.ops.generalist_kernels.pgd_l2_step_(x_adv, grad, x, eps_f, eps_t, step_f, step_t,
                                                  float(lo), float(hi), pol)
    else:
        _run_l2(x_adv, grad, x, _pick(eps_f, eps_t), _pick(step_f, step_t), float(lo), float(hi), pol)
    return x_adv


def pgd_random_start(x: torch.Tensor, eps: Scalar, seed: int, lo: float = 0.0, hi: float = 1.0, *,
                     policy: str | None = None, sample_offset: int = 0,
                     total_samples: int | None = None) -> torch.Tensor:
    """A new tensor clamp(x + U(-eps, eps), lo, hi), laid out like x, drawn from `seed`.

    The same seed with the same provider (and device) gives the same start; the torch and Triton providers
    draw different streams. Pass a fresh seed per attack to get fresh starts. With `sample_offset` k and
    `total_samples` T (default k + N), x's samples get the noise of rows k .. k + N - 1 of a batch of T rows
    drawn with the same seed (a rank's slice of a global batch; kernels/pgd_step.py).
    """
    fn = "pgd_random_start"
    _check_tensor(fn, "x", x, _X_DTYPES)
    if not is_dense(x):
        x = x.contiguous()
    _check_bounds(fn, lo, hi)
    eps_f, eps_t = _scalar_or_per_sample(fn, "eps", eps, x, nonnegative=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"{fn}: seed must be an int in [0, 2**63), got {seed!r}")
    pol = _check_policy(fn, policy)
    rows = x.shape[0] if x.dim() else 1
    for name, v in (("sample_offset", sample_offset), ("total_samples", total_samples)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0):
            raise ValueError(f"{fn}: {name} must be an int >= 0, got {v!r}")
    total = sample_offset + rows if total_samples is None else int(total_samples)
    if sample_offset + rows > total or (sample_offset and x.dim() == 0):
        raise ValueError(f"{fn}: rows [{sample_offset}, {sample_offset + rows}) of x do not fit a batch of {total}")
    if torch.compiler.is_compiling():
        return torch.ops.generalist_kernels.pgd_random_start(x, eps_f, eps_t, int(seed), float(lo), float(hi), pol,
                                                             int(sample_offset), total)
    return _run_random_start(x, _pick(eps_f, eps_t), int(seed), float(lo), float(hi), pol, int(sample_offset), total)


def generalist_average_(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor, s_n: torch.Tensor,
                        g: torch.Tensor, *, decay: float, beta: float, redistribute: bool = False,
                        policy: str | None = None) -> None:
    """Generalist's update in one pass (Wang & Wang, CVPR 2023), in place on flat fp32 buffers:

    S_R <- d S_R + (1-d) theta_R;  S_N <- d S_N + (1-d) theta_N;  G <- d G + (1-d) (beta S_R + (1-beta) S_N)
    with the updated S_R, S_N; then theta_R, theta_N <- G when redistribute. All five: 1-D contiguous fp32
    buffers of one length on one device (FlatArena.flat), none sharing memory. Each step is evaluated as a
    torch.lerp (exact at decay 0 and 1).
    """
    fn = "generalist_average_"
    named = (("theta_r", theta_r), ("theta_n", theta_n), ("s_r", s_r), ("s_n", s_n), ("g", g))
    for name, t in named:
        _check_tensor(fn, name, t, (torch.float32,))
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"{fn}: {name} must be a 1-D contiguous buffer (a FlatArena's flat), "
                             f"got shape {tuple(t.shape)} with strides {t.stride()}")
    # Name the odd one out against what most of the five agree on.
    numels = [t.numel() for _, t in named]
    devices = [t.device for _, t in named]
    numel = max(numels, key=numels.count)
    device = max(devices, key=devices.count)
    for name, t in named:
        if t.numel() != numel:
            raise ValueError(f"{fn}: {name} has {t.numel()} elements, the other buffers {numel}")
        if t.device != device:
            raise ValueError(f"{fn}: {name} is on {t.device}, the other buffers on {device}")
    if not torch.compiler.is_compiling() and theta_r.numel() > 0:
        _check_no_overlap(fn, named)
    for name, v in (("decay", decay), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {v!r}")
    pol = _check_policy(fn, policy)
    if torch.compiler.is_compiling():
        op = (torch.ops.generalist_kernels.generalist_average_redistribute_ if redistribute
              else torch.ops.generalist_kernels.generalist_average_)
        op(theta_r, theta_n, s_r, s_n, g, float(decay), float(beta), pol)
    else:
        _run_average(theta_r, theta_n, s_r, s_n, g, float(decay), float(beta), bool(redistribute), pol)


def _check_no_overlap(fn: str, named) -> None:
    # The update reads and writes every buffer once, elementwise: two arguments sharing memory would read
    # values already overwritten. (Skipped under torch.compile, whose fake tensors have no addresses.)
    spans = [(name, t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for name, t in named]
    for i, (a, a0, a1) in enumerate(spans):
        for b, b0, b1 in spans[i + 1:]:
            if a0 < b1 and b0 < a1:
                raise ValueError(f"{fn}: {a} and {b} share memory; the five buffers must be distinct")


def lerp_(dst: torch.Tensor, src: torch.Tensor, weight: float, *, policy: str | None = None) -> torch.Tensor:
    """dst <- dst + weight * (src - dst) in place (computed as torch.lerp: exact at weight 0 and 1)."""
    fn = "lerp_"
    _check_tensor(fn, "dst", dst, _X_DTYPES)
    _check_tensor(fn, "src", src, _X_DTYPES)
    if src.dtype != dst.dtype:
        raise TypeError(f"{fn}: src must have dst's dtype {dst.dtype}, got {src.dtype}")
    if src.shape != dst.shape:
        raise ValueError(f"{fn}: src has shape {tuple(src.shape)}, dst has {tuple(dst.shape)}")
    if src.device != dst.device:
        raise ValueError(f"{fn}: src is on {src.device}, dst on {dst.device}")
    if not is_dense(dst):
        raise ValueError(f"{fn}: dst must be dense to be updated in place; got strides {dst.stride()}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"{fn}: weight must be a finite number, got {weight!r}")
    src = _in_layout_of(dst, src)
    pol = _check_policy(fn, policy)
    if torch.compiler.is_compiling():
        torch.ops.generalist_kernels.lerp_(dst, src, float(weight), pol)
    else:
        _run_lerp(dst, src, float(weight), pol)
    return dst
