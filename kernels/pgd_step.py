"""Fused L-inf PGD step and uniform random start (Madry et al., ICLR 2018, arXiv 1706.06083).

Step, in place and in one pass over memory (read x_adv, grad, x; write x_adv):
    x_adv <- clamp(clamp(x_adv + step * sign(grad), x - eps, x + eps), lo, hi)
Random start, a new tensor from a seed:
    x_adv <- clamp(x + U(-eps, eps), lo, hi)

Arithmetic is fp32 whatever the storage dtype, rounded once on the store. eps and step are floats or
fp32 (N,) per-sample tensors. sign(0) = 0; a NaN gradient element counts as 0 (that element does not
move) and +-inf as +-1; NaN in x_adv or x propagates. The torch reference below defines these results;
the kernels match it (bf16 to one unit in the last place where the Triton interpreter rounds toward zero).

Random streams: the Triton provider draws Philox numbers keyed by (seed, storage offset), the torch
provider torch.rand from a generator seeded with `seed` on x's device. Each is reproducible (same seed,
same provider, same device and layout give the same start), but the two providers draw different
numbers, and so do the torch provider's CPU and CUDA generators.

Sample windows (data parallelism): with `sample_offset` k and `total_samples` T, x's sample i gets the noise
of row k + i of a batch of T rows, so that the ranks' slices of a global batch together draw exactly what one
process draws for the whole batch, and no two ranks draw the same. The Triton provider adds k times the
per-sample size to its Philox counter (which needs each sample contiguous in memory: contiguous or
channels_last); the torch provider draws the T rows and keeps rows k .. k + N - 1.
"""

from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, tl, triton
from .layout import batch_outermost, per_sample_view, sample_stride

# Memory-bound: 4096 elements per program and 8 warps give each thread 16 elements (four 16-byte loads
# per fp32 operand) in flight, enough to cover HBM latency without a grid-stride loop.
_BLOCK = 4096
_NUM_WARPS = 8


def pgd_linf_step_reference(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                            eps: float | torch.Tensor, step: float | torch.Tensor,
                            lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """The L-inf step in torch (in place on x_adv); the semantics every provider matches."""
    eps = per_sample_view(eps, x_adv)
    x0 = x.float()
    direction = torch.sign(grad).nan_to_num_(nan=0.0)  # sign(NaN) -> 0 whatever torch's sign does with it
    if isinstance(step, torch.Tensor):
        new = torch.addcmul(x_adv.float(), per_sample_view(step, x_adv), direction)
    else:
        new = torch.add(x_adv.float(), direction, alpha=step)  # step * (+-1 or 0) is exact: no rounding
    x_adv.copy_(torch.clamp(new, x0 - eps, x0 + eps).clamp_(lo, hi))
    return x_adv


def pgd_random_start_reference(x: torch.Tensor, eps: float | torch.Tensor, seed: int,
                               lo: float = 0.0, hi: float = 1.0, out: torch.Tensor | None = None, *,
                               sample_offset: int = 0, total_samples: int | None = None) -> torch.Tensor:
    """clamp(x + U(-eps, eps), lo, hi) in torch, noise from torch.rand seeded with `seed` on x's device; x's
    sample i gets row sample_offset + i of the draw for a batch of total_samples rows (module docstring)."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    shape = x.shape
    if x.dim() and (sample_offset or (total_samples is not None and total_samples != x.shape[0])):
        shape = (total_samples if total_samples is not None else sample_offset + x.shape[0], *x.shape[1:])
    # torch.rand is in [0, 1), so u is in [-1, 1).
    u = torch.rand(shape, generator=gen, device=x.device, dtype=torch.float32)
    if shape != x.shape:
        u = u[sample_offset:sample_offset + x.shape[0]]
    u = u.mul_(2.0).sub_(1.0)
    new = x.float() + per_sample_view(eps, x) * u
    if out is None:
        out = torch.empty_like(x)
    out.copy_(new.clamp_(lo, hi))
    return out


if HAS_TRITON:

    @triton.jit
    def _pgd_linf_step_kernel(
        x_adv_ptr,  # (numel,) x_adv's storage in memory order, fp32 / bf16 / fp16; read, then overwritten
        grad_ptr,  # (numel,) d loss / d x_adv in the same memory order, fp32 / bf16 / fp16
        x_ptr,  # (numel,) clean input, same dtype and memory order as x_adv
        eps_ptr,  # (N,) fp32 per-sample radius; read only when EPS_PER_SAMPLE
        step_ptr,  # (N,) fp32 per-sample step size; read only when STEP_PER_SAMPLE
        numel,
        sample_stride,  # storage slots between consecutive samples: sample = (offset // stride) % N
        n_samples,
        eps,  # fp32 radius when not per-sample
        step,  # fp32 step size when not per-sample
        lo,
        hi,
        EPS_PER_SAMPLE: tl.constexpr,
        STEP_PER_SAMPLE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        xa = tl.load(x_adv_ptr + offs, mask=mask).to(tl.float32)
        x0 = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        # fp16 / bf16 -> fp32 is exact, so the sign is unchanged (and the interpreter, which holds bf16 as
        # raw uint16, compares fp32 correctly).
        g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
        direction = tl.where(g > 0, 1.0, 0.0) - tl.where(g < 0, 1.0, 0.0)
        if EPS_PER_SAMPLE:
            radius = tl.load(eps_ptr + (offs // sample_stride) % n_samples, mask=mask, other=0.0)
        else:
            radius = eps
        if STEP_PER_SAMPLE:
            size = tl.load(step_ptr + (offs // sample_stride) % n_samples, mask=mask, other=0.0)
        else:
            size = step
        new = xa + size * direction
        # NaN-propagating min/max, as torch.minimum/maximum/clamp in the reference.
        new = tl.maximum(new, x0 - radius, propagate_nan=tl.PropagateNan.ALL)
        new = tl.minimum(new, x0 + radius, propagate_nan=tl.PropagateNan.ALL)
        new = tl.maximum(new, lo, propagate_nan=tl.PropagateNan.ALL)
        new = tl.minimum(new, hi, propagate_nan=tl.PropagateNan.ALL)
        tl.store(x_adv_ptr + offs, new.to(x_adv_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _pgd_random_start_kernel(
        out_ptr,  # (numel,) the new x_adv, same dtype and memory order as x; written only
        x_ptr,  # (numel,) clean input, fp32 / bf16 / fp16
        eps_ptr,  # (N,) fp32 per-sample radius; read only when EPS_PER_SAMPLE
        numel,
        sample_stride,
        n_samples,
        eps,
        lo,
        hi,
        seed,  # Philox key; the counter is the storage offset, so the draw does not depend on BLOCK
        counter_base,  # sample_offset * elements per sample: the storage offset of x[0] in the global batch
        EPS_PER_SAMPLE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x0 = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        u = tl.rand(seed, counter_base + offs) * 2.0 - 1.0  # tl.rand is in [0, 1), so u is in [-1, 1)
        if EPS_PER_SAMPLE:
            radius = tl.load(eps_ptr + (offs // sample_stride) % n_samples, mask=mask, other=0.0)
        else:
            radius = eps
        new = x0 + radius * u
        new = tl.maximum(new, lo, propagate_nan=tl.PropagateNan.ALL)
        new = tl.minimum(new, hi, propagate_nan=tl.PropagateNan.ALL)
        tl.store(out_ptr + offs, new.to(out_ptr.dtype.element_ty), mask=mask)


def pgd_linf_step_triton(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                         eps: float | torch.Tensor, step: float | torch.Tensor,
                         lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Launch the fused step. x_adv, grad and x dense with one memory layout; per-sample eps/step fp32 (N,)."""
    numel = x_adv.numel()
    if numel == 0:
        return x_adv
    eps_per_sample = isinstance(eps, torch.Tensor)
    step_per_sample = isinstance(step, torch.Tensor)
    grid = (triton.cdiv(numel, _BLOCK),)
    _pgd_linf_step_kernel[grid](
        x_adv, grad, x,
        eps if eps_per_sample else x_adv,  # any pointer will do when the kernel does not read it
        step if step_per_sample else x_adv,
        numel, sample_stride(x_adv), x_adv.shape[0] if x_adv.dim() else 1,
        0.0 if eps_per_sample else float(eps), 0.0 if step_per_sample else float(step),
        float(lo), float(hi),
        EPS_PER_SAMPLE=eps_per_sample, STEP_PER_SAMPLE=step_per_sample, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return x_adv


def pgd_random_start_triton(x: torch.Tensor, eps: float | torch.Tensor, seed: int,
                            lo: float = 0.0, hi: float = 1.0, out: torch.Tensor | None = None, *,
                            sample_offset: int = 0) -> torch.Tensor:
    """Launch the random start into `out` (new, laid out like x, when None). x dense; with a sample_offset, each
    sample contiguous (batch_outermost)."""
    if out is None:
        out = torch.empty_like(x)  # preserve_format: same strides as a dense x
    numel = x.numel()
    if numel == 0:
        return out
    if sample_offset and not batch_outermost(x):
        raise ValueError(f"pgd_random_start: a sample_offset needs each sample contiguous in memory; got strides "
                         f"{x.stride()} for shape {tuple(x.shape)}")
    counter_base = sample_offset * (numel // x.shape[0]) if x.dim() else 0
    eps_per_sample = isinstance(eps, torch.Tensor)
    grid = (triton.cdiv(numel, _BLOCK),)
    _pgd_random_start_kernel[grid](
        out, x, eps if eps_per_sample else x,
        numel, sample_stride(x), x.shape[0] if x.dim() else 1,
        0.0 if eps_per_sample else float(eps), float(lo), float(hi), int(seed), counter_base,
        EPS_PER_SAMPLE=eps_per_sample, BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
    return out
