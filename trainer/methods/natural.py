"""Natural (standard) training: cross-entropy on clean inputs."""

from __future__ import annotations

import torch

from trainer.methods.base import SingleNetworkMethod, accuracy_count, cross_entropy


class Natural(SingleNetworkMethod):
    name = "natural"

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        self.model.train()
        logits = self.model(x)
        return cross_entropy(logits, y), {"acc": accuracy_count(logits, y)}
