"""In-place linear interpolation dst <- dst + weight * (src - dst), one pass (read 2, write 1).

Computed as torch.lerp does, in fp32 whatever the storage dtype: for |weight| < 0.5 as
dst + weight * (src - dst), otherwise as src - (src - dst) * (1 - weight), so that weight 0 gives dst
and weight 1 gives src exactly.
"""

from __future__ import annotations

import struct

import torch

from .dispatch import HAS_TRITON, tl, triton

_BLOCK = 4096
_NUM_WARPS = 8


def small_weight(weight: float) -> bool:
    """Which of torch.lerp's formulas applies: |w| < 0.5, tested on w rounded to fp32 as torch tests it."""
    return abs(struct.unpack("f", struct.pack("f", weight))[0]) < 0.5


def lerp_reference(dst: torch.Tensor, src: torch.Tensor, weight: float) -> torch.Tensor:
    """dst.lerp_(src, weight): the semantics the kernel matches (to fp32 rounding)."""
    return dst.lerp_(src, weight)


if HAS_TRITON:

    @triton.jit
    def _lerp_kernel(
        dst_ptr,  # (numel,) dst's storage in memory order, fp32 / bf16 / fp16; read and overwritten
        src_ptr,  # (numel,) src in the same dtype and memory order
        numel,
        weight,  # fp32
        SMALL_WEIGHT: tl.constexpr,  # |weight| < 0.5, decided on the host as torch.lerp decides per element
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        a = tl.load(dst_ptr + offs, mask=mask).to(tl.float32)
        b = tl.load(src_ptr + offs, mask=mask).to(tl.float32)
        out = lerp_fp32(a, b, weight, SMALL_WEIGHT)
        tl.store(dst_ptr + offs, out.to(dst_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def lerp_fp32(a, b, weight, SMALL_WEIGHT: tl.constexpr):
        """torch.lerp's formula in fp32; SMALL_WEIGHT is |weight| < 0.5, decided once on the host."""
        if SMALL_WEIGHT:
            out = a + weight * (b - a)
        else:
            out = b - (b - a) * (1.0 - weight)
        return out


def lerp_triton(dst: torch.Tensor, src: torch.Tensor, weight: float) -> torch.Tensor:
    """Launch the lerp on dense dst and src sharing one layout."""
    numel = dst.numel()
    if numel == 0:
        return dst
    grid = (triton.cdiv(numel, _BLOCK),)
    _lerp_kernel[grid](dst, src, numel, float(weight), SMALL_WEIGHT=small_weight(float(weight)),
                       BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return dst
