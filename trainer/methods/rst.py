"""RST(beta) as Yang et al. (NeurIPS 2020, spec/lipschitz.md) train it: CE(f(x), y) + beta * CE(f(x_adv), y).

The robust self-training objective of Raghunathan et al. (2020) without its unlabeled data: the clean
loss is kept next to the adversarial one (PGD-AT drops it), with x_adv from the PGD training attack.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import build_train_attack
from trainer.engine.step_metrics import StepMetrics, loss_metric, mean_metric
from trainer.methods.base import ModelFactory, SingleNetworkMethod, batch_accuracy, cross_entropy


def rst_loss(train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, StepMetrics]:
    """CE(f(x), y) + beta * CE(f(x_adv), y), both batch means, with `train_model` already in train mode.

    Two forwards, as TRADES does, so BatchNorm normalises clean and adversarial inputs with their own
    batch statistics (a joint forward would mix them).
    """
    logits_nat = train_model(x)
    logits_adv = train_model(x_adv)
    natural = cross_entropy(logits_nat, y)
    robust = cross_entropy(logits_adv, y)
    metrics = {"acc": mean_metric(batch_accuracy(logits_nat, y)), "adv_acc": mean_metric(batch_accuracy(logits_adv, y)),
               "natural_loss": loss_metric(natural), "robust_loss": loss_metric(robust)}
    return natural + beta * robust, metrics


class RST(SingleNetworkMethod):
    name = "rst"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.attack = build_train_attack(cfg.attack)
        self.beta = cfg.method.rst_beta

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        x_adv = self.attack(self.model, x, y)  # eval mode inside; BN statistics untouched
        self.model.train()
        return rst_loss(self.train_model, x, x_adv, y, self.beta)
