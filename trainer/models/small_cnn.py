"""Small CNN for MNIST-like inputs (28x28), the main model on CPU-only machines.

conv3x3(32)-BN-ReLU-maxpool2, conv3x3(64)-BN-ReLU-maxpool2, flatten, [dropout], linear 256, ReLU,
[dropout], linear num_classes. Dropout sits around the hidden fully-connected layer, as the small
MNIST networks of Yang et al. (NeurIPS 2020, spec/lipschitz.md) carry it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .normalize import Normalize


def _conv_bn_relu_pool(cin: int, cout: int) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], dropout: float = 0.0, hidden: int = 256):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"SmallCNN: image_size {image_size} is below 4 (two 2x2 max-pools)")
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(_conv_bn_relu_pool(in_channels, 32), _conv_bn_relu_pool(32, 64))
        side = image_size // 2 // 2  # two floor-halving max-pools: 28 -> 14 -> 7
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, 64, side, side) -> (N, 64 * side * side)
            *drop,
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(inplace=True),
            *(nn.Dropout(dropout) for _ in drop),
            nn.Linear(hidden, num_classes),
        )

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised last layer with `num_classes` outputs (DUCAT's 2C head); the rest is kept."""
        old = self.classifier[-1]
        self.classifier[-1] = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0,1] -> logits (N, num_classes)."""
        return self.classifier(self.features(self.normalize(x)))
