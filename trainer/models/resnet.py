"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR variant:
3x3 stride-1 stem and no max-pool, so 32x32 inputs keep a 4x4 map before pooling. Optional dropout
between the two convolutions of every block (Yang et al., NeurIPS 2020; spec/lipschitz.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-[dropout]-conv3x3-BN, plus the identity or a 1x1 conv-BN projection, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.bn2(self.conv2(out))
        skip = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(out + skip)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float],
                 dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, dropout),
                                        BasicBlock(cout, cout, 1, dropout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised last layer with `num_classes` outputs (DUCAT's 2C head); the rest is kept."""
        old = self.linear
        self.linear = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0,1] -> logits (N, num_classes)."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        # Global average pooling: a 4x4 map for 32x32 inputs, any size >= 8 works.
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
