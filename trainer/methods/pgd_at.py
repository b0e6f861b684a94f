"""PGD adversarial training (Madry et al., ICLR 2018): cross-entropy on PGD adversarial inputs only."""

from __future__ import annotations

import torch

from trainer.attacks import build_train_attack
from trainer.methods.base import ModelFactory, SingleNetworkMethod, accuracy_count, cross_entropy


class PGDAT(SingleNetworkMethod):
    name = "pgd_at"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.attack = build_train_attack(cfg.attack)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        x_adv = self.attack(self.model, x, y)  # eval mode inside; BN statistics untouched
        self.model.train()
        logits = self.model(x_adv)
        return cross_entropy(logits, y), {"adv_acc": accuracy_count(logits, y)}
