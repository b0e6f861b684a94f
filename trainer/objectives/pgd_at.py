"""PGD adversarial training (Madry et al., ICLR 2018): cross-entropy on PGD adversarial inputs only."""

from __future__ import annotations

import torch
from torch import nn

from ..engine.step_metrics import StepMetrics, mean_metric
from ..registry import OBJECTIVES
from .base import Objective, batch_accuracy, cross_entropy


@OBJECTIVES.register("pgd_at", supports_ducat=True, graph_capturable=True)
class PGDAT(Objective):
    name = "pgd_at"

    @classmethod
    def from_config(cls, cfg, engine) -> PGDAT:
        return cls(engine.train_attack(cfg.attack))  # graph-safe under engine.cuda_graphs

    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        train_model.train()
        logits = train_model(x_adv)
        return cross_entropy(logits, y), {"adv_acc": mean_metric(batch_accuracy(logits, y))}

    def ducat_loss(self, ducat, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, StepMetrics]:
        """PGD-AT + DUCAT: the soft two-hot cross-entropy of [x; x_adv] (trainer/objectives/ducat.py)."""
        loss, logits_clean, logits_adv = ducat.joint_forward(train_model, x, x_adv, y)
        return loss, ducat.metrics(logits_clean, logits_adv, y)
