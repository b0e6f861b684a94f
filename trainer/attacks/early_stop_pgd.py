"""Early-stopped PGD of friendly adversarial training (J. Zhang et al., "Attacks Which Do Not Kill Training Make
Adversarial Learning Stronger", ICML 2020): each sample stops `tau` steps after it first becomes misclassified."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...kernels import pgd_l2_step_, pgd_linf_step_
from ..errors import ConfigError
from .pgd import PGD


class EarlyStopPGD(PGD):
    """PGD on the cross-entropy whose samples stop early. Before each of the `steps` steps the model predicts the
    current iterate; a misclassified sample with no budget left stops (keeps its iterate), one with budget spends
    one of its `tau` steps and continues. tau = 0 stops right at the first misclassified iterate.

    The stop is a per-sample step size of 0 (the fused step kernels take (N,) steps), so there is no host read.
    """

    def __init__(self, eps: float, step: float, steps: int, *, tau: int, **kwargs):
        super().__init__(eps, step, steps, **kwargs)
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
            raise ConfigError(f"{type(self).__name__}: tau = {tau!r}, expected an integer >= 0")
        self.tau = tau
        # (N,) int64 after each call: the steps each sample took (a diagnostic, read when convenient).
        self.steps_taken: torch.Tensor | None = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.zero_grad_fraction = None
        x_adv = self.start(x)  # (N, C, H, W)
        n = x.shape[0]
        budget = torch.full((n,), self.tau, dtype=torch.int64, device=x.device)  # (N,) steps left past the boundary
        running = budget >= 0  # (N,) all True
        taken = torch.zeros(n, dtype=torch.int64, device=x.device)
        if self.eps == 0:
            self.steps_taken = taken
            return x_adv
        step_ = pgd_linf_step_ if self.norm == "linf" else pgd_l2_step_
        for _ in range(self.steps):
            leaf = x_adv.detach().requires_grad_(True)
            logits = model(leaf).float()  # (N, K)
            wrong = logits.detach().argmax(1) != y
            stop = running & wrong & (budget == 0)
            spend = running & wrong & (budget > 0)
            budget = budget - spend.long()
            running = running & ~stop
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), leaf)
            step_(x_adv, grad, x, self.eps, self.step * running.to(x_adv.dtype))
            taken = taken + running.long()
        self.zero_grad_fraction = (grad == 0).float().mean()
        self.steps_taken = taken
        return x_adv

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", tau={self.tau})"
