"""MART (Y. Wang et al., "Improving Adversarial Robustness Requires Revisiting Misclassified Examples", ICLR 2020).

loss = BCE(p(x_adv), y) + beta * mean_i KL(p(x_i) || p(x_adv_i)) * (1 - p_y(x_i)), with the boosted cross-entropy
BCE = CE(p(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)); x_adv from the PGD training attack on the cross-entropy.
As the authors' code does, the weight 1 - p_y(x) is not detached, and the logarithms are kept finite by small
offsets (1e-12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.step_metrics import StepMetrics, loss_metric, mean_metric
from ..registry import OBJECTIVES
from .base import Objective, batch_accuracy

TINY = 1e-12  # keeps log(0) out of the margin and KL terms


def mart_terms(logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(boosted CE, weighted KL), both batch means, from (N, K) fp32 logits."""
    probs_adv = F.softmax(logits_adv, dim=1)  # (N, K)
    # The most likely wrong class: the top class, or the runner-up where the top one is y.
    top2 = probs_adv.topk(2, dim=1).indices  # (N, 2)
    other = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])  # (N,)
    p_other = probs_adv.gather(1, other[:, None]).squeeze(1)  # (N,)
    boosted = F.cross_entropy(logits_adv, y) - torch.log(1 - p_other + TINY).mean()
    probs_nat = F.softmax(logits_nat, dim=1)
    kl = (probs_nat * (torch.log(probs_nat + TINY) - torch.log(probs_adv + TINY))).sum(1)  # (N,)
    p_true = probs_nat.gather(1, y[:, None]).squeeze(1)  # (N,)
    return boosted, (kl * (1 - p_true)).mean()


@OBJECTIVES.register("mart", supports_ducat=False, graph_capturable=False)
class MART(Objective):
    name = "mart"

    def __init__(self, attack, beta: float):
        super().__init__(attack)
        self.beta = beta

    @classmethod
    def from_config(cls, cfg, engine) -> MART:
        return cls(engine.train_attack(cfg.attack), cfg.method.mart.beta)

    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        train_model.train()
        logits_nat = train_model(x).float()
        logits_adv = train_model(x_adv).float()
        boosted, weighted_kl = mart_terms(logits_nat, logits_adv, y)
        metrics = {"acc": mean_metric(batch_accuracy(logits_nat, y)),
                   "adv_acc": mean_metric(batch_accuracy(logits_adv, y)),
                   "boosted_ce": loss_metric(boosted), "weighted_kl": loss_metric(weighted_kl)}
        return boosted + self.beta * weighted_kl, metrics
