"""Fused L2 PGD step (Madry et al., ICLR 2018, arXiv 1706.06083), in place, per sample n:

    g_hat = grad_n / (||grad_n||_2 + 1e-12)
    delta = x_adv_n + step * g_hat - x_n
    x_adv_n <- clamp(x_n + delta * min(1, eps / ||delta||_2), lo, hi)

All arithmetic in fp32, rounded once on the store. The 1e-12 guard makes a zero-gradient sample stay
where it is (0 / 1e-12 = 0) instead of producing NaN; it changes no realistic gradient's direction.

Non-finite gradients: NaN elements count as 0 (they neither move nor enter the norm). If a sample has
+-inf elements, its direction is the limit of the normalised gradient as those elements grow: sign(g) on
the k infinite elements, 0 elsewhere, norm sqrt(k). A sample whose finite squared norm overflows fp32
(|g| beyond about 1e19) has an infinite norm and does not move.

One Triton program per sample walks the sample three times (gradient norm, step norm, write); a CIFAR
sample is 12 KB in fp32, so the second and third walks hit L2 and DRAM sees about one pass.
"""

from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, tl, triton
from .layout import per_sample_view

NORM_GUARD = 1e-12
_MAX_BLOCK = 4096


def pgd_l2_step_reference(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                          eps: float | torch.Tensor, step: float | torch.Tensor,
                          lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """The L2 step in torch (in place on x_adv, shape (N, ...)); the semantics every provider matches."""
    n = x_adv.shape[0]
    g = grad.float().reshape(n, -1)
    finite = torch.isfinite(g)
    infinite = torch.isinf(g)
    n_inf = infinite.sum(dim=1, dtype=torch.float32)
    has_inf = (n_inf > 0)[:, None]
    direction = torch.where(has_inf, torch.where(infinite, torch.sign(g), 0.0), torch.where(finite, g, 0.0))
    norm = torch.where(has_inf[:, 0], n_inf.sqrt(), direction.square().sum(dim=1).sqrt())
    scale = per_sample_view(step, norm) / (norm + NORM_GUARD)
    x0 = x.float().reshape(n, -1)
    delta = (x_adv.float().reshape(n, -1) + scale[:, None] * direction) - x0
    dnorm = delta.square().sum(dim=1).sqrt()
    eps = per_sample_view(eps, dnorm)
    factor = torch.where(dnorm > eps, eps / dnorm, 1.0)
    new = (x0 + delta * factor[:, None]).clamp_(lo, hi)
    x_adv.copy_(new.view(x_adv.shape))
    return x_adv


if HAS_TRITON:

    @triton.jit
    def _pgd_l2_step_kernel(
        x_adv_ptr,  # (N, D) x_adv, each sample one contiguous row of D elements, fp32 / bf16 / fp16; in place
        grad_ptr,  # (N, D) d loss / d x_adv in the same layout, fp32 / bf16 / fp16
        x_ptr,  # (N, D) clean input, same dtype and layout as x_adv
        eps_ptr,  # (N,) fp32 per-sample radius; read only when EPS_PER_SAMPLE
        step_ptr,  # (N,) fp32 per-sample step size; read only when STEP_PER_SAMPLE
        sample_numel,  # D
        eps,
        step,
        lo,
        hi,
        guard,  # NORM_GUARD
        EPS_PER_SAMPLE: tl.constexpr,
        STEP_PER_SAMPLE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        n = tl.program_id(0)
        base = n.to(tl.int64) * sample_numel
        if EPS_PER_SAMPLE:
            radius = tl.load(eps_ptr + n)
        else:
            radius = eps
        if STEP_PER_SAMPLE:
            size = tl.load(step_ptr + n)
        else:
            size = step
        cols = tl.arange(0, BLOCK)

        # Walk 1: squared norm of the finite entries and the number of infinite ones.
        sq = tl.zeros((BLOCK,), dtype=tl.float32)
        infs = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, sample_numel, BLOCK):
            mask = start + cols < sample_numel
            g = tl.load(grad_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
            is_inf = tl.abs(g) == float("inf")
            sq += tl.where(tl.abs(g) < float("inf"), g * g, 0.0)  # NaN and +-inf fail the test
            infs += tl.where(is_inf, 1.0, 0.0)
        n_inf = tl.sum(infs, axis=0)
        has_inf = n_inf > 0
        norm = tl.where(has_inf, tl.sqrt(n_inf), tl.sqrt(tl.sum(sq, axis=0)))
        scale = size / (norm + guard)

        # Walk 2: norm of delta = x_adv + scale * direction - x.
        dsq = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, sample_numel, BLOCK):
            mask = start + cols < sample_numel
            offs = base + start + cols
            g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            direction = _l2_direction(g, has_inf)
            xa = tl.load(x_adv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            delta = (xa + scale * direction) - x0
            dsq += tl.where(mask, delta * delta, 0.0)
        dnorm = tl.sqrt(tl.sum(dsq, axis=0))
        factor = tl.where(dnorm > radius, radius / dnorm, 1.0)

        # Walk 3: project onto the eps-ball, clamp, store.
        for start in range(0, sample_numel, BLOCK):
            mask = start + cols < sample_numel
            offs = base + start + cols
            g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            direction = _l2_direction(g, has_inf)
            xa = tl.load(x_adv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            x0 = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            delta = (xa + scale * direction) - x0
            new = x0 + delta * factor
            new = tl.maximum(new, lo, propagate_nan=tl.PropagateNan.ALL)
            new = tl.minimum(new, hi, propagate_nan=tl.PropagateNan.ALL)
            tl.store(x_adv_ptr + offs, new.to(x_adv_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _l2_direction(g, has_inf):
        # The sample's step direction before normalisation, as in the reference: with infinite entries,
        # their signs alone; otherwise the gradient with NaN entries zeroed.
        inf_sign = tl.where(g == float("inf"), 1.0, tl.where(g == -float("inf"), -1.0, 0.0))
        finite = tl.where(tl.abs(g) < float("inf"), g, 0.0)
        return tl.where(has_inf, inf_sign, finite)


def pgd_l2_step_triton(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
                       eps: float | torch.Tensor, step: float | torch.Tensor,
                       lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Launch the L2 step: one program per sample. Dense tensors, one layout, each sample contiguous."""
    if x_adv.numel() == 0:
        return x_adv
    n = x_adv.shape[0]
    sample_numel = x_adv.numel() // n
    block = min(triton.next_power_of_2(sample_numel), _MAX_BLOCK)
    eps_per_sample = isinstance(eps, torch.Tensor)
    step_per_sample = isinstance(step, torch.Tensor)
    _pgd_l2_step_kernel[(n,)](
        x_adv, grad, x,
        eps if eps_per_sample else x_adv,  # any pointer will do when the kernel does not read it
        step if step_per_sample else x_adv,
        sample_numel,
        0.0 if eps_per_sample else float(eps), 0.0 if step_per_sample else float(step),
        float(lo), float(hi), NORM_GUARD,
        EPS_PER_SAMPLE=eps_per_sample, STEP_PER_SAMPLE=step_per_sample, BLOCK=block,
        num_warps=4 if block <= 1024 else 8,
    )
    return x_adv
