"""DUCAT: dummy classes for adversarial training (Y. Wang et al., "New Paradigm of Adversarial Training:
Breaking Inherent Trade-Off between Accuracy and Robustness via Dummy Classes", arXiv 2410.12671;
spec/ducat.md), as a wrapper around any objective that defines its DUCAT loss (`ducat_loss`: PGD-AT, TRADES).

The head has 2C logits: column k is class k, column k + C its dummy. Once active (late in the run),
one train-mode forward of the concatenated batch [x; x_adv] is trained with soft two-hot targets:
clean x -> 0.75 on y and 0.25 on y + C, adversarial x_adv -> 1.0 on y + C (all config). Before that
the 2C head trains with the wrapped objective's own hard-label loss. The training attacks are unchanged:
PGD maximises cross-entropy over all 2C logits against the original label y (the authors' attack),
TRADES' KL attack compares the 2C softmaxes. Evaluation and export see the max-folded C logits
(`trainer.eval.class_fold`), decision-identical to argmax-then-mod-C.

Generalist + DUCAT (ours; no public system has it): all five networks carry the 2C head, so the
averaging runs over flat buffers of one layout. The robust expert trains the DUCAT objective of its
base and therefore sees [x; x_adv] rather than x_adv alone. The natural expert never sees x_adv, so
DUCAT's only target for it is the one DUCAT gives a clean input (`DucatNatural`): by default
(`natural_target: two_hot`) the same 0.75 / 0.25 two-hot target as the robust side's clean half, so
that both experts (and the G interpolated between them) agree on where clean inputs belong in the
2C space; `hard` keeps the plain cross-entropy on y over the 2C logits (dummy columns pushed down).
Before activation the natural expert uses that hard cross-entropy either way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DucatConfig
from ..engine.step_metrics import StepMetrics, mean_metric
from ..errors import ConfigError
from ..eval.class_fold import fold_max, fold_models
from ..models import with_dummy_classes
from .base import CleanObjective, ModelFactory, Objective

__all__ = ["Ducat", "DucatNatural", "dummy_class_factory", "first_active_epoch", "is_active", "soft_cross_entropy",
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


def real_classes(network: nn.Module) -> int:
    """C from a network built with a 2C head (its `num_classes` attribute)."""
    head = getattr(network, "num_classes", None)
    if not isinstance(head, int) or head < 2 or head % 2 != 0:
        raise ConfigError(f"method.ducat.enabled: the network {type(network).__name__} has num_classes = "
                          f"{head!r}; DUCAT needs a 2C-class head (build it through dummy_class_factory)")
    return head // 2


def dummy_class_factory(model_factory: ModelFactory) -> ModelFactory:
    """A factory whose networks have a 2C-class head (real classes, then one dummy per class)."""

    def build() -> nn.Module:
        return with_dummy_classes(model_factory())

    return build


class Ducat(Objective):
    """`inner` with DUCAT's 2C head, soft targets from its activation epoch on, and folded eval models."""

    def __init__(self, inner: Objective, cfg: DucatConfig):
        if not hasattr(inner, "ducat_loss"):
            raise ConfigError(f"config field 'method.ducat.enabled' = True: expected false with objective "
                              f"{inner.name!r}, which has no DUCAT loss")
        super().__init__(inner.attack)
        self.inner = inner
        self.cfg = cfg
        self.num_classes: int | None = None  # C, the real classes; set by `bind`
        self.active = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.inner.name

    def bind(self, network: nn.Module) -> None:
        """Read C from a network built by `model_factory` (checks its 2C head)."""
        self.num_classes = real_classes(network)

    def adversarial(self, attack_model, x, y, index=None):
        return self.inner.adversarial(attack_model, x, y, index)

    def attacks(self) -> list:
        return self.inner.attacks()

    def loss(self, train_model, x, x_adv, y):
        if self.active:
            return self.inner.ducat_loss(self, train_model, x, x_adv, y)
        return self.inner.loss(train_model, x, x_adv, y)

    def start_epoch(self, epoch: int, total_epochs: int) -> dict[str, float]:
        """Switch the DUCAT loss on or off for the 1-based epoch; the flag to log."""
        schedule = self.inner.start_epoch(epoch, total_epochs)
        self.active = is_active(epoch, total_epochs, self.cfg)
        return {**schedule, "ducat": float(self.active)}

    def selectable_epoch(self, epoch: int, total_epochs: int) -> bool:
        """Only epochs from its activation on: an earlier best-on-validation checkpoint would be a model DUCAT
        never trained (with late activation it often scores higher on validation right before)."""
        return epoch >= first_active_epoch(total_epochs, self.cfg) and self.inner.selectable_epoch(epoch,
                                                                                                   total_epochs)

    def model_factory(self, factory: ModelFactory) -> ModelFactory:
        return dummy_class_factory(self.inner.model_factory(factory))

    def eval_models(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        return fold_models(self.inner.eval_models(models))

    def extra_state(self) -> dict:
        return self.inner.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.inner.load_extra_state(state)

    # The pieces the wrapped objectives' `ducat_loss` is made of.
    def clean_targets(self, y: torch.Tensor) -> torch.Tensor:
        return two_hot_targets(y, self.num_classes, self.cfg.clean_true_weight, self.cfg.clean_dummy_weight)

    def adversarial_targets(self, y: torch.Tensor) -> torch.Tensor:
        return two_hot_targets(y, self.num_classes, 0.0, self.cfg.adv_dummy_weight)

    def joint_forward(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One train-mode forward of [x; x_adv] (BatchNorm sees both halves as one batch, as the authors
        train); returns the soft-target loss over the 2N rows and the clean and adversarial logits."""
        model.train()
        logits = model(torch.cat([x, x_adv])).float()  # (2N, 2C)
        targets = torch.cat([self.clean_targets(y), self.adversarial_targets(y)])  # (2N, 2C)
        logits_clean, logits_adv = logits.split(x.shape[0])
        return soft_cross_entropy(logits, targets), logits_clean, logits_adv

    @staticmethod
    def metrics(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> StepMetrics:
        return {"acc": mean_metric(folded_accuracy(logits_clean, y)),
                "adv_acc": mean_metric(folded_accuracy(logits_adv, y)),
                "adv_dummy": mean_metric(dummy_rate(logits_adv))}

    def natural(self) -> DucatNatural:
        """Generalist's natural-expert loss under this DUCAT (shares its activation)."""
        return DucatNatural(self)


class DucatNatural(CleanObjective):
    """Generalist's natural expert while DUCAT is active: clean inputs only (see the module docstring)."""

    def __init__(self, ducat: Ducat):
        self.ducat = ducat

    def loss(self, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        if not self.ducat.active:
            return super().loss(train_model, x, y)
        train_model.train()
        logits = train_model(x).float()  # (N, 2C)
        if self.ducat.cfg.natural_target == "two_hot":
            loss = soft_cross_entropy(logits, self.ducat.clean_targets(y))
        else:
            loss = F.cross_entropy(logits, y)
        return loss, {"acc": mean_metric(folded_accuracy(logits, y))}
