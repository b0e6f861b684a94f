"""Friendly adversarial training (J. Zhang et al., "Attacks Which Do Not Kill Training Make Adversarial Learning
Stronger", ICML 2020): cross-entropy on the early-stopped PGD's output (trainer/attacks/early_stop_pgd.py), each
sample stopped `method.fat.tau` steps past the decision boundary."""

from __future__ import annotations

from ..attacks import EarlyStopPGD
from ..registry import OBJECTIVES
from .pgd_at import PGDAT


@OBJECTIVES.register("fat", supports_ducat=False, graph_capturable=False)
class FAT(PGDAT):
    """PGD-AT's loss on friendly adversarial examples."""

    name = "fat"

    @classmethod
    def from_config(cls, cfg, engine) -> FAT:
        a = cfg.attack
        attack = EarlyStopPGD(a.eps, a.step, a.steps, tau=cfg.method.fat.tau, norm=a.norm,
                              random_start=a.random_start)
        attack.check_input_range = False  # as build_train_attack: the loaders produce [0, 1] by construction
        return cls(attack)
