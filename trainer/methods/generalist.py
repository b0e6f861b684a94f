"""Generalist: bi-expert adversarial training (H. Wang, Y. Wang, CVPR 2023, arXiv 2303.13813).

Five networks share ONE initialisation: the robust expert theta_R (trained on PGD inputs only), the
natural expert theta_N (clean inputs only), their moving averages S_R and S_N, and the global learner G,
an average of the mix beta * S_R + (1 - beta) * S_N. In sync epochs G is copied back into both experts.
G is the model that is evaluated, selected and shipped.

Each network keeps its floating-point parameters and buffers (BatchNorm statistics included) in one
contiguous arena, so the averaging, mixing and redistribution of a step are one kernel pass over the
flat buffers, instead of the authors' per-key state_dict rebuilds (spec/generalist.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels import FlatArena, generalist_average_
from trainer.attacks import build_train_attack
from trainer.methods.base import Method, ModelFactory, accuracy_count, cross_entropy
from trainer.methods.generalist_schedule import ema_decay, is_sync_epoch, mix_beta
from trainer.methods.trades import build_trades_attack, trades_loss
from trainer.optim import build_sgd, set_lr


class Generalist(Method):
    name = "generalist"

    def __init__(self, cfg, model_factory: ModelFactory, device: torch.device):
        super().__init__(cfg, model_factory, device)
        self.gcfg = cfg.method.generalist
        origin = model_factory().to(device)
        self.robust = origin
        self.natural = copy.deepcopy(origin)
        self.avg_robust = copy.deepcopy(origin)
        self.avg_natural = copy.deepcopy(origin)
        self.global_model = copy.deepcopy(origin)
        for averaged in (self.avg_robust, self.avg_natural, self.global_model):
            averaged.requires_grad_(False)
            averaged.eval()
        # Built after .to(device): the modules' tensors become views into one buffer per network.
        self.arenas = {name: FlatArena(net) for name, net in self._five().items()}
        self.robust_optimizer = build_sgd(self.robust.parameters(), self.gcfg.robust_optim, device)
        self.natural_optimizer = build_sgd(self.natural.parameters(), self.gcfg.natural_optim, device)
        if self.gcfg.robust_objective == "trades":
            self.robust_attack = build_trades_attack(cfg.attack)
        else:
            self.robust_attack = build_train_attack(cfg.attack)
        self.epoch = 1
        self.beta = 1.0
        self.sync_epoch = False

    def _five(self) -> dict[str, nn.Module]:
        return {"robust": self.robust, "natural": self.natural, "avg_robust": self.avg_robust,
                "avg_natural": self.avg_natural, "global": self.global_model}

    def networks(self) -> dict[str, nn.Module]:
        return self._five()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"robust": self.robust_optimizer, "natural": self.natural_optimizer}

    def eval_models(self) -> dict[str, nn.Module]:
        return {"global": self.global_model, "robust": self.robust, "natural": self.natural}

    def start_epoch(self, epoch: int) -> dict[str, float]:
        total = self.cfg.train.epochs
        self.epoch = epoch
        lr_r = self.gcfg.robust_optim.lr.at(epoch, total)
        lr_n = self.gcfg.natural_optim.lr.at(epoch, total)
        set_lr(self.robust_optimizer, lr_r)
        set_lr(self.natural_optimizer, lr_n)
        self.beta = mix_beta(epoch, total, self.gcfg)
        self.sync_epoch = is_sync_epoch(epoch, total, self.gcfg)
        return {"lr_robust": lr_r, "lr_natural": lr_n, "beta": self.beta, "sync": float(self.sync_epoch)}

    def _robust_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        if self.gcfg.robust_objective == "trades":
            loss, metrics = trades_loss(self.robust, self.robust_attack, x, y, self.cfg.method.trades_beta)
        else:
            x_adv = self.robust_attack(self.robust, x, y)  # eval mode inside: BN running stats untouched
            self.robust.train()
            logits = self.robust(x_adv)
            loss = cross_entropy(logits, y)
            metrics = {"adv_acc": accuracy_count(logits, y)}
        self.robust_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.robust_optimizer.step()
        return {"robust_loss": float(loss.detach()), **{f"robust_{k}": v for k, v in metrics.items()}}

    def _natural_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.natural.train()
        logits = self.natural(x)
        loss = cross_entropy(logits, y)
        self.natural_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.natural_optimizer.step()
        return {"natural_loss": float(loss.detach()), "natural_acc": accuracy_count(logits, y)}

    def average_and_mix(self, decay: float, redistribute: bool) -> None:
        """S <- d S + (1-d) theta for both experts, G <- d G + (1-d) mix, optionally experts <- G."""
        a = self.arenas
        generalist_average_(a["robust"].flat, a["natural"].flat, a["avg_robust"].flat, a["avg_natural"].flat,
                            a["global"].flat, decay=decay, beta=self.beta, redistribute=redistribute)
        self._average_integer_buffers(decay, redistribute)

    def _average_integer_buffers(self, decay: float, redistribute: bool) -> None:
        # The authors mix every state_dict entry, BatchNorm's step counter included; an integer tensor
        # cannot hold the fractional mix, so it is mixed in float64 and rounded to the nearest integer.
        a = self.arenas
        for key, g in a["global"].int_buffers.items():
            t_r, t_n = a["robust"].int_buffers[key], a["natural"].int_buffers[key]
            s_r, s_n = a["avg_robust"].int_buffers[key], a["avg_natural"].int_buffers[key]
            new_sr = decay * s_r.double() + (1 - decay) * t_r.double()
            new_sn = decay * s_n.double() + (1 - decay) * t_n.double()
            new_g = decay * g.double() + (1 - decay) * (self.beta * new_sr + (1 - self.beta) * new_sn)
            s_r.copy_(new_sr.round())
            s_n.copy_(new_sn.round())
            g.copy_(new_g.round())
            if redistribute:
                t_r.copy_(g)
                t_n.copy_(g)

    def redistribute(self) -> None:
        """theta_R <- G and theta_N <- G (parameters and buffers); optimiser momentum is kept."""
        self.arenas["robust"].copy_from(self.arenas["global"])
        self.arenas["natural"].copy_from(self.arenas["global"])

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        metrics = self._robust_step(x, y)
        metrics.update(self._natural_step(x, y))
        decay = ema_decay(self.global_step, self.gcfg)
        sync_now = self.sync_epoch and self.gcfg.sync_mode == "every_step"
        self.average_and_mix(decay, redistribute=sync_now)
        self.global_step += 1
        metrics["decay"] = decay
        return metrics

    def end_epoch(self, epoch: int) -> None:
        if self.sync_epoch and self.gcfg.sync_mode == "epoch_end":
            self.redistribute()
