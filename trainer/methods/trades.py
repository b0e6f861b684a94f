"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv from the KL attack."""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import TradesKL
from trainer.config import AttackConfig
from trainer.methods.base import ModelFactory, SingleNetworkMethod, accuracy_count


def trades_loss(model: nn.Module, attack: TradesKL, x: torch.Tensor, y: torch.Tensor, beta: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """The TRADES objective with `model` in train mode; shared by TRADES and Generalist's robust expert."""
    x_adv = attack(model, x, y)
    model.train()
    logits_nat = model(x).float()
    logits_adv = model(x_adv).float()
    natural = nn.functional.cross_entropy(logits_nat, y)
    # KL(p(x) || p(x_adv)) summed over classes, averaged over the batch (the authors' sum / batch size).
    robust = nn.functional.kl_div(
        nn.functional.log_softmax(logits_adv, dim=1), nn.functional.softmax(logits_nat, dim=1),
        reduction="batchmean",
    )
    metrics = {"acc": accuracy_count(logits_nat, y), "adv_acc": accuracy_count(logits_adv, y),
               "kl": float(robust.detach())}
    return natural + beta * robust, metrics


def build_trades_attack(cfg: AttackConfig) -> TradesKL:
    return TradesKL(cfg.eps, cfg.step, cfg.steps)


class TRADES(SingleNetworkMethod):
    name = "trades"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.attack = build_trades_attack(cfg.attack)
        self.beta = cfg.method.trades_beta

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return trades_loss(self.model, self.attack, x, y, self.beta)
