"""Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018), Linf or L2, with a random start, maximising cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import pgd_l2_step_, pgd_linf_step_, pgd_random_start
from ..errors import ConfigError
from .base import Attack, draw_seed, local_generator

NORMS = ("linf", "l2")


def l2_random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None, *, sample_offset: int = 0,
                    total_samples: int | None = None) -> torch.Tensor:
    """x + delta, delta uniform in the L2 ball of radius eps, then clamped to [0,1].

    Uniform in the ball: a Gaussian direction normalised to the sphere, scaled by eps * U^(1/d)
    with d the number of pixels per sample. Clamping only shrinks |delta| coordinate-wise, so the
    start stays inside the ball. Sample i takes row sample_offset + i of the draws for a batch of
    total_samples rows (default: x's own rows), as `pgd_random_start` does.
    """
    n = x.shape[0]
    d = x[0].numel()
    rows = n if total_samples is None else total_samples
    window = slice(sample_offset, sample_offset + n)
    direction = torch.randn((rows, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)[window]
    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12)  # (N,)
    uniform = torch.rand(rows, generator=generator, device=x.device, dtype=x.dtype)[window]
    radius = eps * uniform ** (1.0 / d)  # (N,)
    shape = (n,) + (1,) * (x.dim() - 1)
    return (x + direction * (radius / norms).view(shape)).clamp_(0.0, 1.0)


def zero_fraction(grad: torch.Tensor) -> torch.Tensor:
    """Fraction of exactly-zero entries of `grad`, as a 0-dim fp32 tensor on its device (no host sync)."""
    return (grad == 0).float().mean()


class PGD(Attack):
    """PGD-k on the cross-entropy (summed over the batch: per-sample gradients are then unscaled).

    Diagnostic: after each call, `zero_grad_fraction` holds the fraction of exactly-zero input-gradient
    entries (a 0-dim device tensor, read it when convenient): of the last step only, or the mean over all
    steps with `zero_grad_every_step`. Zero gradients stall the sign step; a high fraction means gradient
    masking or, under low precision, gradients that underflowed (trainer/engine/precision.py).
    """

    def __init__(self, eps: float, step: float, steps: int, *, norm: str = "linf", random_start: bool = True,
                 generator: torch.Generator | None = None, zero_grad_every_step: bool = False):
        super().__init__(eps, step, steps, generator=generator)
        if norm not in NORMS:
            raise ConfigError(f"{type(self).__name__}: norm = {norm!r}, expected one of {NORMS}")
        self.norm = norm
        self.random_start = random_start
        self.zero_grad_every_step = zero_grad_every_step
        self.zero_grad_fraction: torch.Tensor | None = None

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The objective to maximise; logits (N, K) fp32, y (N,) -> scalar."""
        return F.cross_entropy(logits, y, reduction="sum")

    # The radius and step size of the current call: the configured scalars here; PerSamplePGD gives (N,) tensors.
    def radius(self) -> float | torch.Tensor:
        return self.eps

    def step_size(self) -> float | torch.Tensor:
        return self.step

    def ball_is_a_point(self) -> bool:
        """eps == 0: nothing to search (a per-sample radius cannot know without a host read, so it never says so)."""
        return self.eps == 0

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The first iterate: a uniform draw from the eps-ball clamped to [0,1], or x itself."""
        if not self.random_start:
            return x.clone()
        seed = draw_seed(self.generator)  # drawn even when eps == 0, so the RNG stream does not depend on eps
        if self.ball_is_a_point():
            return x.clone()
        offset, total = self.window_rows(x.shape[0])
        if self.norm == "linf":
            return pgd_random_start(x, self.radius(), seed, sample_offset=offset, total_samples=total)
        return l2_random_start(x, self.radius(), local_generator(seed, x.device), sample_offset=offset,
                               total_samples=total)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.zero_grad_fraction = None
        x_adv = self.start(x)  # (N, C, H, W), a new tensor
        if self.ball_is_a_point():
            return x_adv
        step_ = pgd_linf_step_ if self.norm == "linf" else pgd_l2_step_
        radius, step_size = self.radius(), self.step_size()
        zero_sum = None
        for i in range(self.steps):
            grad = self.input_grad(model, x_adv, lambda logits: self.loss(logits, y))
            if self.zero_grad_every_step:
                zero_sum = zero_fraction(grad) if zero_sum is None else zero_sum + zero_fraction(grad)
            elif i == self.steps - 1:
                self.zero_grad_fraction = zero_fraction(grad)
            step_(x_adv, grad, x, radius, step_size)
        if zero_sum is not None:
            self.zero_grad_fraction = zero_sum / self.steps
        return x_adv

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:.6g}, step={self.step:.6g}, steps={self.steps}, "
                f"norm={self.norm!r}, random_start={self.random_start})")
