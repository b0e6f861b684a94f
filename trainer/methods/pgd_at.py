"""PGD adversarial training (Madry et al., ICLR 2018): cross-entropy on PGD adversarial inputs only."""

from __future__ import annotations

import torch

from trainer.engine import phase
from trainer.engine.step_metrics import StepMetrics, mean_metric
from trainer.methods.base import ModelFactory, SingleNetworkMethod, batch_accuracy, cross_entropy
from trainer.methods.ducat import DucatPlugin


class PGDAT(DucatPlugin, SingleNetworkMethod):
    name = "pgd_at"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.attack = self.engine.train_attack(cfg.attack)  # graph-safe under engine.cuda_graphs
        self.enable_ducat(self.model)  # method.ducat: 2C head, folded eval models (trainer/methods/ducat.py)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        with phase("attack"):
            x_adv = self.attack(self.run_model, x, y)  # eval mode inside; BN statistics untouched
        if self.ducat_active:
            return self.ducat.pgd_at_loss(self.train_model, x, x_adv, y)
        self.model.train()
        logits = self.train_model(x_adv)
        return cross_entropy(logits, y), {"adv_acc": mean_metric(batch_accuracy(logits, y))}
