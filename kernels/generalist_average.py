"""Generalist's moving averages and mix in one pass over flat fp32 buffers (Wang & Wang, CVPR 2023,
arXiv 2303.13813):

    S_R <- d S_R + (1-d) theta_R
    S_N <- d S_N + (1-d) theta_N
    G   <- d G   + (1-d) (beta S_R + (1-beta) S_N)      (with the S_R, S_N just computed)
    optionally theta_R <- G and theta_N <- G             (redistribution)

Each buffer is a FlatArena's `flat`: one network's parameters and float buffers. The pass reads 5 and
writes 3 fp32 values per parameter (32 bytes; 40 with redistribution), whatever the number of layers.

Each of the three updates is a linear interpolation, d S + (1-d) theta = lerp(S, theta, 1-d) and
beta S_R + (1-beta) S_N = lerp(S_N, S_R, beta), evaluated in fp32 with torch.lerp's formula (exact at
weights 0 and 1, so decay 0 copies and decay 1 leaves the averages untouched). That also makes the torch
reference, the CPU fallback, four passes over memory instead of the seven of the mul/add form.
"""

from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, tl, triton
from .lerp import small_weight

# Five fp32 streams per element: 2048 elements and 8 warps give each thread eight values per stream
# (two 16-byte loads each) in flight.
_BLOCK = 2048
_NUM_WARPS = 8


def generalist_average_reference(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor,
                                 s_n: torch.Tensor, g: torch.Tensor, decay: float, beta: float,
                                 redistribute: bool = False) -> None:
    """The update in torch, in place; the semantics every provider matches (to fp32 rounding)."""
    s_r.lerp_(theta_r, 1.0 - decay)
    s_n.lerp_(theta_n, 1.0 - decay)
    g.lerp_(torch.lerp(s_n, s_r, beta), 1.0 - decay)
    if redistribute:
        theta_r.copy_(g)
        theta_n.copy_(g)


if HAS_TRITON:
    from .lerp import lerp_fp32

    @triton.jit
    def _generalist_average_kernel(
        theta_r_ptr,  # (numel,) fp32 robust expert; read, and overwritten with G when REDISTRIBUTE
        theta_n_ptr,  # (numel,) fp32 natural expert; read, and overwritten with G when REDISTRIBUTE
        s_r_ptr,  # (numel,) fp32 moving average of theta_R; read and overwritten
        s_n_ptr,  # (numel,) fp32 moving average of theta_N; read and overwritten
        g_ptr,  # (numel,) fp32 global learner; read and overwritten
        numel,
        weight,  # 1 - d, rounded once to fp32 from the float64 host value, as torch.lerp rounds its weight
        beta,
        SMALL_WEIGHT: tl.constexpr,  # |1 - d| < 0.5: which of torch.lerp's two formulas applies
        SMALL_BETA: tl.constexpr,  # |beta| < 0.5
        REDISTRIBUTE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        theta_r = tl.load(theta_r_ptr + offs, mask=mask)
        theta_n = tl.load(theta_n_ptr + offs, mask=mask)
        s_r = tl.load(s_r_ptr + offs, mask=mask)
        s_n = tl.load(s_n_ptr + offs, mask=mask)
        g = tl.load(g_ptr + offs, mask=mask)
        s_r = lerp_fp32(s_r, theta_r, weight, SMALL_WEIGHT)
        s_n = lerp_fp32(s_n, theta_n, weight, SMALL_WEIGHT)
        g = lerp_fp32(g, lerp_fp32(s_n, s_r, beta, SMALL_BETA), weight, SMALL_WEIGHT)
        tl.store(s_r_ptr + offs, s_r, mask=mask)
        tl.store(s_n_ptr + offs, s_n, mask=mask)
        tl.store(g_ptr + offs, g, mask=mask)
        if REDISTRIBUTE:
            tl.store(theta_r_ptr + offs, g, mask=mask)
            tl.store(theta_n_ptr + offs, g, mask=mask)


def generalist_average_triton(theta_r: torch.Tensor, theta_n: torch.Tensor, s_r: torch.Tensor,
                              s_n: torch.Tensor, g: torch.Tensor, decay: float, beta: float,
                              redistribute: bool = False) -> None:
    """Launch the fused update over five 1-D contiguous fp32 buffers of one length."""
    numel = g.numel()
    if numel == 0:
        return
    grid = (triton.cdiv(numel, _BLOCK),)
    weight = 1.0 - float(decay)
    _generalist_average_kernel[grid](
        theta_r, theta_n, s_r, s_n, g, numel, weight, float(beta),
        SMALL_WEIGHT=small_weight(weight), SMALL_BETA=small_weight(float(beta)),
        REDISTRIBUTE=bool(redistribute), BLOCK=_BLOCK, num_warps=_NUM_WARPS,
    )
