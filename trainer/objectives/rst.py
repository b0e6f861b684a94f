"""RST(beta) as Yang et al. (NeurIPS 2020, spec/lipschitz.md) train it: CE(f(x), y) + beta * CE(f(x_adv), y).

The robust self-training objective of Raghunathan et al. (2020) without its unlabeled data: the clean
loss is kept next to the adversarial one (PGD-AT drops it), with x_adv from the PGD training attack.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.step_metrics import StepMetrics, loss_metric, mean_metric
from ..registry import OBJECTIVES
from .base import Objective, batch_accuracy, cross_entropy


@OBJECTIVES.register("rst", supports_ducat=False, graph_capturable=False)
class RST(Objective):
    name = "rst"

    def __init__(self, attack, beta: float):
        super().__init__(attack)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg, engine) -> RST:
        return cls(engine.train_attack(cfg.attack), cfg.method.rst_beta)

    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        """Two forwards, as TRADES does, so BatchNorm normalises clean and adversarial inputs with their own
        batch statistics (a joint forward would mix them)."""
        train_model.train()
        logits_nat = train_model(x)
        logits_adv = train_model(x_adv)
        natural = cross_entropy(logits_nat, y)
        robust = cross_entropy(logits_adv, y)
        metrics = {"acc": mean_metric(batch_accuracy(logits_nat, y)),
                   "adv_acc": mean_metric(batch_accuracy(logits_adv, y)),
                   "natural_loss": loss_metric(natural), "robust_loss": loss_metric(robust)}
        return natural + self.beta * robust, metrics
