"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv from the KL attack."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import TradesKL
from ..config import AttackConfig
from ..engine.step_metrics import StepMetrics, loss_metric, mean_metric
from ..registry import OBJECTIVES
from .base import Objective, batch_accuracy


def build_trades_attack(cfg: AttackConfig) -> TradesKL:
    """The training-time KL attack, without the host-side input range check (see build_train_attack)."""
    attack = TradesKL(cfg.eps, cfg.step, cfg.steps)
    attack.check_input_range = False
    return attack


def kl_batchmean(logits_nat: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x_adv)) summed over classes, averaged over the batch (the authors' sum / batch size)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")


@OBJECTIVES.register("trades", supports_ducat=True, graph_capturable=False)
class TRADES(Objective):
    name = "trades"

    def __init__(self, attack: TradesKL, beta: float):
        super().__init__(attack)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg, engine) -> TRADES:
        return cls(build_trades_attack(cfg.attack), cfg.method.trades_beta)

    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        train_model.train()
        logits_nat = train_model(x).float()
        logits_adv = train_model(x_adv).float()
        natural = F.cross_entropy(logits_nat, y)
        robust = kl_batchmean(logits_nat, logits_adv)
        metrics = {"acc": mean_metric(batch_accuracy(logits_nat, y)),
                   "adv_acc": mean_metric(batch_accuracy(logits_adv, y)), "kl": loss_metric(robust)}
        return natural + self.beta * robust, metrics

    def ducat_loss(self, ducat, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, StepMetrics]:
        """TRADES + DUCAT: the soft two-hot cross-entropy of [x; x_adv] + beta KL(p(x) || p(x_adv)) over 2C
        classes, both from the same joint forward."""
        soft, logits_clean, logits_adv = ducat.joint_forward(train_model, x, x_adv, y)
        kl = kl_batchmean(logits_clean, logits_adv)
        metrics = ducat.metrics(logits_clean, logits_adv, y)
        metrics["kl"] = loss_metric(kl)
        return soft + self.beta * kl, metrics
