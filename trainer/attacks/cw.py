"""CW-inf: Linf PGD on the Carlini-Wagner margin (Carlini & Wagner, IEEE S&P 2017), as adversarial
training papers (TRADES, MART, Generalist) evaluate it."""

from __future__ import annotations

import torch

from .pgd import PGD


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per sample; logits (N, K), y (N,) -> (N,). Positive means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)  # (N,)
    # -inf on the true class takes it out of the max without a magic constant.
    others = logits.scatter(1, y[:, None], float("-inf"))  # (N, K)
    return others.amax(dim=1) - true


class CWLinf(PGD):
    """PGD-k (Linf) maximising min(margin, kappa) summed over the batch; kappa caps the gain of a
    point already misclassified by a wide margin, so the steps go to the others."""

    def __init__(self, eps: float, step: float, steps: int, *, random_start: bool = True,
                 generator: torch.Generator | None = None, kappa: float = 50.0):
        super().__init__(eps, step, steps, norm="linf", random_start=random_start, generator=generator)
        self.kappa = float(kappa)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cw_margin(logits, y).clamp(max=self.kappa).sum()
