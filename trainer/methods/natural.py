"""Natural (standard) training: cross-entropy on clean inputs."""

from __future__ import annotations

import torch

from trainer.engine.step_metrics import StepMetrics, mean_metric
from trainer.methods.base import SingleNetworkMethod, batch_accuracy, cross_entropy


class Natural(SingleNetworkMethod):
    name = "natural"
    update_phase = "natural_update"

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepMetrics]:
        self.model.train()
        logits = self.train_model(x)
        return cross_entropy(logits, y), {"acc": mean_metric(batch_accuracy(logits, y))}
