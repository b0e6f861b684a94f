"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x_adv)), x_adv from the KL attack."""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks import TradesKL
from trainer.config import AttackConfig
from trainer.engine import phase
from trainer.engine.step_metrics import StepMetrics, loss_metric, mean_metric
from trainer.methods.base import ModelFactory, SingleNetworkMethod, batch_accuracy
from trainer.methods.ducat import DucatPlugin


def trades_loss(model: nn.Module, attack: TradesKL, x: torch.Tensor, y: torch.Tensor, beta: float, *,
                train_model: nn.Module | None = None, x_adv: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, StepMetrics]:
    """The TRADES objective with `model` in train mode; shared by TRADES and Generalist's robust expert.

    `train_model` (default `model`) is what the two training forwards run through: `model`'s DDP wrapper
    under torchrun, while the attack keeps the plain `model`. `x_adv`: the KL attack's result when the
    caller already ran it (to time it as its own phase); None runs `attack` here. Metrics are 0-dim tensors.
    """
    train_model = model if train_model is None else train_model
    if x_adv is None:
        with phase("attack"):
            x_adv = attack(model, x, y)
    model.train()
    logits_nat = train_model(x).float()
    logits_adv = train_model(x_adv).float()
    natural = nn.functional.cross_entropy(logits_nat, y)
    # KL(p(x) || p(x_adv)) summed over classes, averaged over the batch (the authors' sum / batch size).
    robust = nn.functional.kl_div(
        nn.functional.log_softmax(logits_adv, dim=1), nn.functional.softmax(logits_nat, dim=1),
        reduction="batchmean",
    )
    metrics = {"acc": mean_metric(batch_accuracy(logits_nat, y)), "adv_acc": mean_metric(batch_accuracy(logits_adv, y)),
               "kl": loss_metric(robust)}
    return natural + beta * robust, metrics


def build_trades_attack(cfg: AttackConfig) -> TradesKL:
    """The training-time KL attack, without the host-side input range check (see build_train_attack)."""
    attack = TradesKL(cfg.eps, cfg.step, cfg.steps)
    attack.check_input_range = False
    return attack


class TRADES(DucatPlugin, SingleNetworkMethod):
    name = "trades"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.attack = build_trades_attack(cfg.attack)
        self.beta = cfg.method.trades_beta
        self.enable_ducat(self.model)  # method.ducat: 2C head, folded eval models (trainer/methods/ducat.py)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        with phase("attack"):
            x_adv = self.attack(self.run_model, x, y)  # the KL attack (over the 2C softmax under DUCAT)
        if self.ducat_active:
            return self.ducat.trades_loss(self.train_model, x, x_adv, y, self.beta)
        return trades_loss(self.run_model, self.attack, x, y, self.beta, train_model=self.train_model, x_adv=x_adv)
