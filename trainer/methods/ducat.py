"""DUCAT: dummy classes for adversarial training (Y. Wang et al., "New Paradigm of Adversarial Training:
Breaking Inherent Trade-Off between Accuracy and Robustness via Dummy Classes", arXiv 2410.12671;
spec/ducat.md), as a plug-in for PGD-AT, TRADES and Generalist's robust expert.

The head has 2C logits: column k is class k, column k + C its dummy. Once active (late in the run),
one train-mode forward of the concatenated batch [x; x_adv] is trained with soft two-hot targets:
clean x -> 0.75 on y and 0.25 on y + C, adversarial x_adv -> 1.0 on y + C (all config). Before that
the 2C head trains with the base method's own hard-label loss. The training attacks are unchanged:
PGD maximises cross-entropy over all 2C logits against the original label y (the authors' attack),
TRADES' KL attack compares the 2C softmaxes. Evaluation and export see the max-folded C logits
(`trainer.eval.class_fold`), decision-identical to argmax-then-mod-C.

Generalist + DUCAT (ours; no public system has it): all five networks carry the 2C head, so the
averaging runs over flat buffers of one layout. The robust expert trains the DUCAT objective of its
base (PGD-AT or TRADES) and therefore sees [x; x_adv] rather than x_adv alone. The natural expert
never sees x_adv, so DUCAT's only target for it is the one DUCAT gives a clean input: by default
(`natural_target: two_hot`) the same 0.75 / 0.25 two-hot target as the robust side's clean half, so
that both experts (and the G interpolated between them) agree on where clean inputs belong in the
2C space; `hard` keeps the plain cross-entropy on y over the 2C logits (dummy columns pushed down).
Before activation the natural expert uses that hard cross-entropy either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import DUCAT_METHODS, DucatConfig
from trainer.engine.step_metrics import StepMetrics, loss_metric, mean_metric
from trainer.errors import ConfigError
from trainer.eval.class_fold import fold_max, fold_models
from trainer.models import with_dummy_classes

__all__ = ["DUCAT_METHODS", "DucatObjective", "DucatPlugin", "dummy_class_factory", "soft_cross_entropy",
           "two_hot_targets"]


def first_active_epoch(total_epochs: int, cfg: DucatConfig) -> int:
    """First 1-based epoch with the DUCAT loss: ceil(start * E) (105 of 130 with the default start)."""
    # The tiny offset absorbs float error: (105 / 130) * 130 must give 105, not 106.
    return max(1, math.ceil(cfg.start * total_epochs - 1e-9))


def is_active(epoch: int, total_epochs: int, cfg: DucatConfig) -> bool:
    return cfg.enabled and epoch >= first_active_epoch(total_epochs, cfg)


def two_hot_targets(y: torch.Tensor, num_classes: int, true_weight: float, dummy_weight: float) -> torch.Tensor:
    """(N,) labels in [0, C) -> (N, 2C) fp32 targets: true_weight at column y, dummy_weight at y + C."""
    targets = torch.zeros(y.shape[0], 2 * num_classes, device=y.device, dtype=torch.float32)
    rows = torch.arange(y.shape[0], device=y.device)
    targets[rows, y] = true_weight
    targets[rows, y + num_classes] = dummy_weight
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_k t_ik log softmax(z_i)_k over (N, K) logits and (N, K) targets, in fp32.

    The targets are used as given (not renormalised): a weight w on a one-hot target scales its term by w.
    """
    return F.cross_entropy(logits.float(), targets.float())


# The metrics are 0-dim device tensors, not floats: no host sync inside the step (trainer/engine/step_metrics.py).
def folded_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of DUCAT's prediction (max-fold, i.e. argmax-then-mod-C) from (N, 2C) logits."""
    return (fold_max(logits.detach()).argmax(1) == y).float().mean()


def dummy_rate(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of inputs whose largest of the (N, 2C) logits is a dummy column."""
    return (logits.detach().argmax(1) >= logits.shape[1] // 2).float().mean()


class DucatObjective:
    """DUCAT's targets, losses and activation state for one network with a 2C head."""

    def __init__(self, cfg: DucatConfig, num_classes: int):
        self.cfg = cfg
        self.num_classes = num_classes  # C, the real classes
        self.active = False

    def start_epoch(self, epoch: int, total_epochs: int) -> bool:
        self.active = is_active(epoch, total_epochs, self.cfg)
        return self.active

    def clean_targets(self, y: torch.Tensor) -> torch.Tensor:
        return two_hot_targets(y, self.num_classes, self.cfg.clean_true_weight, self.cfg.clean_dummy_weight)

    def adversarial_targets(self, y: torch.Tensor) -> torch.Tensor:
        return two_hot_targets(y, self.num_classes, 0.0, self.cfg.adv_dummy_weight)

    def _joint_forward(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One train-mode forward of [x; x_adv] (BatchNorm sees both halves as one batch, as the authors
        train); returns the soft-target loss over the 2N rows and the clean and adversarial logits."""
        model.train()
        logits = model(torch.cat([x, x_adv])).float()  # (2N, 2C)
        targets = torch.cat([self.clean_targets(y), self.adversarial_targets(y)])  # (2N, 2C)
        logits_clean, logits_adv = logits.split(x.shape[0])
        return soft_cross_entropy(logits, targets), logits_clean, logits_adv

    @staticmethod
    def _metrics(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> StepMetrics:
        return {"acc": mean_metric(folded_accuracy(logits_clean, y)),
                "adv_acc": mean_metric(folded_accuracy(logits_adv, y)),
                "adv_dummy": mean_metric(dummy_rate(logits_adv))}

    def pgd_at_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, StepMetrics]:
        """PGD-AT + DUCAT: the soft two-hot cross-entropy of [x; x_adv]; `model` in train mode after."""
        loss, logits_clean, logits_adv = self._joint_forward(model, x, x_adv, y)
        return loss, self._metrics(logits_clean, logits_adv, y)

    def trades_loss(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, beta: float
                    ) -> tuple[torch.Tensor, StepMetrics]:
        """TRADES + DUCAT: the soft two-hot cross-entropy of [x; x_adv] + beta KL(p(x) || p(x_adv)) over 2C
        classes, both from the same joint forward."""
        soft, logits_clean, logits_adv = self._joint_forward(model, x, x_adv, y)
        kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        metrics = self._metrics(logits_clean, logits_adv, y)
        metrics["kl"] = loss_metric(kl)
        return soft + beta * kl, metrics

    def natural_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, StepMetrics]:
        """Generalist's natural expert while DUCAT is active: clean inputs only (see the module docstring)."""
        model.train()
        logits = model(x).float()  # (N, 2C)
        if self.cfg.natural_target == "two_hot":
            loss = soft_cross_entropy(logits, self.clean_targets(y))
        else:
            loss = F.cross_entropy(logits, y)
        return loss, {"acc": mean_metric(folded_accuracy(logits, y))}


def real_classes(network: nn.Module) -> int:
    """C from a network built with a 2C head (its `num_classes` attribute)."""
    head = getattr(network, "num_classes", None)
    if not isinstance(head, int) or head < 2 or head % 2 != 0:
        raise ConfigError(f"method.ducat.enabled: the network {type(network).__name__} has num_classes = "
                          f"{head!r}; DUCAT needs a 2C-class head (build it through dummy_class_factory)")
    return head // 2


def dummy_class_factory(model_factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A factory whose networks have a 2C-class head (real classes, then one dummy per class)."""

    def build() -> nn.Module:
        return with_dummy_classes(model_factory())

    return build


class DucatPlugin:
    """Mixed into a method class before its base (`class PGDAT(DucatPlugin, SingleNetworkMethod)`).

    With `method.ducat.enabled` it holds the `DucatObjective`, switches it on at its epoch, and makes
    `eval_models()` return max-folded C-logit models, so validation, every evaluation attack and the
    export all see DUCAT's real prediction without knowing about DUCAT. Disabled, it changes nothing.
    """

    ducat: DucatObjective | None = None

    def enable_ducat(self, network: nn.Module) -> None:
        """Call in __init__ with the network whose 2C head defines C (built by dummy_class_factory)."""
        cfg: DucatConfig = self.cfg.method.ducat  # type: ignore[attr-defined]
        self.ducat = DucatObjective(cfg, real_classes(network)) if cfg.enabled else None

    @property
    def ducat_active(self) -> bool:
        return self.ducat is not None and self.ducat.active

    def ducat_eval_models(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The models max-folded when DUCAT is on, unchanged otherwise."""
        return fold_models(models) if self.ducat is not None else models

    def selectable_epoch(self, epoch: int) -> bool:
        """With DUCAT on, only epochs from its activation on: an earlier best-on-validation checkpoint would be
        a model DUCAT never trained (with late activation it often scores higher on validation right before)."""
        if self.ducat is None:
            return super().selectable_epoch(epoch)  # type: ignore[misc]
        return epoch >= first_active_epoch(self.cfg.train.epochs, self.ducat.cfg)  # type: ignore[attr-defined]

    def ducat_start_epoch(self, epoch: int) -> dict[str, float]:
        """Switch the DUCAT loss on or off for the 1-based epoch; the flag to log (nothing when disabled)."""
        if self.ducat is None:
            return {}
        return {"ducat": float(self.ducat.start_epoch(epoch, self.cfg.train.epochs))}  # type: ignore[attr-defined]

    # These two reach methods that inherit eval_models / start_epoch from their base (PGD-AT, TRADES). A
    # method that defines them itself (Generalist) shadows them and calls the two hooks above instead.
    def eval_models(self) -> dict[str, nn.Module]:
        return self.ducat_eval_models(super().eval_models())  # type: ignore[misc]

    def start_epoch(self, epoch: int) -> dict[str, float]:
        return {**super().start_epoch(epoch), **self.ducat_start_epoch(epoch)}  # type: ignore[misc]
