"""Wide ResNet WRN-depth-widen (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), the
WRN-34-10 of adversarial-training papers by default. Dropout sits between the two convolutions of
every block, where the WRN paper puts it and where Yang et al. (NeurIPS 2020) use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import Normalize

# A wide ResNet block is the full pre-activation unit (Zagoruyko & Komodakis use He et al.'s v2 block).
from .preact_resnet import PreActBlock as WideBlock


class WideResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float],
                 depth: int = 34, widen: int = 10, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or widen < 1:
            raise ValueError(f"WideResNet: depth {depth} must be 6n + 4 with n >= 1 and widen {widen} >= 1")
        n = (depth - 4) // 6  # blocks per group; each block has two convolutions
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.num_classes = num_classes
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        groups, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2), strict=True):
            # Only the first block of a group changes width and resolution.
            blocks = [WideBlock(cin, cout, stride, dropout)]
            blocks += [WideBlock(cout, cout, 1, dropout) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            cin = cout
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        # The reference implementation's initialisation (drawn from the default RNG only).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised last layer with `num_classes` outputs (DUCAT's 2C head); the rest is kept."""
        old = self.fc
        self.fc = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        nn.init.zeros_(self.fc.bias)  # as the constructor initialises it
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) in [0,1] -> logits (N, num_classes)."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = F.relu(self.bn(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
