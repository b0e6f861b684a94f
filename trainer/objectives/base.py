"""A robust objective is one object: the attack that builds x_adv and the loss trained on it.

`objective(attack_model, train_model, x, y) -> (loss, metrics)`: the attack runs on `attack_model` (eval mode
inside the attack, BatchNorm statistics untouched), the loss's forwards on `train_model` in train mode (the
network, its compiled wrapper or its DDP wrapper). Metrics are 0-dim device tensors (no host sync inside a step,
trainer/engine/step_metrics.py). Single-network adversarial training and Generalist's robust expert both call
an objective and know nothing else about it; DUCAT is a wrapper around one (trainer/objectives/ducat.py).

Per-epoch state (DUCAT's activation, IAT's per-sample eps) lives in the objective behind `start_epoch`,
`extra_state` and `load_extra_state`, which the method forwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from ..engine import phase
from ..engine.step_metrics import StepMetrics, mean_metric

ModelFactory = Callable[[], nn.Module]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # fp32 loss whatever the autocast dtype: the loss must not lose its small terms.
    return nn.functional.cross_entropy(logits.float(), y)


def batch_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions as a 0-dim device tensor: no host sync inside the step."""
    return (logits.detach().argmax(1) == y).float().mean()


class Objective(ABC):
    """Attack + loss. Subclasses set `name` and implement `loss`; most keep the default `adversarial`."""

    name: ClassVar[str] = ""
    # True: `adversarial` needs `index`, the batch's dataset indices (IAT); the training loop then supplies them.
    needs_sample_index: ClassVar[bool] = False

    def __init__(self, attack):
        self.attack = attack

    def adversarial(self, attack_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    index: torch.Tensor | None = None) -> torch.Tensor:
        """x_adv like x (N, C, H, W); `index` (N,) the samples' dataset indices, for objectives that keep
        per-sample state (IAT)."""
        with phase("attack"):
            return self.attack(attack_model, x, y)

    @abstractmethod
    def loss(self, train_model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, StepMetrics]:
        """The batch loss with `train_model` put in train mode here; typed metrics."""

    def __call__(self, attack_model: nn.Module, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, StepMetrics]:
        return self.loss(train_model, x, self.adversarial(attack_model, x, y, index), y)

    # Hooks; the defaults are a stateless objective on a C-class network.
    def attacks(self) -> list:
        """The attacks whose random starts follow the method's sample window (trainer/attacks/base.py)."""
        return [self.attack] if self.attack is not None else []

    def set_training_size(self, num_samples: int) -> None:
        """The training set's size, for per-sample state indexed by dataset index (IAT)."""

    def start_epoch(self, epoch: int, total_epochs: int) -> dict[str, float]:
        """Per-epoch state for the 1-based epoch; values to log with the schedule."""
        return {}

    def selectable_epoch(self, epoch: int, total_epochs: int) -> bool:
        """Whether the model at the end of this epoch may become best.pt."""
        return True

    def model_factory(self, factory: ModelFactory) -> ModelFactory:
        """The factory of the networks this objective trains (DUCAT: a 2C-class head)."""
        return factory

    def eval_models(self, models: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The models evaluation and export see (DUCAT: max-folded to C logits)."""
        return models

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore `extra_state()`; a checkpoint without the keys (written before they existed) keeps the start."""


class CleanObjective:
    """Cross-entropy on clean inputs: the natural expert's loss, the loss DUCAT's natural wrapper replaces."""

    def loss(self, train_model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        train_model.train()
        logits = train_model(x)
        return cross_entropy(logits, y), {"acc": mean_metric(batch_accuracy(logits, y))}
