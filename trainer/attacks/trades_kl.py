"""The TRADES inner maximisation (Zhang et al., "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019): Linf sign steps maximising KL(p(x) || p(x_adv))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import pgd_linf_step_
from .base import Attack, draw_seed, local_generator


class TradesKL(Attack):
    """Start at x + 0.001 N(0, I) (projected onto the eps-ball and [0,1]), then `steps` signed-gradient
    steps on the KL divergence summed over the batch, projecting after each. Labels are not used:
    the target is the model's own clean prediction."""

    start_std = 0.001  # the authors' start: a tiny Gaussian nudge, enough to make the KL gradient non-zero

    def __init__(self, eps: float, step: float, steps: int, *, generator: torch.Generator | None = None):
        super().__init__(eps, step, steps, generator=generator)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seed = draw_seed(self.generator)
        if self.eps == 0:
            return x.clone()
        gen = local_generator(seed, x.device)
        # Row sample_offset + i of the draw for the whole (global) batch (trainer/attacks/base.py).
        offset, total = self.window_rows(x.shape[0])
        noise = torch.randn((total, *x.shape[1:]), generator=gen, device=x.device,
                            dtype=x.dtype)[offset:offset + x.shape[0]]  # (N, C, H, W)
        x_adv = torch.min(torch.max(x + self.start_std * noise, x - self.eps), x + self.eps).clamp_(0.0, 1.0)
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)  # (N, K), the fixed target distribution

        def kl(logits: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")

        for _ in range(self.steps):
            grad = self.input_grad(model, x_adv, kl)
            pgd_linf_step_(x_adv, grad, x, self.eps, self.step)
        return x_adv
