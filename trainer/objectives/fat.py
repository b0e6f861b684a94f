"""Friendly adversarial training (J. Zhang et al., "Attacks Which Do Not Kill Training Make Adversarial Learning
Stronger", ICML 2020): cross-entropy on the early-stopped PGD's output (trainer/attacks/early_stop_pgd.py), each
sample stopped tau steps past the decision boundary, tau = `method.fat.tau`, raised over the run by the authors'
dynamic schedule when `method.fat.dynamic_tau` (their FAT.py: 0, 1, 2 over epochs 1-50, 51-90, 91-120 of 120)."""

from __future__ import annotations

from ..attacks import EarlyStopPGD
from ..registry import OBJECTIVES
from .pgd_at import PGDAT


def scheduled_tau(epoch: int, total_epochs: int, tau: int, dynamic: bool) -> int:
    """tau for the 1-based epoch: tau, then + 1 past 50/120 and + 2 past 90/120 of the run when `dynamic`."""
    if not dynamic:
        return tau
    # Integer comparisons: epoch 50 of 120 must stay below the first step.
    return tau + int(epoch * 120 > 50 * total_epochs) + int(epoch * 120 > 90 * total_epochs)


@OBJECTIVES.register("fat", supports_ducat=False, graph_capturable=False)
class FAT(PGDAT):
    """PGD-AT's loss on friendly adversarial examples."""

    name = "fat"

    def __init__(self, attack: EarlyStopPGD, dynamic_tau: bool = False):
        super().__init__(attack)
        self.base_tau = attack.tau
        self.dynamic_tau = dynamic_tau

    @classmethod
    def from_config(cls, cfg, engine) -> FAT:
        a = cfg.attack
        attack = EarlyStopPGD(a.eps, a.step, a.steps, tau=cfg.method.fat.tau, norm=a.norm,
                              random_start=a.random_start)
        attack.check_input_range = False  # as build_train_attack: the loaders produce [0, 1] by construction
        return cls(attack, cfg.method.fat.dynamic_tau)

    def start_epoch(self, epoch: int, total_epochs: int) -> dict[str, float]:
        self.attack.tau = scheduled_tau(epoch, total_epochs, self.base_tau, self.dynamic_tau)
        return {"fat_tau": float(self.attack.tau)}
