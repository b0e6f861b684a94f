"""PGD with one radius and one step size per sample, given with each call (instance-adaptive adversarial training,
trainer/objectives/iat.py). The fused step and random-start kernels take (N,) eps and step tensors, so a batch with
N different radii is still one launch per step and no host read."""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import pgd_l2_step_, pgd_linf_step_, pgd_random_start
from .base import draw_seed, local_generator
from .pgd import PGD, l2_random_start, zero_fraction


class PerSamplePGD(PGD):
    """`attack(model, x, y, eps=eps_i, step=step_i)`: PGD-k on the cross-entropy with sample i in the ball of radius
    eps_i (N,) and moving step_i (N,) per step, both fp32 on x's device. A sample with eps_i = 0 stays at x.
    The constructor's eps and step are the configured scalars, which the caller derives the per-sample ones from."""

    def __init__(self, eps: float, step: float, steps: int, **kwargs):
        super().__init__(eps, step, steps, **kwargs)
        self._radius: torch.Tensor | None = None  # (N,) during a call
        self._step_size: torch.Tensor | None = None  # (N,) during a call

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: torch.Tensor,
                 step: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for name, value in (("eps", eps), ("step", step)):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                raise ValueError(f"{type(self).__name__}: {name} must be a ({n},) tensor, one value per sample")
        self._radius, self._step_size = eps, step
        try:
            return super().__call__(model, x, y)
        finally:
            self._radius = self._step_size = None

    def start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        seed = draw_seed(self.generator)
        offset, total = self.window_rows(x.shape[0])
        if self.norm == "linf":
            return pgd_random_start(x, self._radius, seed, sample_offset=offset, total_samples=total)
        return l2_random_start(x, self._radius, local_generator(seed, x.device), sample_offset=offset,
                               total_samples=total)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.zero_grad_fraction = None
        x_adv = self.start(x)  # (N, C, H, W), a new tensor
        step_ = pgd_linf_step_ if self.norm == "linf" else pgd_l2_step_
        for i in range(self.steps):
            grad = self.input_grad(model, x_adv, lambda logits: self.loss(logits, y))
            if i == self.steps - 1:
                self.zero_grad_fraction = zero_fraction(grad)
            step_(x_adv, grad, x, self._radius, self._step_size)
        return x_adv
